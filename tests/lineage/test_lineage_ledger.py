"""Ledger storage, hashing, dirty-path filtering and metric-key resolution, without a DVC run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from skinflow.lineage import LineageError, context, ledger
from skinflow.lineage.audit import resolve_key, wrapped_command
from skinflow.lineage.hashing import Digest, hash_path

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def make_record(stage: str, minutes: int, status: str = "succeeded", **kw) -> ledger.RunRecord:
    return ledger.RunRecord(
        run_id=f"{stage}-{minutes}", stage=stage, command="python -m pipelines.x", status=status,
        exit_code=0 if status == "succeeded" else 1, started_at=T0 + timedelta(minutes=minutes),
        ended_at=T0 + timedelta(minutes=minutes, seconds=30), params={"params.yaml": {"x": {"lr": 5e-06}}},
        git_commit="abc", git_dirty=False, packages={"torch": "2.13.0"},
        deps=[Digest("in.csv", "d" * 32, 10)], outs=[Digest("out", "e" * 32 + ".dir", 20, 2), Digest("m.json", None)],
        **kw)


def test_round_trip_newest_first_and_per_stage(tmp_path):
    path = tmp_path / "sub" / "ledger.duckdb"
    assert ledger.runs(path) == []  # no file yet: empty, and nothing is created
    assert not path.exists()
    for minutes, stage, status in ((0, "a", "succeeded"), (5, "b", "failed"), (9, "a", "failed")):
        ledger.append(path, make_record(stage, minutes, status, dirty_paths=["x.py"] if minutes else []))
    everything = ledger.runs(path)
    assert [r.run_id for r in everything] == ["a-9", "b-5", "a-0"]
    assert [r.run_id for r in ledger.runs(path, stage="a")] == ["a-9", "a-0"]
    assert [r.run_id for r in ledger.runs(path, limit=1)] == ["a-9"]
    first = everything[-1]
    assert first == make_record("a", 0)
    assert first.params["params.yaml"]["x"]["lr"] == 5e-06 and first.seconds == 30
    assert first.outs[1].md5 is None and first.outs[0].is_dir


def test_ledger_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(ledger.LEDGER_ENV, raising=False)
    assert ledger.ledger_path(tmp_path) == tmp_path / ".skinflow" / "lineage.duckdb"
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "elsewhere.duckdb"))
    assert ledger.ledger_path(tmp_path) == tmp_path / "elsewhere.duckdb"


def test_concurrent_writers_wait_for_each_other(tmp_path):
    # DuckDB lets one process write at a time; stages finishing together must all be recorded.
    path = tmp_path / "ledger.duckdb"
    script = textwrap.dedent(f"""
        import sys
        from datetime import datetime, timezone
        from skinflow.lineage import ledger
        for i in range(8):
            now = datetime.now(timezone.utc)
            ledger.append({str(path)!r}, ledger.RunRecord(f"{{sys.argv[1]}}-{{i}}", sys.argv[1], "c", "succeeded", 0, now, now))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("p", "q", "r")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert sorted(r.run_id for r in ledger.runs(path)) == sorted(f"{n}-{i}" for n in "pqr" for i in range(8))


def test_hash_path_matches_md5_and_reports_missing(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"\x00\x01skin\r\n")
    digest = hash_path(tmp_path, "f.bin")
    assert digest == Digest("f.bin", hashlib.md5(b"\x00\x01skin\r\n").hexdigest(), 8, None)
    assert hash_path(tmp_path, "absent") == Digest("absent", None)
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "one.txt").write_text("1")
    (tmp_path / "d" / "two.txt").write_text("22")
    tree = hash_path(tmp_path, "d")
    assert tree.md5.endswith(".dir") and (tree.size, tree.nfiles) == (3, 2)
    (tmp_path / "d" / "two.txt").write_text("23")
    assert hash_path(tmp_path, "d").md5 != tree.md5


def test_code_changes_ignore_pipeline_bookkeeping():
    changed = ["dvc.lock", "metrics/eval/stage2.json", "data/.gitignore", "data/manifest.parquet",
               "skinflow/model/base.py", "params.yaml", ".gitignore", "metrics.py"]
    generated = ["metrics/eval/stage2.json", "data/manifest.parquet", "models/base"]
    assert context.code_changes(changed, generated) == ["skinflow/model/base.py", "params.yaml",
                                                        ".gitignore", "metrics.py"]
    assert context.code_changes(["models/base/config.json", "models/basement.py"], generated) == ["models/basement.py"]


def test_git_state_outside_git_and_in_a_fresh_repository(tmp_path):
    assert context.git_state(tmp_path) == (None, None)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert context.git_state(tmp_path) == (None, ["(no commits yet)"])


def test_environment_facts_are_cheap_and_plain(monkeypatch):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "run-123")
    assert context.prefect_flow_run_id() == "run-123"
    assert set(context.package_versions()) == set(context.PACKAGES)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert context.accelerator().startswith(("cpu", "apple-mps"))


def test_accelerator_reads_the_driver_and_honours_cuda_visible_devices(tmp_path, monkeypatch):
    for bus, model in (("0000:1a:00.0", "NVIDIA H100 80GB HBM3"), ("0000:3b:00.0", "NVIDIA A100-SXM4-40GB")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 35\n")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert context.accelerator(tmp_path) == "NVIDIA H100 80GB HBM3, NVIDIA A100-SXM4-40GB"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert context.accelerator(tmp_path) == "NVIDIA A100-SXM4-40GB (CUDA_VISIBLE_DEVICES=1)"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert context.accelerator(tmp_path).startswith("cpu (2 GPU(s) hidden")


def test_resolve_key_walks_dicts_lists_and_dotted_names():
    data = {"overall": {"top1": {"value": 0.5}}, "caption.bleu4": {"mean": 0.2}, "per_class": [{"f1": 0.1}, {"f1": 0.3}]}
    assert resolve_key(data, "overall.top1.value", "m.json") == 0.5
    assert resolve_key(data, "caption.bleu4.mean", "m.json") == 0.2
    assert resolve_key(data, "per_class.-1.f1", "m.json") == 0.3
    with pytest.raises(LineageError, match="no key 'top2' at overall; keys there: top1"):
        resolve_key(data, "overall.top2", "m.json")
    with pytest.raises(LineageError, match="list of 2 items; '5' is not an index"):
        resolve_key(data, "per_class.5", "m.json")
    with pytest.raises(LineageError, match="is the value 0.5; it has no key 'x'"):
        resolve_key(data, "overall.top1.value.x", "m.json")


def test_wrapped_command_is_read_back_from_the_stage_cmd():
    assert wrapped_command("python -m skinflow.lineage run evaluate@stage1 -- python -m pipelines.evaluate "
                           "--variant stage1 --model models/stage1") == [
        "python", "-m", "pipelines.evaluate", "--variant", "stage1", "--model", "models/stage1"]
    assert wrapped_command("python -m pipelines.synth") is None
