"""The `skinflow` command line: every command is listed and documented, errors say what exists."""

from __future__ import annotations

import ast
import json
import socket
from pathlib import Path

import pandas as pd
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from skinflow.cli import app

REPO = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = {"synth", "ingest", "validate", "caption", "base-model", "warmup", "stage1-rl", "stage2-rl",
                  "evaluate", "ablation"}
OTHER_COMMANDS = {"verify-lock", "deps", "report", "lineage", "runs", "export-records", "doctor", "params"}
runner = CliRunner()


def pipeline_modules_with_main() -> set[str]:
    found = set()
    for path in (REPO / "pipelines").glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            found.add(path.stem.replace("_", "-"))
    return found


def test_help_lists_every_command():
    expected = STAGE_COMMANDS | OTHER_COMMANDS | pipeline_modules_with_main()
    assert set(get_command(app).commands) == expected
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in expected:
        assert f" {name} " in result.output, name
    for name in expected:
        sub = runner.invoke(app, [name, "--help"], terminal_width=200)
        assert sub.exit_code == 0 and "Usage" in sub.output, (name, sub.output)


def test_synth_writes_a_dataset_to_any_directory(tmp_path):
    args = ["synth", "--out", str(tmp_path / "a"), "--n-images", "12", "--image-size", "64", "--seed", "5",
            "--conditions", "psoriasis, acne vulgaris", "--workers", "1", "--params", str(tmp_path / "no-params.yaml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "a" / "fitzpatrick17k.csv")
    assert len(table) == 12 and set(table["label"]) == {"psoriasis", "acne vulgaris"}
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) == 12
    assert json.loads(result.output.strip().splitlines()[-1])["out"] == str(tmp_path / "a")
    again = runner.invoke(app, [*args[:2], str(tmp_path / "b"), *args[3:]])
    assert again.exit_code == 0
    assert (tmp_path / "a" / "fitzpatrick17k.csv").read_bytes() == (tmp_path / "b" / "fitzpatrick17k.csv").read_bytes()


def test_synth_options_are_validated_with_the_params_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synth": {"n_images": 8, "image_size": 64}}))
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "o"), "--params", str(params), "--image-size", "10"])
    assert result.exit_code == 2 and "image_size" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "o"), "--params", str(params), "--conditions", "nope"])
    assert result.exit_code == 2 and "unknown condition" in result.output


def test_stage_commands_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--variant", "v", "--model", "models/missing"])
    assert result.exit_code == 2 and "models/missing does not exist" in result.output
    result = runner.invoke(app, ["ablation"])
    assert result.exit_code == 2 and "run the evaluate stages first" in result.output
    result = runner.invoke(app, ["ingest", "--params", "absent.yaml"])
    assert result.exit_code == 2 and "params file not found: absent.yaml" in result.output


def test_report_runs_the_report_stage_or_says_it_is_missing(monkeypatch):
    import importlib.util

    import skinflow.cli as cli

    calls = []
    monkeypatch.setattr(cli, "_call_main", lambda module, argv: calls.append((module, argv)))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "pipelines.report"
                        else real_find_spec(name, *a))
    assert runner.invoke(app, ["report", "--set", "title=x"]).exit_code == 0
    assert calls == [("report", ["--params", "params.yaml", "--set", "title=x"])]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pipelines.report"
                        else real_find_spec(name, *a))
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 2 and "pipelines/report.py does not exist" in result.output and len(calls) == 1


def test_lineage_errors_name_what_exists(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text(json.dumps({"overall": {"top1": 0.5}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"score": {
        "cmd": "python score.py", "deps": [], "outs": [{"path": "metrics/a.json", "hash": "md5", "md5": "0" * 32}]}}}))
    result = runner.invoke(app, ["lineage", "metrics/b.json:overall", "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "metric files there: metrics/a.json" in result.output
    result = runner.invoke(app, ["lineage", "metrics/a.json:overall.top5", "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "no key 'top5' at overall; keys there: top1" in result.output
    result = runner.invoke(app, ["lineage", "metrics/a.json:overall.top1", "--repo", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no dvc.lock" in result.output
    # the workspace file differs from the hash dvc.lock recorded: shown, but flagged
    result = runner.invoke(app, ["lineage", "metrics/a.json:overall.top1", "--repo", str(tmp_path),
                                 "--ledger", str(tmp_path / "l.duckdb")])
    assert result.exit_code == 0 and "= 0.5" in result.output and "differs from dvc.lock" in result.output
    result = runner.invoke(app, ["lineage", "metrics/a.json:overall.top1", "--repo", str(tmp_path), "--verify",
                                 "--ledger", str(tmp_path / "l.duckdb")])
    assert result.exit_code == 1 and "metrics/a.json: changed" in result.output


def test_runs_lists_an_empty_ledger(tmp_path):
    result = runner.invoke(app, ["runs", "--ledger", str(tmp_path / "l.duckdb")])
    assert result.exit_code == 0 and "no runs recorded" in result.output


def test_doctor_reports_remote_prefect_and_gpu(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    assert "NOT reachable" in result.output
    for label in ("dvc remote", "accelerator", "torch sees", "CUDA_VISIBLE_DEVICES", "lineage ledger"):
        assert label in result.output
    monkeypatch.delenv("PREFECT_API_URL")
    assert "PREFECT_API_URL not set" in runner.invoke(app, ["doctor"]).output


def test_verify_lock_names_every_differing_output(tmp_path, monkeypatch):
    """`skinflow verify-lock` against a committed dvc.lock: exit 0 when every output matches, 1 naming each
    difference (run facts under metrics/timing/ ignored)."""
    import subprocess

    import yaml

    lock = {"schema": "2.0", "stages": {"warmup": {"cmd": "x", "outs": [
        {"path": "models/warmup", "md5": "a.dir"}, {"path": "metrics/timing/warmup.json", "md5": "t"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    for cmd in (["git", "init", "-q"], ["git", "add", "dvc.lock"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    lock["stages"]["warmup"]["outs"][1]["md5"] = "other"  # a run fact: ignored
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    ok = runner.invoke(app, ["verify-lock"])
    assert ok.exit_code == 0 and "all 1 outputs match" in ok.output
    lock["stages"]["warmup"]["outs"][0]["md5"] = "b.dir"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    bad = runner.invoke(app, ["verify-lock"])
    assert bad.exit_code == 1 and "warmup: models/warmup differs (a.dir vs b.dir)" in bad.output
