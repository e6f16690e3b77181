"""transformers side of uniflow-hf (installed as `uniflow_hf.modeling`)."""

from .configuration_uniflow import UniFlowConfig
from .image_processing_uniflow import UniFlowImageProcessor
from .loading_uniflow import OFFICIAL_TO_HF_KEY_MAPPING
from .modeling_uniflow import (
    UniFlowForImageClassification,
    UniFlowModel,
    UniFlowModelOutput,
    UniFlowPreTrainedModel,
    UniFlowTrainingOutput,
    UniFlowVisionModel,
    patchify,
    unpatchify,
)
from .loss_uniflow import adaptive_distillation_loss
from .modeling_uniflow_llava import UniFlowLlavaConfig, UniFlowLlavaForConditionalGeneration


__all__ = [
    "UniFlowConfig",
    "UniFlowImageProcessor",
    "UniFlowModel",
    "UniFlowForImageClassification",
    "UniFlowModelOutput",
    "UniFlowTrainingOutput",
    "UniFlowPreTrainedModel",
    "UniFlowVisionModel",
    "UniFlowLlavaConfig",
    "UniFlowLlavaForConditionalGeneration",
    "adaptive_distillation_loss",
    "patchify",
    "unpatchify",
    "OFFICIAL_TO_HF_KEY_MAPPING",
]
