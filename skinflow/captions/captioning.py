"""The caption stage: one schema caption per manifest image, resumable, with quarantine and checks.

Rows in = captioned + quarantined. Finished batches are appended to a progress file keyed by the
captioner's identity, so a rerun after a crash (or a DVC re-run of an unchanged captioner) reuses
them instead of paying for the same captions twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from skinflow.captions.captioners import CaptionerConfig, CaptionRequest, make_captioner
from skinflow.captions.diagnosis_terms import mentions_diagnosis
from skinflow.captions.metrics import aggregate, caption_text_metrics
from skinflow.captions.parser import parse_caption
from skinflow.vocab import SCHEMA_VERSION
from skinflow.config import Section
from skinflow.data.manifest import QUARANTINE_COLUMNS, conform, image_paths

CAPTION_COLUMNS = {
    "image_id": "string", "content_md5": "string", "rel_path": "string", "split": "string",
    "label": "string", "caption_json": "string", "schema_version": "string", "captioner": "string",
    "captioner_version": "string", "status": "string", "attempts": "int64",
}


NOT_APPLICABLE = "not_applicable"  # the report status when captioner.kind is none


class CaptionStageConfig(Section):
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"progress_dir"})  # under runtime.<section> in params.yaml
    captioner: CaptionerConfig = CaptionerConfig(kind="oracle")
    attributes: str | None = "data/skinsynth/attributes.parquet"  # ground truth (oracle + references)
    batch_size: int = Field(64, ge=1)
    progress_dir: str = ".cache/captions"
    min_parse_rate: float = Field(0.95, ge=0, le=1)       # hard fail below
    min_captions_per_class: int = Field(1, ge=0)          # hard fail below (for classes present)


def captioner_key(cfg: CaptionStageConfig, name: str, version: str) -> str:
    blob = json.dumps([name, version, SCHEMA_VERSION, cfg.captioner.model_dump()], sort_keys=True)
    return hashlib.sha1(blob.encode(), usedforsecurity=False).hexdigest()[:16]


def _load_progress(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a crash: ignore, redo that row
                continue
            done[record["key"]] = record
    return done


def run_captions(manifest: pd.DataFrame, cfg: CaptionStageConfig, progress: bool = False
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (captions table, quarantine rows, report)."""
    if cfg.captioner.kind == "none":
        return no_captions(manifest)
    captioner = make_captioner(cfg.captioner)
    key = captioner_key(cfg, captioner.name, captioner.version)
    progress_file = Path(cfg.progress_dir) / f"{key}.jsonl"
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    done = _load_progress(progress_file)
    attributes = _attributes(cfg.attributes)

    rows = manifest.reset_index(drop=True)
    row_key = rows["image_id"] + ":" + rows["content_md5"].fillna("")
    todo = rows[~row_key.isin(done)]
    todo_keys = set(row_key[~row_key.isin(done)])
    reused = len(rows) - len(todo)
    batches = range(0, len(todo), cfg.batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"caption ({captioner.name})", unit="batch")
    with progress_file.open("a", encoding="utf-8") as sink:
        for start in batches:
            chunk = todo.iloc[start : start + cfg.batch_size]
            requests = [CaptionRequest(image_id, path, attributes.get(image_id))
                        for image_id, path in zip(chunk["image_id"], image_paths(chunk))]
            for request, outcome, k in zip(requests, captioner.caption(requests),
                                           chunk["image_id"] + ":" + chunk["content_md5"].fillna("")):
                record = {"key": k, "image_id": outcome.image_id, "status": outcome.status,
                          "caption_json": outcome.caption_json, "error_code": outcome.error_code,
                          "error_message": outcome.error_message, "attempts": outcome.attempts}
                done[k] = record
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())

    results = pd.DataFrame([done[k] for k in row_key])
    ok = results["status"] == "ok"
    table = conform(pd.DataFrame({
        "image_id": rows["image_id"], "content_md5": rows["content_md5"], "rel_path": rows["rel_path"],
        "split": rows["split"], "label": rows["label"], "caption_json": results["caption_json"],
        "schema_version": SCHEMA_VERSION, "captioner": captioner.name,
        "captioner_version": captioner.version, "status": results["status"],
        "attempts": results["attempts"].astype("int64"),
    })[ok.to_numpy()], CAPTION_COLUMNS)
    failed = rows[~ok.to_numpy()]
    failed_results = results[~ok]
    quarantine = conform(pd.DataFrame({
        "stage": "caption", "source": failed["source"].to_numpy(),
        "source_row": failed["source_row"].to_numpy(), "image_id": failed["image_id"].to_numpy(),
        "rel_path": failed["rel_path"].to_numpy(),
        "reason": ("caption_" + failed_results["error_code"].fillna("failed").astype(str)).to_numpy(),
        "detail": failed_results["error_message"].fillna("").to_numpy(),
        "record": [json.dumps(r, default=str) for r in failed_results.to_dict(orient="records")],
    }), QUARANTINE_COLUMNS)
    if len(table) + len(quarantine) != len(rows):
        raise AssertionError(f"caption rows lost: {len(rows)} in, {len(table)} + {len(quarantine)} out")
    report = check_captions(table, rows, quarantine, cfg, attributes)
    report.update({"captioner": captioner.name, "captioner_version": captioner.version,
                   "reused_from_progress": reused, "progress_file": str(progress_file)})
    if hasattr(captioner, "report"):  # a captions table says which schema fields its source could fill
        reused_rows = rows[~row_key.isin(todo_keys)]
        if len(reused_rows):  # rows reused from progress were not asked this time; a table answers them instantly
            captioner.caption([CaptionRequest(i, p, attributes.get(i))
                               for i, p in zip(reused_rows["image_id"], image_paths(reused_rows))])
        report["source_coverage"] = captioner.report()
    return table, quarantine, report


def no_captions(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``captioner.kind: none``: an empty captions table, nothing quarantined, every row passed on uncaptioned.

    Stages that need captions (Stage I, caption metrics, SkinVL) read the report's status and say they are not
    applicable; the warm-up then trains the diagnosis format only."""
    rows = len(manifest)
    table = conform(pd.DataFrame({c: pd.Series(dtype=t) for c, t in CAPTION_COLUMNS.items()}), CAPTION_COLUMNS)
    quarantine = conform(pd.DataFrame({c: pd.Series(dtype=t) for c, t in QUARANTINE_COLUMNS.items()}),
                         QUARANTINE_COLUMNS)
    report = {"rows_in": rows, "captioned": 0, "quarantined": 0, "not_requested": rows,
              "conservation_ok": True, "parse_rate": None, "quarantine_by_reason": {}, "captions_per_class": {},
              "expectations": [], "schema_version": SCHEMA_VERSION, "status": NOT_APPLICABLE, "failures": [],
              "captioner": "none", "captioner_version": "none",
              "reason": "caption.captioner.kind is none: no captions were made"}
    return table, quarantine, report


def _attributes(path: str | None) -> dict[str, dict]:
    if not path or not Path(path).exists():
        return {}
    frame = pd.read_parquet(path)
    return {row["md5hash"]: row for row in frame.to_dict(orient="records")}


def check_captions(table: pd.DataFrame, rows: pd.DataFrame, quarantine: pd.DataFrame,
                   cfg: CaptionStageConfig, attributes: dict[str, dict]) -> dict:
    """Great Expectations checks on the captions table, plus quality against references."""
    from skinflow.captions.gx_checks import caption_expectations

    parsed = [parse_caption(text, synonyms=False) for text in table["caption_json"]]
    labels = sorted(rows["label"].dropna().unique())
    checks = table.assign(
        parses=[p.ok for p in parsed],
        summary_diagnoses=[",".join(mentions_diagnosis(p.caption.summary, labels)) if p.ok else ""
                           for p in parsed],
    )
    expectations = caption_expectations(checks, labels, cfg.min_captions_per_class)
    parse_rate = float(sum(p.ok for p in parsed) / len(rows)) if len(rows) else 0.0
    per_class = table["label"].value_counts().reindex(labels, fill_value=0)
    report = {
        "rows_in": len(rows), "captioned": len(table), "quarantined": len(quarantine),
        "conservation_ok": len(rows) == len(table) + len(quarantine),
        "parse_rate": round(parse_rate, 6),
        "quarantine_by_reason": quarantine["reason"].value_counts().to_dict(),
        "captions_per_class": {k: int(v) for k, v in per_class.items()},
        "expectations": expectations,
        "schema_version": SCHEMA_VERSION,
    }
    references = [(p.caption, attributes.get(i)) for p, i in zip(parsed, table["image_id"]) if p.ok]
    references = [(c, a) for c, a in references if a is not None]
    if references:
        from skinflow.captions.schema import Caption

        pairs = [(c, Caption.from_attributes(a)) for c, a in references]
        report["quality_vs_reference"] = aggregate([c for c, _ in pairs], [r for _, r in pairs])
        report["text_metrics_vs_reference"] = caption_text_metrics([c for c, _ in pairs], [r for _, r in pairs])
    failures = [e["name"] for e in expectations if not e["success"]]
    if parse_rate < cfg.min_parse_rate:
        failures.append(f"parse_rate {parse_rate:.3f} < {cfg.min_parse_rate}")
    report["status"] = "fail" if failures else "pass"
    report["failures"] = failures
    return report
