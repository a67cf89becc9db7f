"""Running DVC stages from an orchestrator: stage order from dvc.yaml, one stage per call."""
