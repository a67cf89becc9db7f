"""The report renderer: self-contained HTML, every section present, missing inputs handled,
provenance shown, numbers as the inputs give them. Inputs are built in memory (the renderer is
a pure function of them)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinflow.eval.equivalence import LabelSpace
from skinflow.eval.metrics import compute_metrics
from skinflow.eval.predictions import map_predictions
from skinflow.report.inputs import SOURCES, Artifact, Provenance, ReportConfig, ReportInputs
from skinflow.report.render import NOT_PRODUCED, build_sections, render_html, render_markdown

CODE = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True, "changed": ["skinflow/x.py"]}
# The result leads; how it was produced follows.
TITLES = ["Result: the ablation (test split)", "Dataset and validation", "Caption quality",
          "Training: warm-up and RL stages", "Evaluation per model variant", "Baselines",
          "Where the models look: attention maps"]


def _eval_json(variant: str, hits: int, three_classes: bool = False) -> dict:
    labels = ["melanoma", "nevocytic nevus", "psoriasis"] + ([] if three_classes else ["acne", "eczema", "urticaria", "vitiligo"])
    taxonomy = pd.DataFrame({"label": labels, "nine_partition_label": labels,
                             "three_partition_label": ["malignant"] + ["benign"] * (len(labels) - 1)})
    space = LabelSpace(taxonomy)
    rows = [(f"i{k}", labels[k % 3], k % 6 + 1,
             json.dumps({"diagnoses": [labels[k % 3] if k < hits else labels[(k + 1) % 3]]})) for k in range(12)]
    raw = pd.DataFrame(rows, columns=["image_id", "label", "fitzpatrick_scale", "raw_output"])
    metrics = compute_metrics(map_predictions(raw, space)[0], space, n_boot=50, seed=0)
    return {**metrics, "variant": variant, "model": f"models/{variant}"}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _prov(path: str, stage: str | None, md5: str | None = "d41d8cd98f00b204e9800998ecf8427e",
          params: dict | None = None) -> Provenance:
    if stage is None:
        return Provenance(path)
    return Provenance(path, stage, path, md5, md5, params or {stage: {"seed": 17, "nested": {"lr": 0.002}}})


def _artifact(name: str, path: str, data, stage: str | None = "stage") -> Artifact:
    return Artifact(name, path, data, _prov(path, stage if data is not None else None))


def full_inputs() -> ReportInputs:
    curve = pd.DataFrame({"step": [10, 20, 30, 40], "loss": [6.6, 5.9, np.nan, 3.4]})
    rl = pd.DataFrame({"step": [1, 2, 3], "reward": [0.1, 0.3, 0.5], "rewards_stage2_relevance_mean": [0.0, 0.2, 0.4],
                       "kl": [0.0, 0.01, 0.02]})
    data = {
        "ingest": {"source": "fitzpatrick17k", "rows": 1200, "rows_with_ingest_error": 3, "md5_verified": True},
        "validation": {"status": "warn", "rows_in": 1200, "accepted": 1190, "quarantined": 10, "conservation_ok": True,
                       "thresholds": [{"check": "quarantine_fraction", "value": 0.0083, "warn": 0.02, "fail": 0.5,
                                       "status": "pass"}],
                       "quarantine_by_reason": {"md5_mismatch": 7, "tiny_image": 3},
                       "table_expectations": [{"name": "row_count", "success": True}],
                       "row_expectations": [{"name": "label_present", "success": False}],
                       "split_counts": {"train": 832, "test": 240}, "class_counts": {"<b>odd</b> label": 5}},
        "data_metrics": {"accepted": 1190, "classes": 16},
        "captions": {"status": "pass", "captioner": "oracle", "parse_rate": 0.987,
                     "quality_vs_reference": {"macro": 0.912, "body_site": 1.0},
                     "expectations": [{"name": "one_caption_per_image", "success": True, "failing_rows": 0}]},
        "base_model": {"kind": "tiny", "parameters": 627840},
        "warmup_summary": {"steps": 800, "train_seconds": 84.77},
        "warmup_curve": curve,
        "stage1_summary": {"enabled": True, "reward_last_third": 0.61},
        "stage1_log": rl.rename(columns={"rewards_stage2_relevance_mean": "rewards_stage1_fields_mean"}),
        "stage2_summary": {"enabled": True},
        "stage2_log": rl,
        "ablation": {"warmup": {"top1_exact": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 12},
                                "top6_exact": None, "n_images": 12, "model": "models/warmup"}},
        "attention": {"method": "attention", "aggregation": "mean over layers", "n_images": 2, "split": "test",
                      "lesion_geometry": "SkinSynth main-lesion disc", "missing_variants": [{"variant": "stage2",
                                                                                             "model": "models/stage2"}],
                      "variant_order": ["warmup", "base"],
                      "variants": {"base": {"model": "models/base", "n_images": 2, "mean_entropy": 1.0},
                                   "warmup": {"model": "models/warmup", "n_images": 2, "mean_entropy": 0.987654,
                                              "mean_lesion_share": 0.0612, "mean_lesion_chance": 0.0548,
                                              "mean_image_attention": 0.2}}},
        "attention_png": _png(),
    }
    artifacts = {name: _artifact(name, SOURCES[name], value, name) for name, value in data.items()}
    for variant, hits in (("warmup", 3), ("stage2", 9)):
        artifacts[f"eval/{variant}"] = _artifact(f"eval/{variant}", f"metrics/eval/{variant}.json",
                                                 _eval_json(variant, hits), f"evaluate@{variant}")
    artifacts["baselines/cfa"] = _artifact("baselines/cfa", "metrics/baselines/cfa.json",
                                           {"accuracy": 0.4321, "macro_f1": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4,
                                                                             "n": 240}, "per_class": [1, 2]}, "cfa")
    return ReportInputs(ReportConfig(title="Test <report>"), CODE, artifacts)


def empty_inputs() -> ReportInputs:
    return ReportInputs(ReportConfig(), {"commit": None, "dirty": None, "changed": []}, {})


def test_html_is_self_contained():
    html = render_html(full_inputs())
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    assert "data:image/png;base64," in html and html.count("<svg") >= 4   # loss, 2 x rewards, 2 x KL
    assert "Test &lt;report&gt;" in html and "&lt;b&gt;odd&lt;/b&gt; label" in html  # escaped


def test_every_section_present_in_order():
    html, md = render_html(full_inputs()), render_markdown(full_inputs())
    positions = [html.index(f"<h2>{t.replace('&', '&amp;')}</h2>") for t in TITLES]
    assert positions == sorted(positions)
    for title in TITLES:
        assert f"## {title}" in md
    assert [s.title for s in build_sections(full_inputs())] == TITLES


def test_numbers_and_cis_rendered_from_inputs():
    inputs = full_inputs()
    html, md = render_html(inputs), render_markdown(inputs)
    stage2 = inputs.get("eval/stage2").data["overall"]["top1_exact"]
    cell = f"{stage2['value']:.3f} [{stage2['ci_low']:.3f}, {stage2['ci_high']:.3f}]"
    assert cell in html and cell in md
    assert "0.250 [0.100, 0.400]" in md                       # ablation cell
    assert html.index("Top-1, % [95% CI]") < html.index("<h2>Dataset and validation</h2>")  # the chart leads
    assert "| warmup | models/warmup | 2 | 0.9877 | 0.0612 | 0.0548 | 0.2 |" in md   # attention means
    assert md.index("| warmup | models/warmup |") < md.index("| base | models/base | 2 | 1 | — |")  # PNG order
    assert "| accuracy | 0.4321 |" in md and "| macro_f1 | 0.300 [0.200, 0.400] |" in md
    assert "per_class" not in md                               # lists are not metric values
    assert "label_present" in md and "failed: label_present" in md
    assert "![Answer-to-image relevance" in md and "(attention.png)" in md


def test_small_label_space_reported_as_such():
    inputs = full_inputs()
    small = _eval_json("ham", 5, three_classes=True)
    artifacts = {**inputs.artifacts, "eval/ham": _artifact("eval/ham", "metrics/eval/ham.json", small, "evaluate@ham")}
    md = render_markdown(ReportInputs(inputs.config, inputs.code, artifacts))
    assert "top-k with k = 3 (= min(6, 3 classes))" in md
    assert "| top3_exact |" in md and "| top6_exact |" in md  # both rows; other variants show — for top3


def test_provenance_shown_for_every_present_input():
    inputs = full_inputs()
    inputs = ReportInputs(inputs.config.model_copy(update={"git_revision": True}), inputs.code, inputs.artifacts)
    html, md = render_html(inputs), render_markdown(inputs)
    assert "0123456789ab + uncommitted changes to 1 tracked file(s)" in md and "skinflow/x.py" in md
    assert md.count("Provenance (code `0123456789ab") == len(TITLES)
    for artifact in inputs.artifacts.values():
        assert artifact.path in md and artifact.path in html
    assert "evaluate@stage2" in md and "d41d8cd98f00b204e9800998ecf8427e" in md and "matches dvc.lock" in md
    assert "evaluate@warmup.seed=17" in md and "evaluate@warmup.nested.lr=0.002" in md


def test_missing_inputs_render_as_not_produced():
    for render in (render_html, render_markdown):
        text = render(empty_inputs())
        for title in TITLES:
            assert title in text
        for path in (*SOURCES.values(), "metrics/eval/*.json", "metrics/baselines/*.json"):
            assert f"{path}: {NOT_PRODUCED}" in text, path
        assert "skinflow runs" in text  # code named by dvc.lock hashes, not a git commit
    # One section's input missing leaves the others intact.
    inputs = full_inputs()
    partial = {n: a for n, a in inputs.artifacts.items() if n != "captions"}
    md = render_markdown(ReportInputs(inputs.config, inputs.code, partial))
    assert f"data/reports/captions.json: {NOT_PRODUCED}" in md and "| source | fitzpatrick17k |" in md


def test_absent_artifact_listed_in_provenance_as_not_produced():
    inputs = full_inputs()
    artifacts = dict(inputs.artifacts)
    artifacts["stage2_log"] = Artifact("stage2_log", "metrics/stage2_log.csv", None, Provenance("metrics/stage2_log.csv"))
    md = render_markdown(ReportInputs(inputs.config, inputs.code, artifacts))
    assert f"metrics/stage2_log.csv: {NOT_PRODUCED}" in md
    assert f"| metrics/stage2_log.csv | — | — | {NOT_PRODUCED} | — |" in md


def test_renderer_is_deterministic_and_does_not_mutate_inputs():
    inputs = full_inputs()
    before = json.dumps({n: a.data for n, a in inputs.artifacts.items() if isinstance(a.data, dict)},
                        sort_keys=True, default=str)
    assert render_html(inputs) == render_html(inputs) and render_markdown(inputs) == render_markdown(inputs)
    after = json.dumps({n: a.data for n, a in inputs.artifacts.items() if isinstance(a.data, dict)},
                       sort_keys=True, default=str)
    assert before == after


def test_markdown_escapes_pipes():
    inputs = full_inputs()
    artifacts = dict(inputs.artifacts)
    artifacts["data_metrics"] = _artifact("data_metrics", "metrics/data.json", {"a|b": "x|y"}, "validate")
    md = render_markdown(ReportInputs(inputs.config, inputs.code, artifacts))
    assert "| a\\|b | x\\|y |" in md


@pytest.mark.parametrize("frame", [pd.DataFrame({"step": [], "loss": []}),
                                   pd.DataFrame({"step": [1, 2], "loss": [np.nan, np.nan]})])
def test_empty_or_all_nan_curves(frame):
    inputs = full_inputs()
    artifacts = {**inputs.artifacts, "warmup_curve": _artifact("warmup_curve", "metrics/warmup_curve.csv", frame, "warmup")}
    html = render_html(ReportInputs(inputs.config, inputs.code, artifacts))
    assert "Warm-up" in html and ("no data" in html or f"metrics/warmup_curve.csv: {NOT_PRODUCED}" in html)


def test_report_does_not_name_the_git_commit_by_default():
    """The report is a pure function of its DVC dependencies: a new commit that changes none of them must not
    change its bytes (the lineage ledger keeps each run's git revision)."""
    inputs = full_inputs()
    html, md = render_html(inputs), render_markdown(inputs)
    assert "0123456789ab" not in md and "0123456789ab" not in html and "skinflow runs" in md
