"""Shared fixtures for the caption tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def attrs_row() -> dict:
    """A valid SkinSynth attributes row (schema field names, sets as lists)."""
    return {
        "image_quality": "good", "body_site": "face", "primary_morphology": ["plaque", "papule"],
        "secondary_features": ["scale"], "colour": ["erythematous"], "border_definition": "well_defined",
        "border_regularity": "irregular", "configuration": ["annular"], "lesion_count": "few",
        "distribution": "localised", "size_class": "10_to_30mm", "fitzpatrick_type": "IV",
    }


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "lesion.png"
    Image.new("RGB", (40, 30), (200, 60, 50)).save(path)
    return path
