"""``python -m skinflow.lineage run <stage> -- <command...>``: run a stage command and record it.

Kept to the standard library until the command has finished, so the wrapper's own start-up cost
is a bare interpreter's. The audit lives in the ``skinflow lineage`` command.
"""

from __future__ import annotations

import sys

USAGE = ("usage: python -m skinflow.lineage run <stage> -- <command...>\n"
         "       (audit a metric with: skinflow lineage metrics/<file>.json:<key> [--verify] [--json])")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "run" or argv[1].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    stage, rest = argv[1], argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    from skinflow.lineage.recorder import run

    return run(stage, rest)


if __name__ == "__main__":
    sys.exit(main())
