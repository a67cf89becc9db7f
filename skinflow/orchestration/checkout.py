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
import os
import subprocess
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


def clean_copy(source: str | os.PathLike, dest: str | os.PathLike,
               params_overlay: str | os.PathLike | None = None) -> Path:
    """A fresh git repo at ``dest`` with ``source``'s tracked files, minus every pipeline product
    (``data/``, ``metrics/``, ``models/``, ``dvc.lock``) — what a new clone runs from — and with
    the ``params_overlay`` file (relative to ``source``, e.g. ``configs/params-tiny.yaml``) merged
    into params.yaml."""
    import shutil

    import yaml

    from skinflow.config import overlay_params, read_params

    source, dest = Path(source), Path(dest)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=source, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (source / name).is_file() and not name.startswith(("data/", "metrics/", "models/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    if params_overlay:
        params = overlay_params(read_params(dest / "params.yaml"), source / params_overlay)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    identity = ["-c", "user.email=ci@localhost", "-c", "user.name=ci"]
    for cmd in (["git", "init", "-q"], ["git", *identity, "add", "-A"], ["git", *identity, "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest
