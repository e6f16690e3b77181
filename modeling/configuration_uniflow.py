# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow configuration."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from .flow_matching import TIMESTEP_DISTRIBUTIONS as FLOW_TIMESTEP_DISTRIBUTIONS


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


def check_sampling_schedule(schedule: str) -> str:
    """Return `schedule` if it is `"linear"` or `"pow_<p>"` with p > 0, else raise a clear error."""
    try:
        valid = schedule == "linear" or schedule.startswith("pow_") and float(schedule[4:]) > 0
    except (AttributeError, ValueError):  # not a string, or not a number after "pow_"
        valid = False
    if not valid:
        raise ValueError(
            f"Unknown sampling schedule {schedule!r}: expected one of {SAMPLING_SCHEDULES} (e.g. 'pow_0.25')."
        )
    return schedule


class UniFlowConfig(PreTrainedConfig):
    r"""
    Configuration of a UniFlow tokenizer: an InternViT encoder (the fields up to `initializer_factor`, the LayerScale
    init), a `latent_channels`-wide latent per patch token, `num_global_blocks` transformer blocks and a patch-wise
    pixel flow head of `num_flow_head_blocks` adaLN MLP blocks, `flow_head_width` wide (the encoder's by default).

    The official release's `config.json` loads unchanged (`latent_ch`, `global_blocks_depth`, `num_decoder_layers`
    are read as `latent_channels`, `num_global_blocks`, `num_flow_head_blocks`). `encoder_config` (a config or dict
    of e.g. a CLIP, SigLIP or DINOv2 vision model) replaces the InternViT encoder; its sizes then rule.

    Args:
        num_sampling_steps (`int`, defaults to 1), sampling_schedule (`str`, defaults to `"linear"`):
            the decoder's default Euler steps and time grid (`"linear"` or `"pow_<p>"`).
        flow_samples_per_token (`int`, defaults to 1): (noise, t) draws per token in the flow loss.
        flow_timestep_distribution (`str`, defaults to `"fat_lognormal"`), flow_timestep_logit_mean,
        flow_timestep_logit_std: the training times of the flow loss (`"fat_lognormal"`, `"lognormal"`, `"uniform"`).
        distillation_mode (`str`, defaults to `"adaptive"`): layer weights w_l ∝ (l/L)·exp(β·α_l) with
            β = `distillation_beta`, `"uniform"` or `"none"`.
        freeze_encoder (`bool`, defaults to False): train only the decoder side.
        vision_feature_source (`str`, defaults to `"encoder"`): what `UniFlowVisionModel` hands to an LLM: the
            `"encoder"` features or the `"latent"` tokens.
    """

    model_type = "uniflow"
    sub_configs = {"encoder_config": AutoConfig}

    num_channels: int = 3
    image_size: int = 448
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    qkv_bias: bool = True
    qk_normalization: bool = False
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    latent_channels: int = 64
    num_global_blocks: int = 6
    global_num_attention_heads: int = 16
    global_mlp_ratio: float = 4.0
    global_layer_norm_eps: float = 1e-5
    num_flow_head_blocks: int = 12
    flow_head_width: int | None = None
    timestep_embedding_dim: int = 256
    num_sampling_steps: int | str = 1
    sampling_schedule: str = "linear"
    flow_loss_weight: float = 1.0
    flow_samples_per_token: int = 1
    flow_timestep_distribution: str = "fat_lognormal"
    flow_timestep_logit_mean: float = 0.0
    flow_timestep_logit_std: float = 1.0
    distillation_weight: float = 1.0
    distillation_mode: str = "adaptive"
    distillation_beta: float = 2.0
    freeze_encoder: bool = False
    vision_feature_source: str = "encoder"
    encoder_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs):
        kwargs = self._read_official_fields(kwargs, self.hidden_size)
        for name in ("latent_channels", "num_global_blocks", "num_flow_head_blocks"):
            setattr(self, name, kwargs.pop(name, getattr(self, name)))
        if isinstance(self.encoder_config, dict):
            encoder_config = dict(self.encoder_config)
            encoder_type = encoder_config.pop("model_type", None)
            if encoder_type is None:
                raise ValueError("`encoder_config` needs a `model_type` (e.g. 'clip_vision_model', 'dinov2').")
            self.encoder_config = AutoConfig.for_model(encoder_type, **encoder_config)
        if self.encoder_config is not None:
            needed = ("hidden_size", "num_hidden_layers", "patch_size", "image_size")
            if missing := [name for name in needed if not isinstance(getattr(self.encoder_config, name, None), int)]:
                raise ValueError(f"`encoder_config` is not a ViT-style encoder: it lacks integer {missing}.")
            for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers"):
                setattr(self, name, getattr(self.encoder_config, name, getattr(self, name)))
        if self.flow_head_width is None:
            self.flow_head_width = self.hidden_size
        self.num_sampling_steps = int(self.num_sampling_steps)
        self.sampling_schedule = check_sampling_schedule(self.sampling_schedule)
        self.flow_timestep_logit_mean = float(self.flow_timestep_logit_mean)
        self.flow_timestep_logit_std = float(self.flow_timestep_logit_std)
        super().__post_init__(**kwargs)
        self._validate()

    @staticmethod
    def _read_official_fields(kwargs: dict, hidden_size: int) -> dict:
        """Read the official release's flat config fields; refuse values this implementation can't honour."""
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
        # The official `auto_map` names its remote code; ours is set when we save.
        if not str((kwargs.get("auto_map") or {}).get("AutoConfig", "")).endswith(".UniFlowConfig"):
            kwargs.pop("auto_map", None)
        return kwargs

    def _validate(self):
        positive = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "latent_channels", "num_channels",
                    "num_attention_heads", "global_num_attention_heads", "num_sampling_steps", "flow_samples_per_token")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        choices = {
            "flow_timestep_distribution": FLOW_TIMESTEP_DISTRIBUTIONS,
            "distillation_mode": ("adaptive", "uniform", "none"),
            "vision_feature_source": ("encoder", "latent"),
            "norm_type": ("layer_norm", "rms_norm"),
        }
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"`{name}` must be one of {accepted}, got {getattr(self, name)!r}.")
        if not self.flow_timestep_logit_std > 0:
            raise ValueError(f"`flow_timestep_logit_std` must be > 0, got {self.flow_timestep_logit_std}.")
        divisors = ["num_attention_heads"] if self.encoder_config is None else []
        if self.num_global_blocks:
            divisors.append("global_num_attention_heads")
        for name in divisors:
            if self.hidden_size % getattr(self, name):
                raise ValueError(
                    f"`hidden_size` ({self.hidden_size}) must be divisible by `{name}` ({getattr(self, name)})."
                )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        """Numbers per pixel patch: channels × patch × patch."""
        return self.num_channels * self.patch_size * self.patch_size


UniFlowConfig.register_for_auto_class()

__all__ = ["UniFlowConfig", "check_sampling_schedule"]
