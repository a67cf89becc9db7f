"""Clinically grounded evaluation: label mapping, metrics with bootstrap CIs, ablation, report."""
