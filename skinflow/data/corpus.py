"""A small captioned SkinSynth corpus in one call: generate -> ingest -> validate -> captions.

The same real stage code as the DVC pipeline, for tests and benchmarks that need a dataset on disk
(``manifest.parquet``, ``captions.parquet``, ``taxonomy.csv`` under ``root``) without running DVC.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def captioned_skinsynth(root: str | Path, synth=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write and return (manifest, captions, taxonomy); ``synth`` defaults to ``SynthConfig.tiny()``."""
    from skinflow.captions.captioning import CaptionStageConfig, run_captions
    from skinflow.data.ingest import IngestConfig, ingest
    from skinflow.data.skinsynth import SynthConfig, generate
    from skinflow.data.validation import ValidateConfig, validate

    root = Path(root)
    generate(root / "synth", synth or SynthConfig.tiny())
    rows, taxonomy, _ = ingest(IngestConfig(csv=str(root / "synth/fitzpatrick17k.csv"),
                                            image_root=str(root / "synth/images"),
                                            taxonomy=str(root / "synth/taxonomy.csv"), workers=1))
    manifest, _, _ = validate(rows, taxonomy, ValidateConfig(min_side=16))
    captions, _, _ = run_captions(manifest, CaptionStageConfig(
        attributes=str(root / "synth/attributes.parquet"), progress_dir=str(root / "progress")))
    manifest.to_parquet(root / "manifest.parquet")
    captions.to_parquet(root / "captions.parquet")
    taxonomy.to_csv(root / "taxonomy.csv", index=False)
    return manifest, captions, taxonomy
