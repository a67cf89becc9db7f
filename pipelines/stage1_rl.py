"""Stage I GRPO of the SkinFlow chain (DVE on): models/warmup -> models/stage1-s<seed> (DVC: `stage1_rl@<seed>`)."""

from __future__ import annotations

from pipelines import rl_variant


def main(argv: list[str] | None = None) -> dict:
    return rl_variant.main(["--variant", "stage1", "--stage", "stage1", "--init", "models/warmup", *(argv or [])])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
