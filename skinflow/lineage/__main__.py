"""``python -m skinflow.lineage run <stage> -- <command...>``: run a stage command and record it.

The command starts before the recorder (and through it DVC and DuckDB) is imported, so the stage
waits only for a bare interpreter's start-up. The audit lives in the ``skinflow lineage`` command.
"""

from __future__ import annotations

import os
import sys

USAGE = ("usage: python -m skinflow.lineage run <stage> -- <command...>\n"
         "       (audit a metric with: skinflow lineage metrics/<file>.json:<key> [--verify] [--json])")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "run" or argv[1].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    stage, command = argv[1], argv[2:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("lineage: no command given after --\n" + USAGE, file=sys.stderr)
        return 2
    from datetime import datetime, timezone

    from skinflow.lineage.process import start_command

    started_at = datetime.now(timezone.utc)
    proc = start_command(command)
    from skinflow.lineage.recorder import run

    return run(stage, command, proc, started_at)


if __name__ == "__main__":
    code = main()
    # The record is committed and the ledger closed; skip the interpreter's teardown of the DVC and
    # DuckDB modules, which would otherwise add a quarter of a second to every stage.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
