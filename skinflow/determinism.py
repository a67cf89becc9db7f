"""Every random draw of a stage from its seed: one call at the start of each training/sampling entry point.

What this covers: Python's ``random``, NumPy's global stream, torch's CPU and CUDA generators, and torch's
deterministic-algorithm switch (with the cuBLAS workspace setting it needs on CUDA). What it cannot cover from inside
the process: Python's string-hash order (``PYTHONHASHSEED`` must be set before the interpreter starts; the stage
wrapper ``python -m skinflow.lineage run`` sets it to 0 for every stage command).

Bit-identity holds for the same code, inputs, seed, library versions and machine kind. CPU kernels may pick
different vectorised paths on other CPUs (AVX-512 vs AVX2), which changes float rounding: results are then
close but not byte-identical (see the README's reproducibility section).
"""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed every global generator a stage may draw from and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device
    # warn_only: an op without a deterministic kernel warns instead of failing a long run; none is used on CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)
    # That switch also fills every new tensor's memory with NaN (a debugging aid, not needed for determinism of
    # code that never reads uninitialised memory); measured on the warm-up SFT it cost 2x per step on CPU.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
