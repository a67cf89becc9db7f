"""Data layer: SkinSynth generation, source adapters, image probing, splits and validation."""
