"""One flow run per checkout, and the record of what a successful run left in ``dvc.lock``.

DVC serialises work in a checkout with a repo lock (held while it checks and commits stages) and
per-output read/write locks (held while a stage command runs). A second ``dvc repro`` in the same
checkout fails on either one; :func:`dvc_lock_error` recognises both messages so callers can fail
fast instead of retrying. The flow additionally takes :func:`checkout_lock` for its whole run, so
two flow runs cannot interleave stages that DVC's per-output locks would not keep apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zc.lockfile

# DVC 3's wording for a held repo lock (after its ~3 s of retries) and for a busy output.
DVC_LOCK_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")
FLOW_LOCK_NAME = "skinflow-flow.lock"  # under .dvc/tmp, which DVC already keeps out of git


class CheckoutBusy(RuntimeError):
    """Another DVC process or flow run holds this checkout; retrying now cannot help."""

    def __init__(self, repo_dir: str | os.PathLike, holder: str, detail: str = ""):
        message = f"another {holder} holds the lock in {Path(repo_dir).resolve()}; one flow run per checkout"
        super().__init__(message + (f"\n{detail}" if detail else ""))
        self.repo_dir = Path(repo_dir).resolve()


def dvc_lock_error(output: str) -> bool:
    """True if DVC's own error lines (not the stage command's output) report a held lock."""
    return any(line.startswith("ERROR:") and marker in line
               for line in output.splitlines() for marker in DVC_LOCK_MARKERS)


@contextlib.contextmanager
def checkout_lock(repo_dir: str | os.PathLike = ".") -> Iterator[Path]:
    """Hold this checkout's flow lock; raise :class:`CheckoutBusy` at once if it is taken.

    zc.lockfile uses flock on POSIX, so the lock dies with its process (no stale lock after a
    crash) and two holders in one process still exclude each other."""
    path = Path(repo_dir) / ".dvc" / "tmp" / FLOW_LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = zc.lockfile.LockFile(str(path), content_template="{pid}")
    except zc.lockfile.LockError:
        holder = path.read_text().strip() if path.exists() else "?"
        raise CheckoutBusy(repo_dir, "flow run", f"(pid {holder or '?'} holds {path})") from None
    try:
        yield path
    finally:
        lock.close()


@dataclass(frozen=True)
class LockRecord:
    sha256: str | None      # None: the run left no dvc.lock (no stage has run in this checkout yet)
    text: str
    commit: str | None      # the git commit that recorded it, when asked for and something changed

    def markdown(self) -> str:
        if self.sha256 is None:
            return "# dvc.lock after this run\n\nNo dvc.lock in the checkout.\n"
        committed = f"git commit `{self.commit}`" if self.commit else "not committed"
        return (f"# dvc.lock after this run\n\nsha256 `{self.sha256}`, {committed}\n\n"
                f"```yaml\n{self.text.rstrip()}\n```\n")


def _git(repo_dir: str | os.PathLike, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo_dir}:\n{result.stderr.strip()}")
    return result.stdout.strip()


def record_dvc_lock(repo_dir: str | os.PathLike = ".", commit: bool = False,
                    message: str = "dvc.lock after a pipeline run") -> LockRecord:
    """Hash (and optionally commit) the checkout's dvc.lock.

    The commit contains dvc.lock only (``git commit --only``), whatever else is staged; nothing is
    committed when dvc.lock is unchanged. Uses the checkout's own git identity."""
    path = Path(repo_dir) / "dvc.lock"
    if not path.exists():
        return LockRecord(None, "", None)
    data = path.read_bytes()
    sha = None
    if commit:
        _git(repo_dir, "add", "--", "dvc.lock")
        if _git(repo_dir, "status", "--porcelain", "--", "dvc.lock"):
            _git(repo_dir, "commit", "-q", "-m", message, "--only", "--", "dvc.lock")
            sha = _git(repo_dir, "rev-parse", "HEAD")
    return LockRecord(hashlib.sha256(data).hexdigest(), data.decode(), sha)


PIPELINE_PRODUCTS = ("data/", "metrics/", "models/", "dvc.lock")  # what `dvc repro` makes, not git


def commit_all(repo: str | os.PathLike, message: str = "copy") -> None:
    """``git init`` + commit everything in ``repo`` under a throwaway identity (DVC wants a commit)."""
    identity = ["-c", "user.email=ci@localhost", "-c", "user.name=ci"]
    for cmd in (["git", "init", "-q"], ["git", *identity, "add", "-A"], ["git", *identity, "commit", "-qm", message]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)


def clean_copy(source: str | os.PathLike, dest: str | os.PathLike,
               params_overlay: str | os.PathLike | dict | None = None, files: str = "tracked") -> Path:
    """A fresh git repo at ``dest`` with ``source``'s files minus every pipeline product — what a new
    clone runs from — and with ``params_overlay`` (a dict, or a file relative to ``source`` such as
    ``configs/params-tiny.yaml``) merged into params.yaml.

    ``files``: ``tracked`` (tracked files as they are on disk), ``worktree`` (also untracked, not
    ignored files) or ``head`` (the last commit, whatever the working tree holds)."""
    from skinflow.config import overlay_params_text

    if files not in ("tracked", "worktree", "head"):
        raise ValueError(f"files={files!r}: expected 'tracked', 'worktree' or 'head'")
    source, dest = Path(source), Path(dest)
    if files == "head":
        tar = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=source, capture_output=True,
                             check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            for member in archive.getmembers():
                if member.isfile() and not member.name.startswith(PIPELINE_PRODUCTS):
                    (dest / member.name).parent.mkdir(parents=True, exist_ok=True)
                    (dest / member.name).write_bytes(archive.extractfile(member).read())
                    (dest / member.name).chmod(member.mode)
    else:
        extra = ["--others", "--exclude-standard"] if files == "worktree" else []
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", *extra], cwd=source, capture_output=True,
                                 check=True).stdout
        for name in filter(None, listing.decode().split("\0")):
            if (source / name).is_file() and not name.startswith(PIPELINE_PRODUCTS):
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, dest / name)
    if params_overlay:
        overlay = params_overlay if isinstance(params_overlay, dict) else source / params_overlay
        text = overlay_params_text((dest / "params.yaml").read_text(encoding="utf-8"), overlay)
        (dest / "params.yaml").write_text(text, encoding="utf-8")
    commit_all(dest)
    return dest
