"""One warm DVC process per flow run: same results as `dvc repro --single-item`, one process, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import zc.lockfile

from dvc_toy import make_repo, up_to_date
from skinflow.orchestration.checkout import CheckoutBusy
from skinflow.orchestration.dvc_stages import _WORKERS, StageFailed, run_dvc_stage, stage_runner
from skinflow.orchestration.dvc_worker import worker_key

DVC_YAML = """
stages:
  first:
    cmd: python -c "import pathlib, psutil; pathlib.Path('a.txt').write_text('a'); print('first ancestors', *[p.pid for p in psutil.Process().parents()])"
    outs: [a.txt]
  second:
    cmd: python -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
    deps: [a.txt]
    outs: [b.txt]
  broken:
    cmd: python -c "import sys; print('boom from the stage'); sys.exit(3)"
    deps: [b.txt]
    outs: [c.txt]
"""


def test_stages_share_one_process_and_dvc_records_them(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML)
    lines: list[str] = []
    with stage_runner(repo):
        worker = _WORKERS[worker_key(repo)]
        run_dvc_stage("first", repo, log=lines.append)
        run_dvc_stage("second", repo, log=lines.append)
        run_dvc_stage("second", repo, log=lines.append)  # nothing stale: DVC skips it
        assert worker.alive() and _WORKERS[worker_key(repo)] is worker
    assert not worker.alive() and worker_key(repo) not in _WORKERS
    assert (repo / "b.txt").read_text() == "ab"
    # DVC may run the command through a shell that does not exec, so look up the whole ancestry
    ancestry = next(line for line in lines if line.startswith("first ancestors")).split()[2:]
    assert str(worker.proc.pid) in ancestry, "the stage command runs under the one worker"
    assert any("Running stage 'second'" in line for line in lines)
    assert any("didn't change, skipping" in line for line in lines)
    text = (repo / "dvc.lock").read_text()
    assert "first:" in text and "second:" in text


def test_failure_is_reported_with_output_and_the_worker_goes_on(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML)
    with stage_runner(repo):
        run_dvc_stage("first", repo, log=lambda _: None)
        run_dvc_stage("second", repo, log=lambda _: None)
        with pytest.raises(StageFailed, match="boom from the stage"):
            run_dvc_stage("broken", repo, log=lambda _: None)
        assert _WORKERS[worker_key(repo)].alive()
        run_dvc_stage("second", repo, log=lambda _: None)
    assert not (repo / "c.txt").exists() and up_to_date(repo) is False


def test_held_repo_lock_is_busy_not_a_stage_failure(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML)
    with stage_runner(repo):
        held = zc.lockfile.LockFile(str(repo / ".dvc" / "tmp" / "lock"))  # what a running `dvc` holds
        try:
            with pytest.raises(CheckoutBusy):
                run_dvc_stage("first", repo, log=lambda _: None)
        finally:
            held.close()
        run_dvc_stage("first", repo, log=lambda _: None)
    assert (repo / "a.txt").read_text() == "a"


def test_a_killed_worker_fails_the_stage_and_the_retry_runs_standalone(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML)
    with stage_runner(repo):
        _WORKERS[worker_key(repo)].proc.kill()
        _WORKERS[worker_key(repo)].proc.wait()
        run_dvc_stage("first", repo, log=lambda _: None)  # dead worker: falls back to `dvc repro`
    assert Path(repo / "a.txt").read_text() == "a"
