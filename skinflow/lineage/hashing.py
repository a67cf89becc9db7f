"""Content hashes exactly as DVC writes them into dvc.lock, computed by DVC's own code.

A file's hash is the md5 of its bytes; a directory's is DVC's ``<md5>.dir``: the md5 of the JSON
listing of (relative path, md5) for every file under it, honouring ``.dvcignore``. Both come from
``dvc_data.hashfile.build.build`` (what ``Output.get_hash`` calls), so the values compare equal
with dvc.lock by construction rather than by a re-implementation that could drift.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_HASH = "md5"


@dataclass(frozen=True)
class Digest:
    """One artifact's hash; ``md5`` is None when the path does not exist."""

    path: str
    md5: str | None
    size: int | None = None
    nfiles: int | None = None

    @property
    def is_dir(self) -> bool:
        return bool(self.md5 and self.md5.endswith(".dir"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lock_hash_name(entry: dict) -> str:
    """The algorithm of a dvc.lock entry: DVC 3 writes ``hash: md5``; DVC 2 entries lack it and
    used md5 over dos2unix-normalised text."""
    return DEFAULT_HASH if entry.get("hash") == DEFAULT_HASH else "md5-dos2unix"


def lock_digest(entry: dict) -> Digest:
    return Digest(entry["path"], entry.get("md5"), entry.get("size"), entry.get("nfiles"))


def hash_path(root: str | os.PathLike, path: str, *, name: str = DEFAULT_HASH, state=None,
              ignore=None) -> Digest:
    """Hash ``root/path`` the way DVC does.

    ``state``: DVC's hash cache (``repo.state``), keyed by inode, mtime and size. Passing it makes a
    later ``dvc commit`` of the same files free; leaving it out (verification) reads every byte.
    ``ignore``: the repository's ``.dvcignore`` rules (``repo.dvcignore``)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_data.hashfile.state import StateNoop
    from dvc_objects.fs.local import LocalFileSystem

    full = os.path.join(os.fspath(root), path)
    if not os.path.lexists(full):
        return Digest(path, None)
    fs = LocalFileSystem()
    # dry_run: objects are only staged in memory, nothing is copied into the DVC cache.
    odb = HashFileDB(fs, os.path.join(os.fspath(root), ".dvc", "cache"),
                     state=state if state is not None else StateNoop(), hash_name=name)
    _, meta, obj = build(odb, full, fs, name, ignore=ignore, dry_run=True)
    return Digest(path, obj.hash_info.value, meta.size, meta.nfiles if meta.isdir else None)
