"""Non-generative baselines scored next to the VLM variants (same test split, same metrics)."""
