"""clean_copy: what a fresh clone runs from — no pipeline products, the overlay merged, one commit."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from skinflow.orchestration.checkout import clean_copy, commit_all


@pytest.fixture
def source(tmp_path):
    repo = tmp_path / "source"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "made.txt").write_text("product")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "params.yaml").write_text(yaml.safe_dump({"synth": {"n_images": 3000, "seed": 17}}))
    (repo / "code.py").write_text("committed")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    commit_all(repo)
    (repo / "code.py").write_text("edited")
    (repo / "new.py").write_text("untracked")
    return repo


def _files(repo) -> dict[str, str]:
    """The files of the copy's one commit (fails if there is no commit)."""
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()
    return {name: (repo / name).read_text() for name in names}


@pytest.mark.parametrize("mode, code, new", [("tracked", "edited", False), ("worktree", "edited", True),
                                             ("head", "committed", False)])
def test_modes_pick_their_files_and_drop_products(source, tmp_path, mode, code, new):
    copy = clean_copy(source, tmp_path / mode, {"synth": {"n_images": 96}}, files=mode)
    files = _files(copy)
    assert os.access(copy / "run.sh", os.X_OK), "the executable bit was lost"
    assert files["code.py"] == code and ("new.py" in files) == new
    assert "dvc.lock" not in files and not any(name.startswith("data/") for name in files)
    assert yaml.safe_load(files["params.yaml"]) == {"synth": {"n_images": 96, "seed": 17}}


def test_unknown_files_mode_is_an_error(source, tmp_path):
    with pytest.raises(ValueError, match="files='all'"):
        clean_copy(source, tmp_path / "copy", files="all")
