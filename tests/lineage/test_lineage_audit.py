"""Wrapper + ledger + audit on a real `dvc repro` of a throwaway repository."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from lineage_helpers import FLOW_RUN_ID, dvc, git_commit, lineage_env, sh
from typer.testing import CliRunner

from skinflow.cli import app
from skinflow.lineage import LineageError, ledger
from skinflow.lineage.audit import build_audit, verify

REPO = Path(__file__).resolve().parents[2]
METRIC = "metrics/x.json:overall.top1.value"


def lock_of(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def cli(repo: Path, *args: str):
    return CliRunner().invoke(app, ["lineage", *args, "--repo", str(repo)], env={"SKINFLOW_LEDGER": None})


def lineage_json(repo: Path, *args: str) -> tuple[int, dict]:
    result = cli(repo, METRIC, "--json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def test_chain_matches_dvc_lock_hashes(lineage_repo):
    repo = lineage_repo["path"]
    lock = lock_of(repo)
    code, doc = lineage_json(repo)
    assert code == 0
    expected_value = 1 * len((repo / "data/prep/rows.csv").read_text().splitlines()) + 2
    assert doc["value"] == expected_value == 11
    assert doc["produced_by"] == "score@x" and doc["order"] == ["score@x", "prep"]
    assert doc["metric_file"]["matches_dvc_lock"]
    for name in doc["order"]:
        stage = doc["stages"][name]
        for role in ("outs", "deps"):
            want = {e["path"]: e["md5"] for e in lock[name][role]}
            assert {e["path"]: e["md5"] for e in stage[role]} == want
            # the wrapper hashed the same artifacts to the same values (directories too) as DVC
            assert {e["path"]: e["md5"] for e in stage["ledger"][role]} == want, (name, role)
        assert stage["params"] == lock[name]["params"] and stage["params_source"] == "ledger"
    assert doc["stages"]["prep"]["outs"][0]["md5"].endswith(".dir")
    assert doc["stages"]["score@x"]["deps"][0]["produced_by"] == "prep"
    assert doc["raw_inputs"] == ["prep.py", "raw/input.csv", "score.py"]
    assert doc["dirty"] is False and doc["unrecorded_stages"] == []


def test_records_carry_revision_environment_and_flow_run(lineage_repo):
    repo = lineage_repo["path"]
    records = {r.stage: r for r in reversed(ledger.runs(repo / ".skinflow/lineage.duckdb"))}
    assert set(records) == {"prep", "score@x", "score@y"}
    for record in records.values():
        assert record.succeeded and record.exit_code == 0
        assert record.git_commit == lineage_repo["commit"] and record.git_dirty is False
        assert record.prefect_flow_run_id == FLOW_RUN_ID
        assert record.started_at <= record.ended_at
        assert record.packages == {p: metadata.version(p) for p in
                                   ("torch", "transformers", "trl", "peft", "dvc", "prefect")}
        assert record.host and record.accelerator and record.python
    # foreach resolved through DVC's index: score@y's own params, deps and metric file
    y = records["score@y"]
    assert y.params == {"params.yaml": {"score.bias": 2}}
    assert [d.path for d in y.deps] == ["score.py", "data/prep"] and [o.path for o in y.outs] == ["metrics/y.json"]
    assert y.command == "python score.py y 2"


def test_verify_passes_on_an_untouched_repo(lineage_repo):
    result = cli(lineage_repo["path"], METRIC, "--verify")
    assert result.exit_code == 0, result.output
    assert "verify: every artifact on the chain matches" in result.output
    assert "stage prep" in result.output and "raw input, in git" in result.output


def test_tampered_intermediate_artifact_fails_verify_by_name(repo_copy):
    (repo_copy / "data/prep/rows.csv").write_text("id,value\n1,999\n")
    result = cli(repo_copy, METRIC, "--verify")
    assert result.exit_code == 1, result.output
    assert "VERIFY FAILED" in result.output and "data/prep: changed" in result.output
    _, doc = lineage_json(repo_copy, "--verify")
    assert [p["path"] for p in doc["verify"]["problems"]] == ["data/prep"]
    sources = {e["source"] for e in doc["verify"]["problems"][0]["expected"]}
    assert {"dvc.lock out of prep", "dvc.lock dep of score@x"} <= sources
    # the audit without --verify still passes: it reads hashes, it does not re-hash
    assert cli(repo_copy, METRIC).exit_code == 0


def test_missing_artifact_and_changed_params_fail_verify(repo_copy):
    (repo_copy / "raw/input.csv").unlink()
    params = repo_copy / "params.yaml"
    params.write_text(params.read_text().replace("repeat: 3", "repeat: 4"))
    _, doc = lineage_json(repo_copy, "--verify")
    problems = {p["path"]: p["kind"] for p in doc["verify"]["problems"]}
    assert problems == {"raw/input.csv": "missing", "params.yaml:prep": "params"}


def test_dirty_tree_marks_the_metric(repo_copy):
    script = repo_copy / "score.py"
    script.write_text(script.read_text() + "# tuned locally, not committed\n")
    dvc(repo_copy, "repro")
    code, doc = lineage_json(repo_copy)
    assert code == 0
    assert doc["dirty"] is True and doc["dirty_stages"] == ["score@x"]
    assert doc["stages"]["score@x"]["ledger"]["dirty_paths"] == ["score.py"]
    assert doc["stages"]["prep"]["dirty"] is False
    assert "DIRTY" in cli(repo_copy, METRIC).output


def test_pipeline_bookkeeping_does_not_make_a_run_dirty(repo_copy):
    # Even a ledger committed by mistake is not code.
    sh(["git", "add", "--force", ".skinflow/lineage.duckdb"], repo_copy)
    head = git_commit(repo_copy, "ledger committed by mistake")
    # A forced re-run rewrites dvc.lock, the git-tracked metrics (new nonce) and the ledger between stages.
    dvc(repo_copy, "repro", "--force")
    changed = sh(["git", "status", "--porcelain", "--untracked-files=no"], repo_copy).stdout
    assert "dvc.lock" in changed and "metrics/x.json" in changed and "lineage.duckdb" in changed
    records = ledger.runs(repo_copy / ".skinflow/lineage.duckdb", limit=3)
    assert {r.stage for r in records} == {"prep", "score@x", "score@y"}
    assert all(r.git_dirty is False and r.git_commit == head for r in records), [r.dirty_paths for r in records]
    _, doc = lineage_json(repo_copy)
    assert doc["dirty"] is False


def test_failed_runs_are_recorded_and_never_chosen(repo_copy):
    script = repo_copy / "score.py"
    script.write_text("raise SystemExit(3)\n")
    git_commit(repo_copy, "break the scorer")
    assert dvc(repo_copy, "repro", "score@x", check=False).returncode != 0
    if not (repo_copy / "metrics/x.json").exists():  # DVC clears a stage's outputs before running it
        sh(["git", "checkout", "--", "metrics/x.json"], repo_copy)
    failed = ledger.runs(repo_copy / ".skinflow/lineage.duckdb", stage="score@x", limit=1)[0]
    assert failed.status == "failed" and failed.exit_code == 3 and failed.git_dirty is False
    assert failed.outs[0].path == "metrics/x.json" and failed.params == {"params.yaml": {"score.bias": 2}}
    # dvc.lock still describes the earlier successful run; the audit attaches that one.
    _, doc = lineage_json(repo_copy)
    assert doc["stages"]["score@x"]["ledger"]["status"] == "succeeded"
    assert doc["stages"]["score@x"]["ledger_runs_of_stage"] == 2


def test_wrapper_passes_exit_codes_and_records_unknown_stages(repo_copy):
    run = [sys.executable, "-m", "skinflow.lineage", "run"]
    assert sh([*run, "nosuch", "--", sys.executable, "-c", "raise SystemExit(7)"], repo_copy, check=False).returncode == 7
    assert sh([*run, "prep", "--", "definitely-not-a-program"], repo_copy, check=False).returncode == 127
    newest = ledger.runs(repo_copy / ".skinflow/lineage.duckdb", limit=2)
    assert [(r.stage, r.exit_code) for r in newest] == [("prep", 127), ("nosuch", 7)]
    assert "not in dvc.yaml" in newest[1].note and newest[1].deps == [] == newest[1].outs
    assert sh([sys.executable, "-m", "skinflow.lineage", "bogus"], repo_copy, check=False).returncode == 2


def test_unrecorded_stages_are_reported(lineage_repo, tmp_path):
    audit = build_audit(METRIC, lineage_repo["path"], tmp_path / "empty.duckdb")
    assert audit.unrecorded_stages == ["score@x", "prep"] and not audit.dirty_stages
    assert verify(audit) == []


def test_unknown_file_and_key_name_what_exists(lineage_repo):
    result = cli(lineage_repo["path"], "metrics/nope.json:overall")
    assert result.exit_code == 2 and "metrics/x.json, metrics/y.json" in result.output
    result = cli(lineage_repo["path"], "metrics/x.json:overall.top5.value")
    assert result.exit_code == 2 and "no key 'top5' at overall; keys there: top1" in result.output
    # a metric file inside a directory output is audited through that directory's entry
    inside = build_audit("data/prep/summary.json:repeat", lineage_repo["path"])
    assert (inside.value, inside.stage, inside.metric_lock.path, inside.metric_matches_lock) == (3, "prep", "data/prep", True)
    with pytest.raises(LineageError, match="metric files are JSON or YAML"):
        build_audit("data/prep/rows.csv", lineage_repo["path"])


def test_audit_of_the_real_repository_degrades_gracefully(tmp_path):
    if not (REPO / "dvc.lock").exists() or not (REPO / "metrics/data.json").exists():
        pytest.skip("the project has not been reproduced here")
    result = subprocess.run([sys.executable, "-m", "skinflow.cli", "lineage", "metrics/data.json:accepted",
                             "--repo", str(REPO), "--ledger", str(tmp_path / "none.duckdb"), "--json"],
                            capture_output=True, text=True, env=lineage_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["produced_by"] == "validate" and {"validate", "ingest", "synth"} <= set(doc["order"])
    # An empty ledger is rebuilt from the record files the stages left among their outputs; a stage without
    # one (a lock from before the records existed) is reported unrecorded, nothing fails.
    with_file = {s for s in doc["order"] if (REPO / ledger.record_file(s)).exists()}
    assert set(doc["unrecorded_stages"]) == set(doc["order"]) - with_file
    assert all(s["params_source"] == ("ledger" if name in with_file else "dvc.lock")
               for name, s in doc["stages"].items())
