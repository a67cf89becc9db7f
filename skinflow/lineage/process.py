"""Start a stage command and wait for it, standard library only.

The ``run`` wrapper starts the command before importing anything else, so the stage begins after
little more than a bare interpreter's start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

NOT_STARTED = 127  # the shell's code for a command that could not be run


def start_command(command: list[str]) -> subprocess.Popen | None:
    """Start ``command`` with the wrapper's stdio and cwd; None (reported) if it cannot start."""
    if not command:
        print("lineage: no command to run", file=sys.stderr)
        return None
    if len(command) == 1 and any(ch.isspace() for ch in command[0]):
        command = ["/bin/sh", "-c", command[0]]  # one quoted string: let the shell split it
    try:
        # A fixed string-hash seed: set iteration order must not change a stage's output between runs.
        env = {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
        return subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"lineage: cannot start {command[0]!r}: {exc}", file=sys.stderr)
        return None


def wait_command(proc: subprocess.Popen | None) -> int:
    """Wait, forwarding SIGTERM/SIGINT so a cancelled orchestrator run stops the stage instead of
    orphaning it. Exit code as a shell reports it (128 + signal number when killed)."""
    if proc is None:
        return NOT_STARTED
    forwarded = {}

    def forward(signum, _frame):
        proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        forwarded[signum] = signal.signal(signum, forward)
    try:
        code = proc.wait()
        return 128 - code if code < 0 else code
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
