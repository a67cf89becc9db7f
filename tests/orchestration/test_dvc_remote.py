"""The committed .dvc/config gives every checkout a default remote beside it: push, wipe, pull."""

from __future__ import annotations

import shutil
from pathlib import Path

from dvc_toy import REPO, dvc, git, make_repo, run, up_to_date

# A directory output (several files) feeding a file output, and an uncached metric.
DVC_YAML = """
stages:
  make:
    cmd: python make.py
    deps: [make.py]
    outs: [data/blobs]
  summarise:
    cmd: python summarise.py
    deps: [summarise.py, data/blobs]
    outs: [summary.txt]
    metrics:
      - count.json:
          cache: false
"""
SCRIPTS = {
    "make.py": (
        "import pathlib, random\n"
        "out = pathlib.Path('data/blobs')\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "for i in range(3):\n"
        "    (out / f'{i}.bin').write_bytes(random.Random(i).randbytes(2048 + i))\n"),
    "summarise.py": (
        "import hashlib, json, pathlib\n"
        "files = sorted(pathlib.Path('data/blobs').iterdir())\n"
        "pathlib.Path('summary.txt').write_text(''.join(hashlib.md5(f.read_bytes()).hexdigest() + '\\n' for f in files))\n"
        "pathlib.Path('count.json').write_text(json.dumps({'files': len(files)}))\n"),
}
CACHED = ["data/blobs/0.bin", "data/blobs/1.bin", "data/blobs/2.bin", "summary.txt"]


def snapshot(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in CACHED}


def test_project_default_remote_is_a_sibling_of_the_checkout():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        name = repo.config["core"]["remote"]
        url = Path(repo.config["remote"][name]["url"])
    assert url == REPO.parent / ".skinflow-dvc-remote"
    assert not url.is_relative_to(REPO)  # survives `git clean -fdx`, shared by sibling checkouts


def test_push_wipe_pull_restores_outputs_byte_identical(tmp_path):
    repo = make_repo(tmp_path / "checkout", DVC_YAML, SCRIPTS)
    dvc("repro", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "outputs", cwd=repo)
    before = snapshot(repo)

    dvc("push", cwd=repo)
    remote = tmp_path / ".skinflow-dvc-remote"
    assert remote.is_dir() and sum(1 for p in remote.rglob("*") if p.is_file()) >= len(CACHED)

    shutil.rmtree(repo / "data")
    (repo / "summary.txt").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    assert not up_to_date(repo)

    dvc("pull", cwd=repo)
    assert snapshot(repo) == before
    assert up_to_date(repo)


def test_fresh_clone_beside_the_first_pulls_the_same_outputs(tmp_path):
    first = make_repo(tmp_path / "cpu-worker", DVC_YAML, SCRIPTS)
    dvc("repro", cwd=first)
    git("add", "-A", cwd=first)
    git("commit", "-qm", "outputs", cwd=first)
    dvc("push", cwd=first)

    run(["git", "clone", "-q", str(first), str(tmp_path / "gpu-worker")], tmp_path)
    second = tmp_path / "gpu-worker"
    assert not (second / "summary.txt").exists()
    dvc("pull", cwd=second)
    assert snapshot(second) == snapshot(first)
    assert up_to_date(second)
    assert "Running stage" not in dvc("repro", cwd=second).stdout  # nothing to recompute
