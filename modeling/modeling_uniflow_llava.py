# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""LLaVA with a UniFlow vision tower, as remote code: a grafted LLaVA folder (`uniflow-hf graft-llava`) holds this
file and its siblings, so `AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)` loads it
without uniflow-hf; its `model_type` stays "llava" for `LlavaForConditionalGeneration` with uniflow-hf imported."""

from transformers import AutoConfig, AutoModel, LlavaConfig, LlavaForConditionalGeneration
from transformers.configuration_utils import SubConfigSpec

from .configuration_uniflow import UniFlowConfig
from .modeling_uniflow import UniFlowVisionModel


class UniFlowLlavaConfig(LlavaConfig):
    """`LlavaConfig` whose `vision_config` is a `UniFlowConfig`."""

    sub_configs_defaults = {
        "vision_config": UniFlowConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }


class UniFlowLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` with `UniFlowVisionModel` as its vision tower."""

    config_class = UniFlowLlavaConfig


# LlavaModel builds its tower with `AutoModel.from_config(config.vision_config)`.
AutoModel.register(UniFlowConfig, UniFlowVisionModel, exist_ok=True)
UniFlowLlavaConfig.register_for_auto_class()
UniFlowLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["UniFlowLlavaConfig", "UniFlowLlavaForConditionalGeneration"]
