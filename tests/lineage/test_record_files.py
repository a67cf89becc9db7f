"""Lineage records travel with the results: each stage writes its record among its declared outputs, and any
checkout (a fresh clone after `dvc pull`) rebuilds the ledger from those files and verifies a metric."""

from __future__ import annotations

import json
from pathlib import Path

from lineage_helpers import FILES, dvc, git_commit, sh

from skinflow.lineage import ledger
from skinflow.lineage.audit import build_audit, verify

METRIC = "metrics/x.json:overall.top1.value"


def _files_with_record_outs() -> dict[str, str]:
    text = FILES["dvc.yaml"]
    prep = "    outs: [data/prep]\n"
    score = "      metrics:\n        - metrics/${key}.json:\n            cache: false\n"
    assert prep in text and score in text
    text = text.replace(prep, "    outs:\n      - data/prep\n      - metrics/timing/lineage/prep.json:\n"
                              "          cache: false\n")
    text = text.replace(score, score + "      outs:\n        - metrics/timing/lineage/score@${key}.json:\n"
                                       "            cache: false\n")
    return {**FILES, "dvc.yaml": text}


def _repo(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, text in _files_with_record_outs().items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    (path / ".gitignore").write_text("/.skinflow/\n")
    sh(["git", "init", "-q"], path)
    dvc(path, "init", "-q")
    dvc(path, "remote", "add", "-d", "store", str(path.parent / "remote"))
    git_commit(path, "code")
    return path


def test_each_stage_writes_its_record_among_its_outputs(tmp_path):
    repo = _repo(tmp_path / "repo")
    dvc(repo, "repro")
    records = {r.stage: r for r in ledger.runs(repo / ledger.DEFAULT_LEDGER)}
    for stage in ("prep", "score@x", "score@y"):
        data = json.loads((repo / ledger.record_file(stage)).read_text())
        assert data["run_id"] == records[stage].run_id and data["status"] == "succeeded"
        assert ledger.record_file(stage) not in {o["path"] for o in data["outs"]}   # never its own hash
        assert ledger.record_from_dict(data).outs == records[stage].outs
    assert "up to date" in dvc(repo, "status").stdout.lower()   # DVC tracks the records like any output


def test_a_fresh_clone_rebuilds_the_ledger_from_the_records_and_verifies(tmp_path):
    repo = _repo(tmp_path / "repo")
    dvc(repo, "repro")
    dvc(repo, "push")
    git_commit(repo, "results")            # the records are git-tracked with the metrics, like dvc.lock
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(clone, "pull")
    assert not (clone / ledger.DEFAULT_LEDGER).exists()

    audit = build_audit(METRIC, clone)
    assert audit.unrecorded_stages == [] and verify(audit) == []
    original = {r.run_id for r in ledger.runs(repo / ledger.DEFAULT_LEDGER)}
    assert {n.record.run_id for n in audit.nodes.values()} <= original   # the runs made in the other checkout
    assert all(n.record.repo_root == str(repo) for n in audit.nodes.values())
    assert ledger.index_records(clone / ledger.DEFAULT_LEDGER, clone) == 0   # indexing twice adds nothing


def test_records_of_earlier_runs_are_exported_from_the_ledger(tmp_path):
    """A lock made before the stages declared their record files: the ledger's matching runs fill them in."""
    from lineage_helpers import FILES as PLAIN

    from skinflow.lineage.audit import export_records

    repo = _repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text(PLAIN["dvc.yaml"])
    dvc(repo, "repro")
    assert not (repo / ledger.RECORDS_DIR).exists()
    (repo / "dvc.yaml").write_text(_files_with_record_outs()["dvc.yaml"])
    written = export_records(repo)
    assert written == {s: ledger.record_file(s) for s in ("prep", "score@x", "score@y")}
    dvc(repo, "commit", "-f")
    assert "up to date" in dvc(repo, "status").stdout.lower()
    audit = build_audit(METRIC, repo, tmp_path / "fresh.duckdb")
    assert audit.unrecorded_stages == [] and verify(audit) == []


def test_every_project_stage_declares_its_record_file_uncached():
    """The contract behind `skinflow lineage` on a fresh clone: every stage's record is one of its outputs."""
    import re

    from dvc.repo import Repo

    root = Path(__file__).resolve().parents[2]
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            recorded_as = re.search(r"skinflow\.lineage run (\S+) --", stage.cmd).group(1)
            assert recorded_as == stage.name, (stage.name, stage.cmd)
            outs = {o.def_path: o for o in stage.outs}
            record = outs.get(ledger.record_file(stage.name))
            assert record is not None and not record.use_cache, f"{stage.name}: no uncached {ledger.record_file(stage.name)}"
