"""The small label spaces the evaluation tests count by hand: each test picks the rows it needs."""

from __future__ import annotations

import pandas as pd

ROWS = {
    "melanoma": ("malignant melanoma", "malignant"),
    "malignant melanoma": ("malignant melanoma", "malignant"),
    "basal cell carcinoma": ("malignant epidermal", "malignant"),
    "squamous cell carcinoma": ("malignant epidermal", "malignant"),
    "nevocytic nevus": ("benign melanocyte", "benign"),
    "seborrheic keratosis": ("benign epidermal", "benign"),
    "psoriasis": ("inflammatory", "non-neoplastic"),
    "eczema": ("inflammatory", "non-neoplastic"),
    "acne": ("inflammatory", "non-neoplastic"),
}


def taxonomy(*labels: str) -> pd.DataFrame:
    """label -> nine- and three-partition rows, in the order given (all of ROWS when none are named)."""
    return pd.DataFrame([(label, *ROWS[label]) for label in labels or ROWS],
                        columns=["label", "nine_partition_label", "three_partition_label"])
