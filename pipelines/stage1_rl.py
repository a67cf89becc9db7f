"""DVC stage `stage1_rl`: GRPO rewarding schema descriptions of the visible signs."""

from __future__ import annotations

from pipelines.rl_stage import run_stage
from skinflow.rl.grpo import Stage1Config
from skinflow.stage import stage_config


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("stage1_rl", Stage1Config, argv)
    return run_stage("stage1", cfg, "models/warmup", "models/stage1")


if __name__ == "__main__":
    main()
