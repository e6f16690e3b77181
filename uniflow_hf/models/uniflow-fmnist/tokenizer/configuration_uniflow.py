# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow configuration."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.utils import logging

from .flow_matching import TIMESTEP_DISTRIBUTIONS as FLOW_TIMESTEP_DISTRIBUTIONS


logger = logging.get_logger(__name__)

# Official config fields that we read under clearer names.
_OFFICIAL_ALIASES = {
    "latent_ch": "latent_channels",
    "global_blocks_depth": "num_global_blocks",
    "num_decoder_layers": "num_flow_head_blocks",
}
# Official fields that carry no information for this implementation (or only one supported value).
_OFFICIAL_FIXED = {
    "use_chal_proj": True,  # the latent bottleneck is always there
    "use_global_blocks": True,
    "decoder_type": "mlp",
    "use_cfg": False,  # the flow head of the release is never guided
}
_OFFICIAL_IGNORED = ("use_flash_attn", "llm_hidden_size", "use_disp_loss", "vit_hidden_size")

SAMPLING_SCHEDULES = ("linear", "pow_<p>")
DISTILLATION_MODES = ("adaptive", "uniform", "none")
VISION_FEATURE_SOURCES = ("encoder", "latent")


def check_sampling_schedule(schedule: str) -> str:
    """Return `schedule` if it is `"linear"` or `"pow_<p>"` with p > 0, else raise a clear error."""
    if schedule == "linear":
        return schedule
    if isinstance(schedule, str) and schedule.startswith("pow_"):
        try:
            power = float(schedule[4:])
        except ValueError:
            power = 0.0
        if power > 0:
            return schedule
    raise ValueError(f"Unknown sampling schedule {schedule!r}: expected one of {SAMPLING_SCHEDULES} (e.g. 'pow_0.25').")


class UniFlowConfig(PreTrainedConfig):
    r"""
    Configuration of a UniFlow tokenizer: a ViT encoder, a `latent_channels`-wide latent per patch token, a few
    global transformer blocks and a patch-wise pixel flow head.

    The official release's `config.json` loads unchanged: its flat fields describe the InternViT encoder, and
    `latent_ch`, `global_blocks_depth`, `num_decoder_layers`, `num_sampling_steps` (a string there) are read as
    `latent_channels`, `num_global_blocks`, `num_flow_head_blocks` and `num_sampling_steps`. Its `auto_map` (to the
    official remote code) is dropped; folders saved from this class get their own (`register_for_auto_class`), which
    points at the code saved beside the weights.

    Any transformers vision encoder can replace the built-in InternViT encoder through `encoder_config` (a config or
    dict of e.g. CLIP, SigLIP or DINOv2 vision models); `hidden_size`, `image_size` and `patch_size` then follow it.

    Args:
        num_channels, image_size, patch_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
        qkv_bias, qk_normalization, hidden_act, norm_type, layer_norm_eps, dropout, attention_dropout,
        drop_path_rate, initializer_range, initializer_factor:
            The InternViT-style encoder (as in the official release). `initializer_factor` is the LayerScale init.
        latent_channels (`int`, defaults to 64): channels of the latent of each patch token.
        num_global_blocks (`int`, defaults to 6): transformer blocks that mix the un-projected latents.
        global_num_attention_heads (`int`, defaults to 16): heads of the global blocks (fixed to 16 in the release).
        global_mlp_ratio (`float`, defaults to 4.0), global_layer_norm_eps (`float`, defaults to 1e-5).
        num_flow_head_blocks (`int`, defaults to 12): adaLN residual MLP blocks of the flow head.
        flow_head_width (`int`, *optional*): width of the flow head; the encoder width by default (the release).
        timestep_embedding_dim (`int`, defaults to 256): sinusoidal frequency channels of the timestep embedding.
        num_sampling_steps (`int`, defaults to 1): default number of Euler steps of the decoder.
        sampling_schedule (`str`, defaults to `"linear"`): default time grid, `"linear"` or `"pow_<p>"`.
        flow_loss_weight, distillation_weight (`float`, default 1.0): weights of the two training losses.
        flow_samples_per_token (`int`, defaults to 1): (noise, t) draws per token in the flow loss; more gives the
            decoder more signal per encoder pass (MAR's "diffusion batch multiplier").
        flow_timestep_distribution (`str`, defaults to `"fat_lognormal"`): training times of the flow loss, as
            `UniFlowFlowMatchScheduler`'s `training_timestep_distribution`: `"fat_lognormal"` (the release),
            `"lognormal"` or `"uniform"`.
        flow_timestep_logit_mean, flow_timestep_logit_std (`float`, defaults 0.0 and 1.0): the logit-normal's
            parameters. A negative mean puts more training on the times near the noise (t = 0), where a 1-step
            decoder does all its work.
        distillation_mode (`str`, defaults to `"adaptive"`): `"adaptive"` (w_l ∝ (l/L)·exp(β·α_l)), `"uniform"` or
            `"none"`.
        distillation_beta (`float`, defaults to 2.0): β of the adaptive layer weights.
        freeze_encoder (`bool`, defaults to False): train only the decoder side (an ablation of the paper).
        vision_feature_source (`str`, defaults to `"encoder"`): what `UniFlowVisionModel` hands to an LLM:
            `"encoder"` features (the paper) or the `"latent"` tokens.
        encoder_config (`dict` or `PreTrainedConfig`, *optional*): a foreign vision encoder to use instead.
    """

    model_type = "uniflow"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        num_channels: int = 3,
        image_size: int = 448,
        patch_size: int = 14,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        qkv_bias: bool = True,
        qk_normalization: bool = False,
        hidden_act: str = "gelu",
        norm_type: str = "layer_norm",
        layer_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 1.0,
        latent_channels: int = 64,
        num_global_blocks: int = 6,
        global_num_attention_heads: int = 16,
        global_mlp_ratio: float = 4.0,
        global_layer_norm_eps: float = 1e-5,
        num_flow_head_blocks: int = 12,
        flow_head_width: int | None = None,
        timestep_embedding_dim: int = 256,
        num_sampling_steps: int | str = 1,
        sampling_schedule: str = "linear",
        flow_loss_weight: float = 1.0,
        flow_samples_per_token: int = 1,
        flow_timestep_distribution: str = "fat_lognormal",
        flow_timestep_logit_mean: float = 0.0,
        flow_timestep_logit_std: float = 1.0,
        distillation_weight: float = 1.0,
        distillation_mode: str = "adaptive",
        distillation_beta: float = 2.0,
        freeze_encoder: bool = False,
        vision_feature_source: str = "encoder",
        encoder_config: dict | PreTrainedConfig | None = None,
        **kwargs: Any,
    ):
        kwargs = self._read_official_fields(kwargs, hidden_size)
        latent_channels = kwargs.pop("latent_channels", latent_channels)
        num_global_blocks = kwargs.pop("num_global_blocks", num_global_blocks)
        num_flow_head_blocks = kwargs.pop("num_flow_head_blocks", num_flow_head_blocks)

        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            encoder_type = encoder_config.pop("model_type", None)
            if encoder_type is None:
                raise ValueError("`encoder_config` needs a `model_type` (e.g. 'clip_vision_model', 'dinov2').")
            encoder_config = AutoConfig.for_model(encoder_type, **encoder_config)
        if encoder_config is not None:
            hidden_size = encoder_config.hidden_size
            image_size = getattr(encoder_config, "image_size", image_size)
            patch_size = getattr(encoder_config, "patch_size", patch_size)
            num_hidden_layers = encoder_config.num_hidden_layers
            num_channels = getattr(encoder_config, "num_channels", num_channels)
        self.encoder_config = encoder_config

        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.qkv_bias = qkv_bias
        self.qk_normalization = qk_normalization
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor
        self.latent_channels = latent_channels
        self.num_global_blocks = num_global_blocks
        self.global_num_attention_heads = global_num_attention_heads
        self.global_mlp_ratio = global_mlp_ratio
        self.global_layer_norm_eps = global_layer_norm_eps
        self.num_flow_head_blocks = num_flow_head_blocks
        self.flow_head_width = flow_head_width if flow_head_width is not None else hidden_size
        self.timestep_embedding_dim = timestep_embedding_dim
        self.num_sampling_steps = int(num_sampling_steps)
        self.sampling_schedule = check_sampling_schedule(sampling_schedule)
        self.flow_loss_weight = flow_loss_weight
        self.flow_samples_per_token = flow_samples_per_token
        self.flow_timestep_distribution = flow_timestep_distribution
        self.flow_timestep_logit_mean = float(flow_timestep_logit_mean)
        self.flow_timestep_logit_std = float(flow_timestep_logit_std)
        self.distillation_weight = distillation_weight
        self.distillation_mode = distillation_mode
        self.distillation_beta = distillation_beta
        self.freeze_encoder = freeze_encoder
        self.vision_feature_source = vision_feature_source
        super().__init__(**kwargs)
        self._validate()

    @staticmethod
    def _read_official_fields(kwargs: dict, hidden_size: int) -> dict:
        """Translate the official release's flat config fields; refuse values this implementation can't honour."""
        for official, ours in _OFFICIAL_ALIASES.items():
            if official in kwargs:
                kwargs[ours] = kwargs.pop(official)
        for name, supported in _OFFICIAL_FIXED.items():
            value = kwargs.pop(name, supported)
            if value != supported:
                raise ValueError(f"Official config field `{name}={value!r}` is not supported (only {supported!r}).")
        vit_hidden_size = kwargs.get("vit_hidden_size", hidden_size)
        if vit_hidden_size != hidden_size:
            raise ValueError(
                f"`vit_hidden_size` ({vit_hidden_size}) must equal `hidden_size` ({hidden_size}): the official decoder "
                "consumes the encoder's features directly."
            )
        for name in _OFFICIAL_IGNORED:
            kwargs.pop(name, None)
        if not str((kwargs.get("auto_map") or {}).get("AutoConfig", "")).endswith(".UniFlowConfig"):
            kwargs.pop("auto_map", None)  # the official release's remote code, not this one
        # The official `architectures` names the remote-code class; ours are set when we save.
        if kwargs.get("architectures") == ["UniFlowVisionModel"] and "transformers_version" in kwargs:
            kwargs.pop("architectures")
        return kwargs

    def _validate(self):
        positive = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "latent_channels", "num_channels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.flow_samples_per_token < 1:
            raise ValueError(f"`flow_samples_per_token` must be >= 1, got {self.flow_samples_per_token}.")
        if self.flow_timestep_distribution not in FLOW_TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                f"`flow_timestep_distribution` must be one of {FLOW_TIMESTEP_DISTRIBUTIONS}, got "
                f"{self.flow_timestep_distribution!r}."
            )
        if not self.flow_timestep_logit_std > 0:
            raise ValueError(f"`flow_timestep_logit_std` must be > 0, got {self.flow_timestep_logit_std}.")
        if self.num_sampling_steps < 1:
            raise ValueError(f"`num_sampling_steps` must be >= 1, got {self.num_sampling_steps}.")
        for name in ("num_attention_heads", "global_num_attention_heads"):  # numbers of heads divide hidden_size
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.encoder_config is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                    f"({self.num_attention_heads})."
                )
            if self.norm_type not in ("layer_norm", "rms_norm"):
                raise ValueError(f"`norm_type` must be 'layer_norm' or 'rms_norm', got {self.norm_type!r}.")
        if self.num_global_blocks and self.hidden_size % self.global_num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `global_num_attention_heads` "
                f"({self.global_num_attention_heads})."
            )
        if self.distillation_mode not in DISTILLATION_MODES:
            raise ValueError(f"`distillation_mode` must be one of {DISTILLATION_MODES}, got {self.distillation_mode!r}.")
        if self.vision_feature_source not in VISION_FEATURE_SOURCES:
            raise ValueError(
                f"`vision_feature_source` must be one of {VISION_FEATURE_SOURCES}, got {self.vision_feature_source!r}."
            )

    @property
    def grid_size(self) -> int:
        """Patch tokens per side at the native resolution."""
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        """Numbers per pixel patch: channels × patch × patch (what the flow head generates per token)."""
        return self.num_channels * self.patch_size * self.patch_size


UniFlowConfig.register_for_auto_class()

__all__ = ["UniFlowConfig", "check_sampling_schedule"]
