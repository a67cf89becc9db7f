"""The run report as a pure function of its loaded inputs: ``ReportInputs`` -> HTML / Markdown.

``build_sections`` turns the inputs into a small document model (paragraphs, tables, SVG charts, one
PNG figure), and two writers serialise it: ``render_html`` (one self-contained page: CSS inline,
charts as inline SVG, the PNG as a base64 data URI, nothing fetched) and ``render_markdown`` (same
tables; charts stay in the HTML, the figure is linked). Each section ends with the provenance of
the files its numbers came from. Any input may be absent: its place says "not produced in this run".
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable

import pandas as pd

from skinflow.report.figures import svg_interval_chart, svg_line_chart
from skinflow.report.inputs import SOURCES, Artifact, ReportInputs

NOT_PRODUCED = "not produced in this run"
FITZ_GROUPS = ("I-II", "III-IV", "V-VI", "unknown")


# ---- document model ----------------------------------------------------------------------------------


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Chart:
    title: str
    svg: str


@dataclass
class Figure:
    alt: str
    png: bytes
    href: str            # where the Markdown report links it (relative to reports/)


@dataclass
class DocSection:
    key: str
    title: str
    sources: list[Artifact]
    parts: list[Any] = field(default_factory=list)


# ---- formatting ----------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value == int(value) and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}" if abs(value) >= 0.001 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def is_ci_cell(value: Any) -> bool:
    return isinstance(value, dict) and "value" in value and ("ci_low" in value or "n" in value)


def ci(cell: Any) -> str:
    """``value [low, high]`` for a metric cell, ``—`` when undefined."""
    if not isinstance(cell, dict) or cell.get("value") is None:
        return "—"
    text = f"{cell['value']:.3f}"
    if cell.get("ci_low") is not None and cell.get("ci_high") is not None:
        text += f" [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"
    return text


def flatten(data: Any, prefix: str = "", max_depth: int = 3) -> list[tuple[str, Any]]:
    """Scalar leaves (and metric cells) of nested dicts as ``(dotted.key, value)`` pairs."""
    if is_ci_cell(data) or not isinstance(data, dict) or max_depth == 0:
        return [(prefix, data)]
    out = []
    for key in data:
        out += flatten(data[key], f"{prefix}.{key}" if prefix else str(key), max_depth - 1)
    return out


def key_values(data: dict, keys: Iterable[str] | None = None, caption: str = "") -> Table:
    pairs = [(k, data.get(k)) for k in keys] if keys is not None else flatten(data)
    return Table(["item", "value"], [[k, ci(v) if is_ci_cell(v) else fmt(v)] for k, v in pairs], caption)


def _missing(inputs: ReportInputs, name: str) -> Para:
    artifact = inputs.get(name)
    return Para(f"{artifact.path if artifact else SOURCES[name]}: {NOT_PRODUCED}")


def _present(inputs: ReportInputs, *names: str) -> list[Artifact]:
    return [a for a in (inputs.get(n) for n in names) if a is not None]


# ---- sections ------------------------------------------------------------------------------------------


def dataset_section(inputs: ReportInputs) -> DocSection:
    section = DocSection("dataset", "Dataset and validation", _present(inputs, "ingest", "validation", "data_metrics"))
    ingest, validation, data_metrics = (inputs.get(n) for n in ("ingest", "validation", "data_metrics"))
    if ingest and ingest.present:
        section.parts.append(key_values(ingest.data, ["source", "rows", "rows_with_ingest_error", "ingest_errors",
                                                      "md5_verified", "images_per_second", "notes"],
                                        f"Ingest ({ingest.path})"))
    else:
        section.parts.append(_missing(inputs, "ingest"))
    if validation and validation.present:
        v = validation.data
        section.parts.append(Para(f"Validation outcome: {fmt(v.get('status'))}. {fmt(v.get('rows_in'))} rows in, "
                                  f"{fmt(v.get('accepted'))} accepted, {fmt(v.get('quarantined'))} quarantined; "
                                  f"rows conserved: {fmt(v.get('conservation_ok'))}."))
        section.parts.append(Table(["check", "value", "warn", "fail", "status"],
                                   [[fmt(t.get("check")), fmt(t.get("value")), fmt(t.get("warn")),
                                     fmt(t.get("fail")), fmt(t.get("status"))] for t in v.get("thresholds") or []],
                                   f"Thresholds ({validation.path})"))
        reasons = v.get("quarantine_by_reason") or {}
        section.parts.append(Table(["reason", "rows"], [[r, fmt(n)] for r, n in sorted(reasons.items())]
                                   or [["(none)", "0"]], "Quarantine by reason"))
        expectations = [*(v.get("table_expectations") or []), *(v.get("row_expectations") or [])]
        failed = [e.get("name") for e in expectations if not e.get("success")]
        section.parts.append(Para(f"{len(expectations)} expectations checked, failed: {fmt(failed)}."))
        splits = v.get("split_counts") or {}
        counts = v.get("class_counts") or {}
        section.parts.append(Table(["split", "images"], [[s, fmt(n)] for s, n in splits.items()], "Splits"))
        section.parts.append(Table(["label", "images"], [[label, fmt(n)] for label, n in sorted(counts.items())],
                                   f"Accepted images per class ({len(counts)} classes)"))
    else:
        section.parts.append(_missing(inputs, "validation"))
    if data_metrics and data_metrics.present:
        section.parts.append(key_values(data_metrics.data, caption=f"Data metrics ({data_metrics.path})"))
    else:
        section.parts.append(_missing(inputs, "data_metrics"))
    return section


def captions_section(inputs: ReportInputs) -> DocSection:
    captions = inputs.get("captions")
    section = DocSection("captions", "Caption quality", _present(inputs, "captions"))
    if not (captions and captions.present):
        section.parts.append(_missing(inputs, "captions"))
        return section
    c = captions.data
    section.parts.append(key_values(c, ["status", "captioner", "captioner_version", "schema_version", "rows_in",
                                        "captioned", "quarantined", "parse_rate", "conservation_ok"],
                                    f"Caption stage ({captions.path})"))
    quality = c.get("quality_vs_reference")
    if isinstance(quality, dict):
        section.parts.append(key_values(quality, caption="Schema fields vs ground-truth attributes"))
    text = c.get("text_metrics_vs_reference")
    if isinstance(text, dict):
        section.parts.append(key_values(text, caption="Text metrics vs reference captions"))
    section.parts.append(Table(["expectation", "success", "failing rows"],
                               [[fmt(e.get("name")), fmt(e.get("success")), fmt(e.get("failing_rows"))]
                                for e in c.get("expectations") or []], "Caption expectations"))
    return section


def _curve(frame: pd.DataFrame, columns: list[str], title: str, max_points: int, y_label: str = "") -> Chart:
    x = frame["step"] if "step" in frame else pd.Series(range(len(frame)))
    series = {c: (x.tolist(), pd.to_numeric(frame[c], errors="coerce").tolist()) for c in columns}
    return Chart(title, svg_line_chart(series, title, "step", y_label, max_points=max_points))


def training_section(inputs: ReportInputs) -> DocSection:
    names = ["base_model", "warmup_summary", "warmup_curve", "stage1_summary", "stage1_log", "stage2_summary",
             "stage2_log"]
    section = DocSection("training", "Training: warm-up and RL stages", _present(inputs, *names))
    max_points = inputs.config.chart_max_points
    base = inputs.get("base_model")
    if base and base.present:
        section.parts.append(key_values(base.data, caption=f"Base model ({base.path})"))
    else:
        section.parts.append(_missing(inputs, "base_model"))
    for stage, curve_name, title in (("warmup", "warmup_curve", "Warm-up"), ("stage1", "stage1_log", "Stage I GRPO"),
                                     ("stage2", "stage2_log", "Stage II GRPO")):
        summary, curve = inputs.get(f"{stage}_summary"), inputs.get(curve_name)
        if summary and summary.present:
            data = {k: v for k, v in summary.data.items() if k != "history"}
            section.parts.append(key_values(data, caption=f"{title} summary ({summary.path})"))
        else:
            section.parts.append(_missing(inputs, f"{stage}_summary"))
        if not (curve and curve.present) or curve.data.empty:
            section.parts.append(_missing(inputs, curve_name))
            continue
        frame = curve.data
        if stage == "warmup":
            loss = [c for c in ("loss", "eval_loss") if c in frame]
            section.parts.append(_curve(frame, loss, f"{title} loss ({curve.path})", max_points, "loss"))
        else:
            rewards = [c for c in frame.columns if c == "reward" or (c.startswith("rewards_") and c.endswith("_mean"))]
            if rewards:
                section.parts.append(_curve(frame, rewards, f"{title} reward components ({curve.path})",
                                            max_points, "reward"))
            if "kl" in frame:
                section.parts.append(_curve(frame, ["kl"], f"{title} KL to reference ({curve.path})",
                                            max_points, "kl"))
    return section


def evaluation_section(inputs: ReportInputs) -> DocSection:
    evals = [a for a in inputs.group("eval") if a.present]
    section = DocSection("evaluation", "Evaluation per model variant", evals)
    if not evals:
        section.parts.append(Para(f"metrics/eval/*.json: {NOT_PRODUCED}"))
        return section
    names = [a.name.split("/", 1)[1] for a in evals]
    metrics = list(dict.fromkeys(m for a in evals for m in (a.data.get("overall") or {})))
    section.parts.append(Table(["metric", *names],
                               [[m, *(ci((a.data.get("overall") or {}).get(m)) for a in evals)] for m in metrics],
                               "Overall, value [95% bootstrap CI]; — = empty denominator"))
    notes = []
    for name, a in zip(names, evals):
        d = a.data
        k, k_max = d.get("k"), d.get("k_max")
        top_k = f"top-k with k = {k}" + (f" (= min({k_max}, {d.get('n_classes')} classes))"
                                         if k is not None and k_max is not None and k < k_max else "")
        notes.append(f"{name}: model {fmt(d.get('model'))}, {fmt(d.get('n_images'))} images, {top_k}, "
                     f"label space {fmt(d.get('label_space_version'))}, "
                     f"truth outside taxonomy {fmt(d.get('truth_out_of_taxonomy'))}, "
                     f"parse errors {fmt(d.get('parse_errors'))}.")
    section.parts += [Para(n) for n in notes]
    for name, a in zip(names, evals):
        groups = a.data.get("by_fitzpatrick") or {}
        counts = a.data.get("n_images_by_fitzpatrick") or {}
        cols = [g for g in FITZ_GROUPS if g in groups] + [g for g in groups if g not in FITZ_GROUPS]
        section.parts.append(Table(
            ["metric", *(f"{g} (n={counts.get(g, '?')})" for g in cols)],
            [[m, *(ci((groups.get(g) or {}).get(m)) for g in cols)] for m in metrics],
            f"{name} by Fitzpatrick group ({a.path})"))
        captions = a.data.get("caption_vs_reference")
        if isinstance(captions, dict):
            section.parts.append(key_values(captions, caption=f"{name}: generated captions vs reference"))
    return section


def ablation_section(inputs: ReportInputs) -> DocSection:
    ablation = inputs.get("ablation")
    section = DocSection("ablation", "Result: the ablation (test split)", _present(inputs, "ablation"))
    if not (ablation and ablation.present):
        section.parts.append(_missing(inputs, "ablation"))
        return section
    # Over seeds: {"rows": {variant: {metric: cell}}, "row_order", "paired"}; older files: {variant: {metric: cell}}.
    seeded = isinstance(ablation.data.get("rows"), dict)
    table = ablation.data["rows"] if seeded else ablation.data
    names = (ablation.data.get("row_order") or list(table)) if seeded else list(table)
    columns = list(dict.fromkeys(c for row in table.values() for c, v in row.items() if is_ci_cell(v) or
                                 (v is None and c not in ("model", "n_images"))))
    for metric in [c for c in columns if c.startswith("top") or c == "malignant_miss_at1"]:
        points = [(name, *(None if (table[name].get(metric) or {}).get(key) is None
                           else 100 * table[name][metric][key] for key in ("value", "ci_low", "ci_high")))
                  for name in names]
        title = (metric.replace("_exact", "").replace("top", "Top-") if metric.startswith("top")
                 else "malignant miss@1 (lower is safer)")
        section.parts.append(Chart(title, svg_interval_chart(points, f"{title}, % [95% CI]", highlight="stage2")))
    seeds = lambda row: [fmt(row.get("n_seeds"))] if seeded else []  # noqa: E731
    section.parts.append(Table(["variant", *(["seeds"] if seeded else []), "n", *columns],
                               [[name, *seeds(table[name]), fmt(table[name].get("n_images")),
                                 *(ci(table[name].get(c)) for c in columns)] for name in names],
                               f"Test split, {'mean over seeds, pooled ' if seeded else 'value '}"
                               f"[95% CI] ({ablation.path})"))
    paired = ablation.data.get("paired") if seeded else None
    if isinstance(paired, dict) and paired:
        metrics = list(dict.fromkeys(m for diffs in paired.values() for m, d in diffs.items() if isinstance(d, dict)))
        body = [[name, *(_diff_cell(diffs.get(m)) for m in metrics)] for name, diffs in paired.items()]
        section.parts.append(Table(["A vs B", *metrics], body,
                                   f"Paired differences A − B [95% CI], * = CI excludes 0 ({ablation.path})"))
    for variant, why in (ablation.data.get("not_produced") or {}).items():
        section.parts.append(Para(f"Row {variant} not produced: {why}."))
    return section


def _diff_cell(diff: Any) -> str:
    if not isinstance(diff, dict) or "status" in diff:  # rows not evaluated: {"status": "not run" | "not applicable"}
        return diff.get("status", "not run") if isinstance(diff, dict) else "not run"
    return ci({**diff, "value": diff.get("diff")}) + (" *" if diff.get("effect") else "")


def baselines_section(inputs: ReportInputs) -> DocSection:
    baselines = [a for a in inputs.group("baselines") if a.present]
    section = DocSection("baselines", "Baselines", baselines)
    if not baselines:
        section.parts.append(Para(f"metrics/baselines/*.json: {NOT_PRODUCED}"))
    loss_terms = [row for a in baselines for row in a.data.get("loss_term_ablation_val") or []]
    if loss_terms:  # pooled over the CFA seeds: mean (min-max) per loss variant, validation split only
        frame = pd.DataFrame(loss_terms)
        cell = lambda v: f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"  # noqa: E731
        body = [[name, fmt(g["focal_weight"].iloc[0]), fmt(g["align_weight"].iloc[0]), fmt(g["calib_weight"].iloc[0]),
                 fmt(len(g)), cell(g["val_accuracy"]), cell(g["val_nll"]), cell(g["val_ece"])]
                for name, g in frame.groupby("variant", sort=False)]
        section.parts.append(Table(["CFA loss terms", "focal", "align", "calib", "seeds", "val accuracy", "val NLL",
                                    "val ECE"], body, "CFA loss-term ablation on the validation split, mean "
                                   "(min-max) over seeds; the test split scores only the configured weights"))
    # SkinVL: MM-Skin's per-question-type scores, the start model (evaluated once) beside the tuned runs over seeds
    start = next(((a.data.get("base") or {}).get("vqa_by_type") or {} for a in baselines
                  if a.name == "baselines/skinvl_start"), {})
    runs = [a for a in baselines if a.name.startswith("baselines/skinvl-s") and (a.data.get("skinvl") or {})]
    if runs:
        def spread(kind: str, metric: str) -> str:
            values = [v for a in runs if (v := (a.data["skinvl"]["vqa_by_type"].get(kind) or {}).get(metric)) is not None]
            if not values:
                return fmt(None)
            return fmt(sum(values) / len(values)) + (f" ({fmt(min(values))}-{fmt(max(values))})" if len(values) > 1 else "")
        kinds = runs[0].data["skinvl"]["vqa_by_type"]
        body = [[kind, fmt(v.get("n")), fmt((start.get(kind) or {}).get("exact_match")), spread(kind, "exact_match"),
                 fmt((start.get(kind) or {}).get("bleu4")), spread(kind, "bleu4")] for kind, v in kinds.items()]
        section.parts.append(Table(["question type", "n", "exact match (start)", "exact match (SkinVL)",
                                    "BLEU-4 (start)", "BLEU-4 (SkinVL)"], body,
                                   f"SkinVL per question type on held-out images, mean (min-max) over {len(runs)} "
                                   "seed(s)"))
    for a in baselines:
        if a.data.get("not_applicable"):
            section.parts.append(Para(f"{a.name.split('/', 1)[1]} not produced: {a.data['not_applicable']}."))
            continue
        rows = [(k, v) for k, v in flatten({k: v for k, v in a.data.items() if k != "loss_term_ablation_val"})
                if not isinstance(v, (list, dict)) or is_ci_cell(v)]
        section.parts.append(Table(["item", "value"], [[k, ci(v) if is_ci_cell(v) else fmt(v)] for k, v in rows[:80]],
                                   f"{a.name.split('/', 1)[1]} ({a.path})" + (" — first 80 items" if len(rows) > 80 else "")))
    return section


def attention_section(inputs: ReportInputs) -> DocSection:
    summary, png = inputs.get("attention"), inputs.get("attention_png")
    section = DocSection("attention", "Where the models look: attention maps", _present(inputs, "attention", "attention_png"))
    if png and png.present:
        section.parts.append(Figure("Answer-to-image relevance per test image (rows) and model variant (columns)",
                                    png.data, "attention.png"))
    else:
        section.parts.append(_missing(inputs, "attention_png"))
    if not (summary and summary.present):
        section.parts.append(_missing(inputs, "attention"))
        return section
    s = summary.data
    section.parts.append(Para(f"Method: {fmt(s.get('method'))} — {fmt(s.get('aggregation'))}. "
                              f"{fmt(s.get('n_images'))} images of split {fmt(s.get('split'))}. "
                              f"Lesion geometry: {fmt(s.get('lesion_geometry'))}. Entropy is normalised "
                              f"(1 = uniform over image tokens, 0 = one token): lower is more focused."))
    section.parts.append(Table(
        ["variant", "model", "images", "mean entropy", "lesion share", "chance share", "attention on image"],
        [[name, fmt(v.get("model")), fmt(v.get("n_images")), fmt(v.get("mean_entropy")), fmt(v.get("mean_lesion_share")),
          fmt(v.get("mean_lesion_chance")), fmt(v.get("mean_image_attention"))]
         for name, v in _ordered(s.get("variants") or {}, s.get("variant_order"))],
        f"Per-variant means ({summary.path})"))
    missing = s.get("missing_variants") or []
    if missing:
        section.parts.append(Para("Variants not shown: " + ", ".join(
            f"{m.get('variant')} ({m.get('model')}: {m.get('not_applicable') or 'no model directory'})"
            for m in missing) + "."))
    return section


def _ordered(table: dict, order: list | None) -> list[tuple[str, Any]]:
    names = [n for n in order or [] if n in table] + [n for n in table if n not in (order or [])]
    return [(n, table[n]) for n in names]


# The result first (what the paper is about), then how it was produced.
SECTIONS = (ablation_section, dataset_section, captions_section, training_section, evaluation_section,
            baselines_section, attention_section)


def build_sections(inputs: ReportInputs) -> list[DocSection]:
    return [make(inputs) for make in SECTIONS]


def provenance_rows(section: DocSection) -> list[list[str]]:
    rows = []
    for a in section.sources:
        p = a.provenance
        params = "; ".join(f"{k}={fmt(v)}" for k, v in flatten(p.params)) if p.params else "—"
        rows.append([a.path, fmt(p.stage), fmt(p.lock_md5), p.state if a.present else NOT_PRODUCED, params])
    return rows


PROVENANCE_HEADER = ["file", "stage", "dvc.lock md5", "state", "stage params (locked)"]


def code_text(code: dict) -> str:
    """The revision in one line: commit, and whether tracked code had uncommitted changes."""
    commit = code.get("commit")
    if not commit:
        return "unknown (not a git checkout)"
    if not code.get("dirty"):
        return f"{commit[:12]} (clean)"
    return f"{commit[:12]} + uncommitted changes to {len(code.get('changed') or [])} tracked file(s)"


def code_line(inputs: ReportInputs) -> str:
    """How the report names the code its numbers came from. By default the dvc.lock hashes in each section's
    provenance (content, so the report is a pure function of its dependencies and reproduces byte for byte);
    the git revision only when ``report.git_revision`` asks for it (it changes with every commit)."""
    if inputs.config.git_revision:
        return f"Code revision: {code_text(inputs.code)}. {changed_files_text(inputs.code)}".strip()
    return ("Code: identified by the dvc.lock md5 of each stage's code and inputs, listed per section; the git "
            "revision of every stage run is in the lineage ledger (`skinflow runs`).")


def changed_files_text(code: dict) -> str:
    changed = code.get("changed") or []
    return f"Uncommitted changes: {', '.join(changed)}." if code.get("dirty") and changed else ""


# ---- writers ---------------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:4px 0}
details{margin:.4em 0 1.6em}summary{cursor:pointer;color:#555}.prov td{font-size:11px;word-break:break-all}
figure{margin:1em 0}img{max-width:100%}.missing{color:#a00}"""


def _html_table(t: Table, cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{cap}<tr>{head}</tr>{body}</table>"


def _html_part(part: Any) -> str:
    if isinstance(part, Para):
        cls = ' class="missing"' if part.text.endswith(NOT_PRODUCED) else ""
        return f"<p{cls}>{escape(part.text)}</p>"
    if isinstance(part, Table):
        return _html_table(part)
    if isinstance(part, Chart):
        return f"<figure>{part.svg}</figure>"
    if isinstance(part, Figure):
        data = base64.b64encode(part.png).decode("ascii")
        return (f'<figure><img alt="{escape(part.alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(part.alt)}</figcaption></figure>")
    raise TypeError(f"unknown part {type(part).__name__}")


def render_html(inputs: ReportInputs) -> str:
    sections = build_sections(inputs)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(inputs.config.title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{escape(inputs.config.title)}</h1>",
           f"<p>{escape(code_line(inputs))} Each section lists the files its numbers come from, "
           "the DVC stage that produced each, the md5 dvc.lock recorded for it and the params that stage "
           "ran with.</p>",
           "<ul>" + "".join(f'<li><a href="#{s.key}">{escape(s.title)}</a></li>' for s in sections) + "</ul>"]
    for s in sections:
        out.append(f'<section id="{s.key}"><h2>{escape(s.title)}</h2>')
        out += [_html_part(p) for p in s.parts]
        rows = provenance_rows(s)
        body = _html_table(Table(PROVENANCE_HEADER, rows), "prov") if rows else f"<p>{NOT_PRODUCED}</p>"
        code = f" (code {escape(code_text(inputs.code))})" if inputs.config.git_revision else ""
        out.append(f"<details open><summary>Provenance{code}</summary>{body}</details></section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    lines = [f"**{_md_cell(t.caption)}**", ""] if t.caption else []
    lines += ["| " + " | ".join(_md_cell(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def render_markdown(inputs: ReportInputs) -> str:
    sections = build_sections(inputs)
    lines = [f"# {inputs.config.title}", "", f"{code_line(inputs)} Charts are in report.html; every section "
             "ends with the provenance of its numbers.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for part in s.parts:
            if isinstance(part, Para):
                lines += [part.text, ""]
            elif isinstance(part, Table):
                lines += _md_table(part)
            elif isinstance(part, Chart):
                lines += [f"*Chart: {part.title} (see report.html)*", ""]
            elif isinstance(part, Figure):
                lines += [f"![{part.alt}]({part.href})", ""]
        rows = provenance_rows(s)
        lines += [f"Provenance (code `{code_text(inputs.code)}`):" if inputs.config.git_revision else "Provenance:",
                  ""]
        lines += _md_table(Table(PROVENANCE_HEADER, rows)) if rows else [NOT_PRODUCED, ""]
    return "\n".join(lines).rstrip() + "\n"
