"""DVC stage `stage2_rl`: GRPO rewarding a ranked top-6 diagnosis, starting from Stage I."""

from __future__ import annotations

from pipelines.rl_stage import run_stage
from skinflow.rl.grpo import Stage2Config
from skinflow.stage import stage_config


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("stage2_rl", Stage2Config, argv)
    return run_stage("stage2", cfg, "models/stage1", "models/stage2")


if __name__ == "__main__":
    main()
