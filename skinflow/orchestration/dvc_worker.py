"""One warm DVC process per flow run: stages are reproduced one at a time, on request.

``dvc repro --single-item <stage>`` per stage pays for a Python start, DVC's imports and a fresh
``Repo`` every time (~1 s a stage; 27 stages made the Prefect flow 1.3x a plain ``dvc repro`` of the
tiny pipeline). The worker keeps one process and one ``Repo`` for the whole flow run and calls the same
``Repo.reproduce(stage, single_item=True)`` the CLI calls, so DVC still decides what is stale and
writes ``dvc.lock``. DVC drops its cached index around every locked call, so reusing the ``Repo`` sees
what earlier stages wrote, and the repo lock is taken per stage exactly as with the CLI.

Protocol (text lines): the client writes a stage name; the worker streams that stage's output (DVC's
messages and the stage command's own stdout/stderr, which inherit the worker's) and ends it with
``SENTINEL <status> <exit code>``, status ``ok`` | ``failed`` | ``busy`` (another process holds the
DVC lock).

    python -m skinflow.orchestration.dvc_worker      # reads stage names on stdin
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

SENTINEL = "@@skinflow-dvc-worker"
PROGRESS_EVERY_S = 10.0  # one progress-bar redraw per this many seconds reaches the logs
_LINE_END = re.compile(rb"\r\n|\n|\r")


def output_lines(stream: IO[bytes], progress_every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """A stage's output as lines, with progress-bar redraws thinned out.

    tqdm redraws a bar by ending the text with a bare carriage return, up to ten times a second;
    each would become one Prefect log record (API call, database row) for the whole of a long
    stage. Text ended by ``\\r`` is a redraw: at most one every ``progress_every_s`` is kept;
    lines ended by ``\\n`` (including a bar's final state) are always kept."""
    read = getattr(stream, "read1", stream.read)  # read1: what a buffered pipe has now, without waiting for more
    buffer, last_progress = b"", None
    while chunk := read(65536):
        buffer += chunk
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of \r\n: decide when more arrives
            text = buffer[start:match.start()].decode("utf-8", "replace").rstrip()
            start = match.end()
            if match.group() == b"\r":
                now = clock()
                if not text or (last_progress is not None and now - last_progress < progress_every_s):
                    continue
                last_progress = now
            yield text
        buffer = buffer[start:]
    if buffer.strip():
        yield buffer.decode("utf-8", "replace").rstrip()


def follow(lines: Iterable[str], log: Callable[[str], None], until: str | None = None,
           keep: int = 40) -> tuple[list[str], str | None]:
    """Pass each non-empty line to ``log`` until one starts with ``until`` (or the lines end).

    Returns the last ``keep`` logged lines (for error messages) and the ``until`` line, if seen."""
    tail: deque[str] = deque(maxlen=keep)
    for line in lines:
        if until is not None and line.startswith(until):
            return list(tail), line
        if line:
            log(line)
            tail.append(line)
    return list(tail), None


def serve(repo_dir: str = ".") -> None:
    """The worker loop (runs in the child process)."""
    from dvc.lock import LockError
    from dvc.logger import setup
    from dvc.repo import Repo

    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if not logging.getLogger("dvc").handlers:  # importing dvc may already have set it up: no doubled lines
        setup()
    with Repo(repo_dir) as repo:
        for line in sys.stdin:
            name = line.strip()
            if not name:
                continue
            status, code = "ok", 0
            try:
                repo.reproduce(name, single_item=True)
            except LockError as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                status, code = "busy", 1
            except Exception as exc:  # noqa: BLE001 - reported to the client, the worker lives on
                cause = exc.__cause__ or exc.__context__
                print(f"ERROR: {exc}" + (f"\n{cause}" if cause else ""), file=sys.stderr)
                status, code = "failed", 1
            sys.stderr.flush()
            # On a line of its own even if the stage left a progress bar without its newline.
            print(f"\n{SENTINEL} {status} {code}", flush=True)


class WorkerGone(RuntimeError):
    """The worker process ended before finishing a stage (killed, crashed)."""


class DvcWorker:
    """Client side: ``w = DvcWorker(repo, env); w.run("ingest", log); w.close()``; one stage at a time."""

    def __init__(self, repo_dir: str | os.PathLike, env: dict[str, str]):
        self.repo_dir = str(repo_dir)
        self.proc = subprocess.Popen([sys.executable, "-m", "skinflow.orchestration.dvc_worker"],
                                     cwd=self.repo_dir, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        self._lock = threading.Lock()
        self._lines = output_lines(self.proc.stdout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, name: str, log: Callable[[str], None]) -> tuple[str, int, list[str]]:
        """(status, exit code, last output lines) of one stage; raises WorkerGone if the process died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            try:
                self.proc.stdin.write(name.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise WorkerGone(f"dvc worker exited (code {self.proc.poll()})") from exc
            tail, end = follow(self._lines, log, until=SENTINEL)
        if end is not None:
            _, status, code = end.split()
            return status, int(code), tail
        raise WorkerGone(f"dvc worker exited (code {self.proc.wait()}) during stage {name}:\n" + "\n".join(tail))

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def worker_key(repo_dir: str | os.PathLike) -> str:
    return str(Path(repo_dir).resolve())


if __name__ == "__main__":
    serve(".")
