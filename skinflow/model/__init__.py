"""Model components."""

from skinflow.model.fdlinear import (
    ConversionReport,
    DVEConfig,
    FDLinear,
    convert_vision_tower,
    dve_param_groups,
    load_dve_model,
)

__all__ = ["ConversionReport", "DVEConfig", "FDLinear", "convert_vision_tower", "dve_param_groups", "load_dve_model"]
