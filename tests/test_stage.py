"""Stage entry-point plumbing: one --params/--set parser, a stage's own arguments added to it."""

from __future__ import annotations

import yaml

from skinflow.config import Section
from skinflow.stage import params_parser, section_from_args, stage_config


class Toy(Section):
    seed: int = 0
    work_dir: str = "w"


def test_stage_arguments_and_overrides_share_one_parser(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"toy": {"seed": 1, "work_dir": "a"}}))
    parser = params_parser("toy")
    parser.add_argument("--variant", required=True)
    cfg, args = stage_config("toy", Toy, ["--variant", "v", "--params", str(params), "--set", "seed=5"], parser)
    assert (cfg.seed, cfg.work_dir, args.variant) == (5, "a", "v")
    cfg, _ = stage_config("toy", Toy, ["--params", str(params)])
    assert cfg.seed == 1


def test_the_users_set_wins_over_the_stages_own_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"toy": {"seed": 1}}))
    args = params_parser("toy").parse_args(["--params", str(params), "--set", "work_dir=mine"])
    cfg = section_from_args("toy", Toy, args, ["work_dir=stage", "seed=7"])
    assert (cfg.seed, cfg.work_dir) == (7, "mine")
