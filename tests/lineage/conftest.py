"""Fixtures for the lineage tests: the reproduced throwaway repository and private copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lineage_helpers import FILES, FLOW_RUN_ID, dvc, git_commit, sh


@pytest.fixture(scope="module")
def lineage_repo(tmp_path_factory) -> dict:
    """The reproduced repository: {"path", "commit" (the revision the stages ran from)}."""
    repo = tmp_path_factory.mktemp("lineage") / "repo"
    repo.mkdir()
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / ".gitignore").write_text("/.skinflow/\n")
    sh(["git", "init", "-q"], repo)
    dvc(repo, "init", "-q")
    commit = git_commit(repo, "code")
    dvc(repo, "repro", PREFECT__FLOW_RUN_ID=FLOW_RUN_ID)
    # dvc.lock, the metrics and DVC's .gitignore files join git, as in the real project.
    git_commit(repo, "results")
    return {"path": repo, "commit": commit}


@pytest.fixture
def repo_copy(lineage_repo, tmp_path) -> Path:
    """A private copy (git, DVC cache, outputs and ledger) for tests that change things."""
    dest = tmp_path / "copy"
    shutil.copytree(lineage_repo["path"], dest, symlinks=True)
    return dest
