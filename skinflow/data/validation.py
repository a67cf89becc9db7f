"""Validation: GX suites over the ingested manifest, quarantine with reasons, and the report.

Every input row ends up in exactly one of two tables — the accepted manifest or the quarantine —
and that conservation is checked before anything is written.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pandas as pd
from pydantic import Field

from skinflow.config import Section
from skinflow.data import gx_suites
from skinflow.data.manifest import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, Reason, conform
from skinflow.data import label_noise
from skinflow.data.near_duplicates import summary as near_duplicate_summary
from skinflow.data.oddities import find_oddities
from skinflow.data.splits import leaking_groups
from skinflow.data.taxonomy import label_paths


class Threshold(Section):
    warn: float | None = None
    fail: float | None = None


class ValidateConfig(Section):
    allowed_modes: list[str] = ["RGB"]
    min_side: int = 32
    min_rows: int = Field(1, ge=0)
    max_quarantine_fraction: Threshold = Threshold(warn=0.02, fail=0.5)
    min_images_per_class: Threshold = Threshold(warn=20, fail=1)
    max_class_imbalance: Threshold = Threshold(warn=5.0)   # largest class / smallest class
    label_noise_own_similarity: float = 0.8
    label_noise_other_similarity: float = 0.9


class ValidationFailed(RuntimeError):
    """A hard-fail threshold was crossed; the report has been built and says which."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def validate(rows: pd.DataFrame, taxonomy: pd.DataFrame, cfg: ValidateConfig
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (accepted manifest, quarantine rows, report). Raises nothing for bad rows."""
    frame = conform(rows).assign(row_id=range(len(rows)))
    frame["label_path"] = (frame["label"] + "|" + frame["nine_partition_label"] + "|"
                           + frame["three_partition_label"])
    reasons: dict[int, list[tuple[str, str]]] = defaultdict(list)

    labels = sorted(taxonomy["label"])
    outcomes = gx_suites.row_outcomes(frame, labels, sorted(label_paths(taxonomy)),
                                      cfg.allowed_modes, cfg.min_side)
    for row_id in outcomes[0].failing_rows:  # rows ingestion could not read keep their own reason
        reasons[row_id].append((frame.at[row_id, "ingest_error"], str(frame.at[row_id, "ingest_detail"])))
    for outcome in outcomes[1:]:
        for row_id in outcome.failing_rows:
            if not reasons[row_id] or reasons[row_id][-1][0] != outcome.reason:
                reasons[row_id].append((outcome.reason, outcome.name))
    _duplicates(frame, reasons)
    _leakage(frame, reasons)
    _split_exclusions(frame, reasons)

    bad = {row_id for row_id, found in reasons.items() if found}
    accepted = frame[~frame["row_id"].isin(bad)]
    quarantine = _quarantine_table(frame[frame["row_id"].isin(bad)], reasons)
    if len(accepted) + len(quarantine) != len(frame):
        raise AssertionError(f"rows lost: {len(frame)} in, {len(accepted)} accepted, "
                             f"{len(quarantine)} quarantined")

    table = gx_suites.table_outcomes(accepted, labels, cfg.min_rows)
    report = _report(frame, accepted, quarantine, outcomes, table, taxonomy, cfg)
    manifest = conform(accepted.drop(columns=["row_id", "label_path"]))
    return manifest, quarantine, report


def _duplicates(frame: pd.DataFrame, reasons: dict) -> None:
    """Same bytes twice: keep the first if the labels agree, quarantine all if they conflict."""
    hashed = frame[frame["content_md5"].notna()]
    groups = hashed.groupby("content_md5")
    size = groups["row_id"].transform("size")
    n_labels = groups["label"].transform(lambda s: s.nunique(dropna=False)) if (size > 1).any() else size
    first_row = groups["source_row"].transform("first")
    for row in hashed[(size > 1) & (n_labels > 1)].itertuples():
        labels = sorted(hashed.loc[hashed["content_md5"] == row.content_md5, "label"].dropna().unique())
        reasons[row.row_id].append((Reason.CONFLICTING_DUPLICATE, f"same image, labels {labels}"))
    repeated = (size > 1) & (n_labels == 1) & hashed["content_md5"].duplicated(keep="first")
    for row_id, first in zip(hashed.loc[repeated, "row_id"], first_row[repeated]):
        reasons[row_id].append((Reason.DUPLICATE_ROW, f"same image as source row {first}"))
    repeated_id = frame["image_id"].duplicated(keep="first") & frame["image_id"].notna()
    for row_id in frame.loc[repeated_id, "row_id"]:
        if not any(r[0] in (Reason.DUPLICATE_ROW, Reason.CONFLICTING_DUPLICATE) for r in reasons[row_id]):
            reasons[row_id].append((Reason.DUPLICATE_ROW, "image_id repeated"))


def _leakage(frame: pd.DataFrame, reasons: dict) -> None:
    hashed = frame[frame["content_md5"].notna()]
    leaking = leaking_groups(hashed) & (hashed["split"] != "train")
    for row in hashed[leaking].itertuples():
        cluster = row.near_dup_cluster
        detail = (f"near-duplicate (cluster {cluster}) in another split" if isinstance(cluster, str)
                  else "same image in another split")
        reasons[row.row_id].append((Reason.SPLIT_LEAKAGE, detail))


def _split_exclusions(frame: pd.DataFrame, reasons: dict) -> None:
    """Rows a published split file removes or never mentions (protocol file)."""
    if "split_exclusion" not in frame:
        return
    for row_id, code in frame.loc[frame["split_exclusion"].notna(), ["row_id", "split_exclusion"]].to_numpy():
        text = ("the split file does not list this image" if code == Reason.NOT_IN_SPLIT_FILE
                else "the split file marks this image removed")
        reasons[row_id].append((code, text))


def _near_duplicate_report(frame: pd.DataFrame) -> dict:
    """Cluster counts over every input row, and how many clusters the active split cuts through."""
    out = near_duplicate_summary(frame)
    clustered = frame[frame["near_dup_cluster"].notna()]
    out["straddling_splits"] = int((clustered.groupby("near_dup_cluster")["split"].nunique() > 1).sum())
    return out


def _quarantine_table(bad: pd.DataFrame, reasons: dict) -> pd.DataFrame:
    records = bad.drop(columns=["row_id", "label_path"]).astype(object).where(bad.notna(), None)
    return conform(pd.DataFrame({
        "stage": "validate",
        "source": bad["source"].to_numpy(),
        "source_row": bad["source_row"].to_numpy(),
        "image_id": bad["image_id"].to_numpy(),
        "rel_path": bad["rel_path"].to_numpy(),
        "reason": [str(reasons[r][0][0]) for r in bad["row_id"]],
        "detail": ["; ".join(f"{code}: {text}" for code, text in reasons[r]) for r in bad["row_id"]],
        "record": [json.dumps(rec, default=str) for rec in records.to_dict(orient="records")],
    }), QUARANTINE_COLUMNS)


def _check(name: str, value: float, threshold: Threshold, higher_is_worse: bool) -> dict:
    def crosses(limit: float | None) -> bool:
        return limit is not None and (value > limit if higher_is_worse else value < limit)

    status = "fail" if crosses(threshold.fail) else "warn" if crosses(threshold.warn) else "pass"
    return {"check": name, "value": value, "warn": threshold.warn, "fail": threshold.fail, "status": status}


def _report(frame, accepted, quarantine, row_checks, table_checks, taxonomy, cfg) -> dict:
    rows_in = len(frame)
    counts = accepted["label"].value_counts()
    class_counts = {label: int(counts.get(label, 0)) for label in sorted(taxonomy["label"])}
    present = [n for n in class_counts.values() if n > 0]
    checks = [
        _check("quarantine_fraction", round(len(quarantine) / rows_in, 6) if rows_in else 1.0,
               cfg.max_quarantine_fraction, higher_is_worse=True),
        _check("min_images_per_class", min(present) if present else 0, cfg.min_images_per_class,
               higher_is_worse=False),
        _check("class_imbalance", round(max(present) / min(present), 3) if present else 0.0,
               cfg.max_class_imbalance, higher_is_worse=True),
    ]
    statuses = [c["status"] for c in checks] + ["fail" for t in table_checks if not t.success]
    per_split = accepted.groupby(["split", "label"]).size().unstack(fill_value=0)
    return {
        "status": "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass",
        "rows_in": rows_in,
        "accepted": len(accepted),
        "quarantined": len(quarantine),
        "conservation_ok": rows_in == len(accepted) + len(quarantine),
        "quarantine_by_reason": quarantine["reason"].value_counts().sort_index().to_dict(),
        "row_expectations": [{"name": o.name, "success": o.success, "reason": o.reason,
                              "failing_rows": len(o.failing_rows)} for o in row_checks],
        "table_expectations": [{"name": o.name, "success": o.success} for o in table_checks],
        "thresholds": checks,
        "class_counts": class_counts,
        "classes_without_images": [k for k, v in class_counts.items() if v == 0],
        "split_counts": accepted["split"].value_counts().sort_index().to_dict(),
        "split_label_counts": {s: {k: int(v) for k, v in row.items()} for s, row in per_split.iterrows()},
        "near_duplicates": _near_duplicate_report(frame),
        "label_noise": label_noise.report(frame, taxonomy),
        "oddities": find_oddities(frame, taxonomy, cfg.label_noise_own_similarity,
                                  cfg.label_noise_other_similarity),
    }


def render_markdown(report: dict, ingest_report: dict | None = None) -> str:
    """Human-readable validation report."""
    odd = report["oddities"]
    lines = [
        f"# Validation report — status: **{report['status'].upper()}**", "",
        f"Rows in **{report['rows_in']}** = accepted **{report['accepted']}** + quarantined "
        f"**{report['quarantined']}** (conservation {'holds' if report['conservation_ok'] else 'BROKEN'}).",
        "",
    ]
    if ingest_report:
        lines += [f"Source `{ingest_report['source']}`; md5 verified: {ingest_report['md5_verified']}.", ""]
        lines += [f"- note: {n}" for n in ingest_report.get("notes", [])] + [""]
        published = ingest_report.get("split_file")
        if published:
            lines += ["## Published split file", "",
                      f"`{published['file']}` (md5 {published['file_md5']}, {published['file_rows']} ids; "
                      f"{'the active protocol' if published['active'] else 'recorded as split_file only'}): "
                      f"{published['split_counts']}; removed by the file {published['removed_by_file']}; "
                      f"rows the file does not list **{published['not_in_file']}**; file ids not in the "
                      f"table {published['file_ids_not_in_table']}.", ""]
            if published["not_in_file"]:
                shown = published["not_in_file_ids"][:20]
                lines += [f"Not listed (first {len(shown)}; all are in the quarantine table as "
                          f"`not_in_split_file` when the protocol is active): "
                          + ", ".join(f"`{i}`" for i in shown), ""]
    lines += ["## Thresholds", "", "| check | value | warn | fail | status |", "|---|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {c['warn']} | {c['fail']} | {c['status']} |"
              for c in report["thresholds"]]
    lines += ["", "## Quarantine by reason", "", "| reason | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["quarantine_by_reason"].items()] or ["| (none) | 0 |"]
    lines += ["", "## Expectations", "", "| expectation | level | success | failing rows |", "|---|---|---|---|"]
    lines += [f"| {e['name']} | row | {e['success']} | {e['failing_rows']} |" for e in report["row_expectations"]]
    lines += [f"| {e['name']} | table | {e['success']} | |" for e in report["table_expectations"]]
    lines += ["", "## Classes (accepted rows)", "", "| label | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report["class_counts"].items(), key=lambda kv: -kv[1])]
    dups = report.get("near_duplicates", {})
    lines += ["", f"Splits: {report['split_counts']}", "", "## Near-duplicate clusters", "",
              f"{dups.get('clusters', 0)} clusters hold {dups.get('rows_in_clusters', 0)} rows "
              f"({dups.get('images_in_clusters', 0)} distinct images, largest "
              f"{dups.get('largest_cluster', 0)}); {dups.get('clusters_with_mixed_labels', 0)} mix labels; "
              f"{dups.get('straddling_splits', 0)} straddle splits (their non-train rows are quarantined "
              "as split_leakage).", ""]
    lines += [f"- `{c['cluster']}`: {c['rows']} rows, labels {c['labels']}" for c in dups.get("largest", [])[:10]]
    lines += ["",
              "## Dataset oddities (warnings, not failures)", "",
              f"- empty url: {odd['empty_url']}",
              f"- expert QC rows: {odd['qc_checked']} ({odd['qc_verdicts']}); wrongly labelled: "
              f"{odd['qc_wrongly_labelled']}",
              f"- skin type unknown: scale {odd['fitzpatrick_scale_unknown']}, centaur "
              f"{odd['fitzpatrick_centaur_unknown']}",
              f"- annotators disagree on skin type: {odd['skin_type_disagreement']} of "
              f"{odd['skin_type_both_known']} rows with both known "
              f"({odd['skin_type_disagreement_gt1']} by more than one type)",
              f"- probable label noise (URL folder names another label): {odd['probable_label_noise']}",
              ]
    for pair in odd["probable_label_noise_pairs"][:20]:
        lines.append(f"  - `{pair['label']}` from folder `{pair['folder']}` (names `{pair['folder_names']}`):"
                     f" {pair['rows']}")
    noise = report.get("label_noise")
    if noise:
        lines += ["", "## Label noise: does the atlas folder support the label?", "",
                  f"{noise['pairs']} (label, folder) pairs; rows by verdict {noise['rows_by_verdict']}; "
                  f"**{noise['flagged_rows']}** rows flagged `label_noise` (folder names a different "
                  "condition). Ranked review table (first rows):", "",
                  "| label | folder | rows | verdict | evidence |", "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['folder']} | {r['rows']} | {r['verdict']} | {r['evidence']} |"
                  for r in noise["review_table"]]
        lines.append("")
    lines.append(f"- overlapping label names: {len(odd['overlapping_labels'])}")
    for pair in odd["overlapping_labels"]:
        lines.append(f"  - {pair['kind']}: {pair['rows']}")
    return "\n".join(lines) + "\n"
