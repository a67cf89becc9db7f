"""Two runs in one checkout: the second fails fast with DVC's lock error; the first is unharmed.

Also the checkout's flow lock and the dvc.lock record (hash, optional commit of dvc.lock alone).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zc.lockfile

from dvc_toy import dvc, env, git, make_repo, up_to_date
from skinflow.orchestration.checkout import (CheckoutBusy, checkout_lock, dvc_lock_error,
                                             record_dvc_lock)
from skinflow.orchestration.dvc_stages import StageFailed, run_dvc_stage

# `slow` holds its output's write lock until the test creates `release`; `after` reads that output.
DVC_YAML = """
stages:
  slow:
    cmd: python slow.py
    deps: [slow.py]
    outs: [a.txt]
  after:
    cmd: python -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
    deps: [a.txt]
    outs: [b.txt]
"""
SLOW = """import pathlib, time
deadline = time.monotonic() + 120
while not pathlib.Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
pathlib.Path("a.txt").write_text("a")
"""


def toy(path: Path, released: bool = True) -> Path:
    repo = make_repo(path, DVC_YAML, {"slow.py": SLOW, ".gitignore": "/release\n"})
    if released:
        (repo / "release").touch()
    return repo


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def wait_for_write_lock(repo: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the first `dvc repro` has started its stage command (DVC's rwlock names a writer)."""
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(rwlock.read_text() or "{}").get("write"):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass  # not yet written, or caught mid-write
        time.sleep(0.05)
    raise TimeoutError("the first dvc repro never started its stage")


@pytest.mark.parametrize("second_stage", ["slow", "after"])
def test_second_repro_fails_fast_and_the_first_completes_cleanly(tmp_path, second_stage):
    repo = toy(tmp_path / "repo", released=False)
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_write_lock(repo, first)
        started = time.monotonic()
        with pytest.raises(CheckoutBusy) as busy:
            run_dvc_stage(second_stage, repo, log=lambda line: None)
        assert time.monotonic() - started < 20  # DVC retries its repo lock ~3 s, then gives up
    finally:
        (repo / "release").touch()  # let the first run finish whatever happened
    message = str(busy.value)
    assert f"another dvc process holds the lock in {repo.resolve()}; one flow run per checkout" in message
    assert "is busy" in message or "Unable to acquire lock" in message  # DVC's own words, surfaced

    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert (repo / "b.txt").read_text() == "ab"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["slow"]["outs"][0]["md5"] == md5(repo / "a.txt")
    assert lock["stages"]["after"]["deps"][0]["md5"] == md5(repo / "a.txt")
    assert lock["stages"]["after"]["outs"][0]["md5"] == md5(repo / "b.txt")
    assert up_to_date(repo)
    assert not json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text() or "{}").get("write")


def test_held_repo_lock_is_reported_not_mistaken_for_a_stage_failure(tmp_path):
    repo = toy(tmp_path / "repo")
    held = zc.lockfile.LockFile(str(repo / ".dvc" / "tmp" / "lock"))  # what a running `dvc` holds
    try:
        started = time.monotonic()
        with pytest.raises(CheckoutBusy, match="Unable to acquire lock"):
            run_dvc_stage("slow", repo, log=lambda line: None)
        assert time.monotonic() - started < 20
    finally:
        held.close()
    run_dvc_stage("slow", repo, log=lambda line: None)  # free again: runs normally
    assert (repo / "a.txt").read_text() == "a"


def test_a_failing_stage_is_still_a_stage_failure(tmp_path):
    repo = make_repo(tmp_path / "repo", "stages:\n  bad:\n    cmd: python -c \"raise SystemExit("
                                        "'ERROR: Unable to acquire lock on my own file')\"\n    outs: [x]\n")
    with pytest.raises(StageFailed):  # the stage's own output must not look like DVC's lock error
        run_dvc_stage("bad", repo, log=lambda line: None)


def test_dvc_lock_error_reads_only_dvc_error_lines():
    assert dvc_lock_error("Running stage 'x':\nERROR: Unable to acquire lock. Most likely ...")
    assert dvc_lock_error("ERROR: failed to reproduce 'x': '/r/a.txt' is busy, it is being blocked by:")
    assert not dvc_lock_error("stage says: Unable to acquire lock\nERROR: failed to reproduce 'x'")


def test_checkout_lock_excludes_another_process_and_dies_with_it(tmp_path):
    (tmp_path / ".dvc").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from skinflow.orchestration.checkout import checkout_lock\n"
        f"with checkout_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckoutBusy, match=rf"pid {holder.pid} holds"):
            with checkout_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with checkout_lock(tmp_path):  # a killed holder leaves no stale lock behind
        with pytest.raises(CheckoutBusy, match="another flow run holds the lock"):
            with checkout_lock(tmp_path):  # and one process cannot take it twice either
                pass


def test_record_dvc_lock_hashes_and_commits_dvc_lock_alone(tmp_path):
    repo = toy(tmp_path / "repo")
    assert record_dvc_lock(repo).sha256 is None  # nothing has run yet
    dvc("repro", cwd=repo)
    (repo / "notes.txt").write_text("staged, not mine to commit")
    git("add", "notes.txt", cwd=repo)

    plain = record_dvc_lock(repo)
    assert plain.commit is None and git("log", "--format=%s", cwd=repo).splitlines() == ["toy"]
    assert plain.sha256 == hashlib.sha256((repo / "dvc.lock").read_bytes()).hexdigest()
    assert plain.sha256 in plain.markdown() and "outs:" in plain.markdown()

    committed = record_dvc_lock(repo, commit=True, message="lock after run")
    assert committed.commit == git("rev-parse", "HEAD", cwd=repo).strip()
    assert git("show", "--name-only", "--format=%s", "HEAD", cwd=repo).split() == ["lock", "after", "run",
                                                                                  "dvc.lock"]
    assert "A  notes.txt" in git("status", "--porcelain", cwd=repo)  # still staged, not committed
    assert record_dvc_lock(repo, commit=True).commit is None  # unchanged: no empty commit
