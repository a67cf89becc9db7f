"""Stage II GRPO of the SkinFlow chain: models/stage1-s<seed> -> models/stage2-s<seed> (DVC: `stage2_rl@<seed>`)."""

from __future__ import annotations

from pipelines import rl_variant


def main(argv: list[str] | None = None) -> dict:
    return rl_variant.main(["--variant", "stage2", "--stage", "stage2", "--init", "models/stage1-s{seed}",
                            *(argv or [])])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
