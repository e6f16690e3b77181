"""transformers side of uniflow-hf (installed as `uniflow_hf.modeling`)."""

from .configuration_uniflow import UniFlowConfig
try:
    from .image_processing_uniflow import UniFlowImageProcessor
except ImportError:  # TEMP while helper writes it
    UniFlowImageProcessor = None
from .modeling_uniflow import (
    OFFICIAL_TO_HF_KEY_MAPPING,
    UniFlowModel,
    UniFlowModelOutput,
    UniFlowPreTrainedModel,
    UniFlowVisionModel,
    adaptive_distillation_loss,
    patchify,
    unpatchify,
)


__all__ = [
    "UniFlowConfig",
    "UniFlowImageProcessor",
    "UniFlowModel",
    "UniFlowModelOutput",
    "UniFlowPreTrainedModel",
    "UniFlowVisionModel",
    "adaptive_distillation_loss",
    "patchify",
    "unpatchify",
    "OFFICIAL_TO_HF_KEY_MAPPING",
]
