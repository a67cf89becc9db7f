"""DVC stage `rl_variant@<name>`: one RL stage of an ablation variant (dvc.yaml foreach).

Same trainer and params section as the main chain (``stage1_rl`` / ``stage2_rl``), with the variant's own
start model and overrides (e.g. ``dve.enabled=true``, a vision LoRA), so variants differ only where the
ablation says they do. Outputs: ``models/<name>``, ``metrics/rl/<name>.json`` and ``metrics/rl/<name>_log.csv``.
"""

from __future__ import annotations

import argparse

from pipelines.rl_stage import run_stage
from skinflow.config import load_section
from skinflow.rl.grpo import Stage1Config, Stage2Config

CONFIGS = {"stage1": ("stage1_rl", Stage1Config), "stage2": ("stage2_rl", Stage2Config)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="variant name (output directory models/<name>)")
    parser.add_argument("--stage", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--init", required=True, help="model directory to start from")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    section, model = CONFIGS[args.stage]
    # A private work dir per variant: checkpoints of two variants must never resume each other.
    overrides = [f"work_dir=.cache/rl/{args.variant}", *args.overrides]
    cfg = load_section(section, model, args.params, overrides)
    return run_stage(args.stage, cfg, args.init, f"models/{args.variant}", f"metrics/rl/{args.variant}")


if __name__ == "__main__":
    main()
