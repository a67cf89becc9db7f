"""DVC stage `base_model`: the tiny local Qwen2.5-VL (or a copy of a local pretrained directory)."""

from __future__ import annotations

import pandas as pd

from skinflow.io import write_json
from skinflow.model.base import BaseModelConfig, prepare_base
from skinflow.stage import stage_config

OUT_DIR = "models/base"
OUT_INFO = "metrics/base_model.json"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("base_model", BaseModelConfig, argv)
    labels = sorted(pd.read_csv(cfg.corpus_taxonomy)["label"])
    info = prepare_base(OUT_DIR, cfg, labels)
    write_json(OUT_INFO, info)
    print(f"base model ({info['kind']}) written to {OUT_DIR}: {info}")
    return info


if __name__ == "__main__":
    main()
