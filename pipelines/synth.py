"""DVC stage `synth`: generate the embedded SkinSynth dataset in Fitzpatrick17k's file format."""

from __future__ import annotations

import json

from skinflow.data.skinsynth import SynthConfig, generate
from skinflow.io import atomic_dir
from skinflow.stage import show_progress, stage_config

OUT_DIR = "data/skinsynth"


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = stage_config("synth", SynthConfig, argv)
    if not cfg.enabled:  # real data: DVC still needs the declared output, so it is a folder with a note
        with atomic_dir(OUT_DIR) as tmp:
            (tmp / "NOT_USED.txt").write_text("synth.enabled is false: ingest reads real data, nothing rendered\n")
        print(json.dumps({"enabled": False, "n_images": 0}))
        return {"enabled": False, "n_images": 0}
    summary = generate(OUT_DIR, cfg, progress=show_progress())
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, default=str))
    return summary


if __name__ == "__main__":
    main()
