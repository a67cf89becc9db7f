"""DVC stages `stage1_rl@<seed>`, `stage2_rl@<seed>` and the ablation's RL variants `<variant>@<seed>`.

One RL run: a stage (``stage1`` / ``stage2``, params section ``stage1_rl`` / ``stage2_rl``), a start model, a seed and
the variant's overrides (e.g. ``dve.enabled=false``, a vision LoRA), so variants differ only where the ablation says
they do and seeds only in their random draws. ``{seed}`` in ``--init`` is replaced by the seed, so a chained Stage II
starts from the Stage I run of the same seed. Outputs: ``models/<variant>-s<seed>``,
``metrics/rl/<variant>-s<seed>.json`` and ``metrics/rl/<variant>-s<seed>_log.csv`` (run facts under metrics/timing/).
"""

from __future__ import annotations

from pipelines.rl_stage import run_rl_stage
from skinflow.rl.grpo import Stage1Config, Stage2Config
from skinflow.stage import params_parser, section_from_args

CONFIGS = {"stage1": ("stage1_rl", Stage1Config), "stage2": ("stage2_rl", Stage2Config)}


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def main(argv: list[str] | None = None) -> dict:
    parser = params_parser("stage1_rl | stage2_rl (by --stage)", description=__doc__)
    parser.add_argument("--variant", required=True, help="variant name (output directory models/<name>-s<seed>)")
    parser.add_argument("--stage", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--init", required=True, help="model directory to start from ('{seed}' is filled in)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (overrides the section's seed)")
    args = parser.parse_args(argv)
    section, model = CONFIGS[args.stage]
    name = run_name(args.variant, args.seed)
    # A private work dir per run: checkpoints of two runs must never resume each other.
    cfg = section_from_args(section, model, args, [f"work_dir=.cache/rl/{name}", f"seed={args.seed}"])
    return run_rl_stage(args.stage, cfg, args.init.format(seed=args.seed), f"models/{name}", f"metrics/rl/{name}")


if __name__ == "__main__":
    main()
