# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch UniFlow: a ViT encoder adapted by layer-wise adaptive self-distillation, a latent bottleneck, global
transformer blocks and a patch-wise pixel flow head (Yue et al., "UniFlow", ICLR 2026, arXiv 2510.10575)."""

from __future__ import annotations

import copy
import functools
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from . import flow_matching
from .configuration_uniflow import UniFlowConfig
from .flow_matching import NUM_TRAIN_TIMESTEPS  # named so: diffusers' remote-code loader copies `from .x import` files
from .loss_uniflow import adaptive_distillation_loss


logger = logging.get_logger(__name__)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·p·p); tokens row-major over the grid, each patch flattened as (channel, row, col)."""
    batch, channels, height, width = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(batch, channels, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, C·p·p) -> (B, C, H, W), the inverse of `patchify` for a `grid` of (rows, cols) tokens."""
    batch, _, dim = patches.shape
    p, (rows, cols) = patch_size, grid
    channels = dim // (p * p)
    x = patches.reshape(batch, rows, cols, channels, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * p, cols * p)


def sincos_position_embedding(embed_dim: int, grid_size: int) -> torch.Tensor:
    """2-D sin-cos position embedding (MAE style), (grid_size², embed_dim): the init of the decoder-side ones."""
    coords = torch.arange(grid_size, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float32) / (embed_dim / 4))

    def embed(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([embed(grid_w), embed(grid_h)], dim=1)


def resize_position_embedding(position_embedding: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a (1, S·S, C) square grid of position embeddings to (1, rows·cols, C), as the release
    does for its encoder; computed in float32 and cast back."""
    _, num_positions, dim = position_embedding.shape
    side = math.isqrt(num_positions)
    if tuple(grid) == (side, side):
        return position_embedding  # bicubic resizing to the same grid is exactly the identity: skip it
    pos = position_embedding.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
    return pos.reshape(1, dim, grid[0] * grid[1]).permute(0, 2, 1).to(position_embedding.dtype)


class UniFlowRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


NORM2FN = {"layer_norm": nn.LayerNorm, "rms_norm": UniFlowRMSNorm}


class UniFlowVisionEmbeddings(nn.Module):
    """CLS token + patch embedding + position embedding, bicubically resized to the input's grid."""

    def __init__(self, config: UniFlowConfig):
        super().__init__()
        dim = config.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, dim))
        self.patch_embedding = nn.Conv2d(config.num_channels, dim, config.patch_size, config.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, config.grid_size**2 + 1, dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))
        batch_size, _, rows, cols = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch_size, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        patch_positions = resize_position_embedding(self.position_embedding[:, 1:], (rows, cols))
        position_embedding = torch.cat([self.position_embedding[:, :1], patch_positions], dim=1)
        return embeddings + position_embedding.to(target_dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class UniFlowAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and optional qk RMS-normalisation (InternViT, and
    timm's `Block` in the global blocks)."""

    def __init__(self, config: UniFlowConfig, num_heads: int, qkv_bias: bool, qk_normalization: bool, dropout: float):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = num_heads
        self.head_dim = self.embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_causal = False
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=qkv_bias)
        self.qk_normalization = qk_normalization
        if qk_normalization:
            self.q_norm = UniFlowRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = UniFlowRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        batch_size, seq_len, _ = hidden_states.shape
        query, key, value = self.qkv(hidden_states).chunk(3, dim=-1)
        if self.qk_normalization:
            query, key = self.q_norm(query), self.k_norm(key)
        shape = (batch_size, seq_len, self.num_heads, self.head_dim)
        query, key, value = (x.reshape(shape).transpose(1, 2) for x in (query, key, value))

        implementation = self.config._attn_implementation
        if kwargs.pop("output_attentions", False) and implementation != "eager":
            # SDPA and flash return no weights (transformers only warns): eager for this call, as before v5.
            logger.warning_once(
                f"`output_attentions=True` needs the attention weights, which `{implementation}` attention does not "
                "return: falling back to eager attention for these calls. Load the model with "
                "`attn_implementation='eager'` to silence this."
            )
            implementation = "eager"
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            is_causal=False,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, self.embed_dim)
        return self.proj(attn_output), attn_weights


class UniFlowMLP(nn.Module):
    """Linear -> activation -> Linear: the layers' MLPs and the latent bottleneck (`latent_proj`, `latent_unproj`)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, hidden_act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (identity at inference)."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class UniFlowEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm InternViT layer with LayerScale (`ls1`, `ls2`) and stochastic depth."""

    def __init__(self, config: UniFlowConfig, drop_path_rate: float = 0.0):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = NORM2FN[config.norm_type](dim, eps=config.layer_norm_eps)
        self.attn = UniFlowAttention(
            config, config.num_attention_heads, config.qkv_bias, config.qk_normalization, config.attention_dropout
        )
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(dim))
        self.norm2 = NORM2FN[config.norm_type](dim, eps=config.layer_norm_eps)
        self.mlp = UniFlowMLP(dim, config.intermediate_size, dim, config.hidden_act)
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(dim))
        self.dropout = nn.Dropout(config.dropout)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn_output, _ = self.attn(self.norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + drop_path(self.dropout(attn_output) * self.ls1, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.norm2(hidden_states))
        return hidden_states + drop_path(mlp_output * self.ls2, self.drop_path_rate, self.training)


class UniFlowEncoder(nn.Module):
    def __init__(self, config: UniFlowConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([UniFlowEncoderLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return hidden_states


class UniFlowGlobalBlock(GradientCheckpointingLayer):
    """A plain pre-norm ViT block (timm's `Block` in the release) over the un-projected latent tokens."""

    def __init__(self, config: UniFlowConfig):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=config.global_layer_norm_eps)
        self.attn = UniFlowAttention(config, config.global_num_attention_heads, True, False, 0.0)
        self.norm2 = nn.LayerNorm(dim, eps=config.global_layer_norm_eps)
        self.mlp = UniFlowMLP(dim, int(dim * config.global_mlp_ratio), dim)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), **kwargs)[0]
        return hidden_states + self.mlp(self.norm2(hidden_states))


class UniFlowTimestepEmbedding(nn.Module):
    """[cos, sin] frequencies of the network timestep (1000·t), then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.linear_1 = nn.Linear(frequency_dim, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        args = timesteps.float()[:, None] * torch.exp(-math.log(self.max_period) * exponent)[None]
        frequencies = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_dim % 2:
            frequencies = F.pad(frequencies, (0, 1))
        return self.linear_2(self.act(self.linear_1(frequencies.to(self.linear_1.weight.dtype))))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class UniFlowFlowHeadBlock(GradientCheckpointingLayer):
    """Residual MLP block with adaLN-Zero modulation by the (timestep + condition) embedding."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, width)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(width, width)
        self.modulation = nn.Linear(width, 3 * width)

    def forward(self, hidden_states: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(embedding)).chunk(3, dim=-1)
        h = self.fc2(self.act(self.fc1(modulate(self.norm(hidden_states), shift, scale))))
        return hidden_states + gate * h


class UniFlowFlowHeadFinalLayer(nn.Module):
    def __init__(self, width: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_features)

    def forward(self, hidden_states: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(embedding)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(hidden_states), shift, scale))


class UniFlowFlowHead(nn.Module):
    """The patch-wise pixel flow decoder: the velocity (data - noise) of one pixel patch per row, from its noisy
    `sample`, the network `timestep` (1000·t, float32: bf16 would round it) and its token's `condition`."""

    def __init__(self, config: UniFlowConfig):
        super().__init__()
        width = config.flow_head_width
        self.time_embed = UniFlowTimestepEmbedding(width, config.timestep_embedding_dim)
        self.cond_embed = nn.Linear(config.hidden_size, width)
        self.input_proj = nn.Linear(config.patch_dim, width)
        self.res_blocks = nn.ModuleList([UniFlowFlowHeadBlock(width) for _ in range(config.num_flow_head_blocks)])
        self.final_layer = UniFlowFlowHeadFinalLayer(width, config.patch_dim)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if timestep.ndim == 0:  # one time for all rows (sampling): embed it once, broadcast over the rows
            timestep = timestep[None]
        hidden_states = self.input_proj(sample)
        embedding = self.time_embed(timestep) + self.cond_embed(condition)
        for block in self.res_blocks:
            hidden_states = block(hidden_states, embedding)
        return self.final_layer(hidden_states, embedding)


# ----------------------------------------------------------------------------------------------------- outputs
@dataclass
class UniFlowModelOutput(ModelOutput):
    """
    Output of `UniFlowModel.forward`: the losses when it computes them (`return_loss`), else the reconstruction.

    Args:
        loss: `flow_loss_weight · flow_loss + distillation_weight · distillation_loss`.
        flow_loss: MSE of the predicted velocity of the patch flow.
        distillation_loss: layer-wise adaptive self-distillation loss (None without a teacher).
        distillation_weights: (L,) the layer weights w_l used.
        distillation_cosine: (L,) mean token cosine between student and teacher per layer.
        latents: (B, N, latent_channels) the latent tokens.
        reconstruction: (B, C, H, W) the decoded image.
        encoder_hidden_states: the encoder's hidden states (embeddings first) when asked.
    """

    loss: torch.FloatTensor | None = None
    flow_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    distillation_weights: torch.FloatTensor | None = None
    distillation_cosine: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


UniFlowTrainingOutput = UniFlowModelOutput  # the training output's former name


class UniFlowPreTrainedModel(PreTrainedModel):
    config: UniFlowConfig
    config_class = UniFlowConfig
    base_model_prefix = "vision_model"
    _input_embed_layer = "patch_embedding"  # transformers' `get_input_embeddings` finds it (in the tower)
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["UniFlowVisionEmbeddings", "UniFlowEncoderLayer", "UniFlowGlobalBlock", "UniFlowFlowHead"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        """As the official code: the flow head's adaLN and output layers at zero, sin-cos position embeddings."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, UniFlowRMSNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        if isinstance(module, UniFlowVisionEmbeddings):
            init.trunc_normal_(module.class_embedding, std=std)
            init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, UniFlowEncoderLayer):
            init.constant_(module.ls1, self.config.initializer_factor)
            init.constant_(module.ls2, self.config.initializer_factor)
        elif isinstance(module, UniFlowModel):
            # Here, not on the flow-head modules: transformers skips modules without parameters of their own.
            sincos = sincos_position_embedding(self.config.hidden_size, self.config.grid_size)[None]
            init.copy_(module.global_position_embedding, sincos)
            init.copy_(module.decoder_position_embedding, sincos)
            head = module.flow_head
            for linear in (head.time_embed.linear_1, head.time_embed.linear_2):
                init.normal_(linear.weight, std=0.02)
            zero_init = [block.modulation for block in head.res_blocks]
            for linear in zero_init + [head.final_layer.modulation, head.final_layer.linear]:
                init.zeros_(linear.weight)
                init.zeros_(linear.bias)


def _check_pixel_values(pixel_values: torch.Tensor, config: UniFlowConfig) -> None:
    """Refuse inputs the model cannot take; any floating dtype is cast to the model's by the patch embedding."""
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        got = pixel_values.dtype if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise TypeError(
            f"`pixel_values` must be a floating-point torch.Tensor, got {got}; preprocess images with "
            "UniFlowImageProcessor."
        )
    shape = tuple(pixel_values.shape)
    if len(shape) != 4:
        raise ValueError(f"`pixel_values` must have shape (batch, channels, height, width), got {shape}.")
    batch_size, channels, height, width = shape
    if batch_size == 0:
        raise ValueError(f"`pixel_values` is an empty batch (shape {shape}).")
    if channels != config.num_channels:
        raise ValueError(f"`pixel_values` has {channels} channels but the model expects {config.num_channels}.")
    p = config.patch_size
    if height % p or width % p or not height or not width:
        raise ValueError(
            f"Image size {height}x{width} is not a positive multiple of the patch size {p}; resize or crop it (e.g. "
            f"to {max(p, height // p * p)}x{max(p, width // p * p)})."
        )
    # One reduction, the exact check only when it is not finite; skipped while compiling (a data-dependent branch).
    if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values.sum()):
        if not torch.isfinite(pixel_values).all():
            raise ValueError("`pixel_values` contains NaN or infinite values; the model needs finite inputs.")


def apply_forward_hooks(method):
    """Run a module's method other than `forward` (`encode`, `decode`) under the hooks wrappers attach to `forward`,
    as diffusers' `apply_forward_hook`: Accelerate's offload hook (`device_map`, `cpu_offload`, the pipelines' model
    and sequential offload) and FSDP2 (the method registers itself with `register_fsdp_forward_method` on its first
    call on a sharded module). The method must not call another decorated method or `forward` of the module."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if name not in vars(self) and _is_fsdp_module(self):
            from torch.distributed.fsdp import register_fsdp_forward_method

            register_fsdp_forward_method(self, name)  # sets `self.<name>`: FSDP's hooks around this wrapper
            return getattr(self, name)(*args, **kwargs)
        hook = getattr(self, "_hf_hook", None)
        if hook is None:
            return method(self, *args, **kwargs)
        args, kwargs = hook.pre_forward(self, *args, **kwargs)
        return hook.post_forward(self, method(self, *args, **kwargs))

    return wrapper


def _is_fsdp_module(module: nn.Module) -> bool:
    """Whether FSDP2's `fully_shard` was applied to `module` itself."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _resolve_hidden_state_indices(forward):
    """Resolve `output_hidden_states` given as indices (as LLaVA passes `vision_feature_layer`) to non-negative ones
    before `capture_outputs` reads them: it counts neither the latent head's extra state nor index 0 as a selection."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        selection = kwargs.get("output_hidden_states")
        if selection is None or isinstance(selection, bool):
            return forward(self, *args, **kwargs)
        num_states = self.config.num_hidden_layers + 1 + int(self.has_latent_head)
        try:
            indices = [operator.index(i) for i in (selection if isinstance(selection, (list, tuple)) else [selection])]
        except TypeError:  # not an integer
            indices = []
        if not indices or any(not -num_states <= index < num_states for index in indices):
            raise ValueError(
                f"`output_hidden_states` must be a bool, or a hidden state index or a non-empty list of them in "
                f"[-{num_states}, {num_states - 1}] (this model returns {num_states} hidden states), got {selection!r}."
            )
        kwargs["output_hidden_states"] = sorted({index % num_states for index in indices})
        return forward(self, *args, **kwargs)

    return wrapper


class UniFlowVisionModel(UniFlowPreTrainedModel):
    """The UniFlow encoder tower: CLS + patch tokens through the InternViT layers; LLaVA's vision tower
    (`LlavaConfig(vision_config=UniFlowConfig(...))`). Loads from its own, `UniFlowModel` and official folders.

    With `config.vision_feature_source="latent"` it also holds `latent_proj` and `latent_unproj` (as in
    `UniFlowModel`) and appends one hidden state: the latents re-embedded to `hidden_size`,
    `latent_unproj(latent_proj(h_L))` over every token, so LLaVA's `vision_feature_layer=-1` feeds the LLM what the
    latent holds. `encode()` returns the raw latents, as `UniFlowModel.encode`.
    """

    # Decoder-side weights of a UniFlowModel / official folder (our and official names): never part of the tower.
    _decoder_keys = r"^(global_|decoder_|flow_head\.)"
    # The latent bottleneck (official and our names): loaded when the tower has its latent head, ignored otherwise.
    _latent_head_keys = r"^(chal_proj|chal_unproj|latent_proj|latent_unproj)\."
    _keys_to_ignore_on_load_unexpected = [_decoder_keys, _latent_head_keys]
    # The embeddings, each layer's output and, with the latent head, `latent_unproj`'s output. Their number depends on
    # the latent head: `_resolve_hidden_state_indices` resolves selected indices (no `num_hidden_layers_key` field).
    _can_record_outputs = {
        "hidden_states": OutputRecorder(
            UniFlowEncoderLayer, class_name="latent_unproj", num_hidden_layers_key="num_recorded_hidden_states"
        ),
        "attentions": UniFlowAttention,
    }

    def __init__(self, config: UniFlowConfig, add_latent_head: bool | None = None):
        """`add_latent_head` defaults to `config.vision_feature_source == "latent"`."""
        super().__init__(config)
        if config.encoder_config is not None:
            raise ValueError(
                "UniFlowVisionModel is UniFlow's own encoder; this config uses a foreign encoder "
                f"({config.encoder_config.model_type}). Use UniFlowModel, or that encoder's own class."
            )
        self.embeddings = UniFlowVisionEmbeddings(config)
        self.encoder = UniFlowEncoder(config)
        if add_latent_head is None:
            add_latent_head = config.vision_feature_source == "latent"
        if add_latent_head:
            width = config.hidden_size
            self.latent_proj = UniFlowMLP(width, width, config.latent_channels)
            self.latent_unproj = UniFlowMLP(config.latent_channels, width, width)
            self._keys_to_ignore_on_load_unexpected = [self._decoder_keys]
        self.post_init()

    @property
    def has_latent_head(self) -> bool:
        return getattr(self, "latent_proj", None) is not None

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @_resolve_hidden_state_indices
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        """`last_hidden_state` (B, 1 + N, C), CLS first; `pooler_output` the CLS token. `output_hidden_states` may
        select states by index (an int or a list, as LLaVA's `vision_feature_layer`): the tuple keeps its length, with
        `None` at the indices not asked for. `output_attentions` falls back to eager attention for SDPA and flash."""
        _check_pixel_values(pixel_values, self.config)
        kwargs.pop("image_sizes", None)
        output_hidden_states = kwargs.pop("output_hidden_states", self.config.output_hidden_states)
        kwargs["output_attentions"] = kwargs.get("output_attentions", self.config.output_attentions)
        last_hidden_state = self.encoder(self.embeddings(pixel_values), **kwargs)
        if output_hidden_states and self.has_latent_head:
            self.latent_unproj(self.latent_proj(last_hidden_state))
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state[:, 0])

    @apply_forward_hooks
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> latents (B, H/p · W/p, latent_channels), as `UniFlowModel.encode` (latent head only)."""
        if not self.has_latent_head:
            raise ValueError(
                "This UniFlowVisionModel has no latent head: load or build it with `vision_feature_source='latent'`."
            )
        _check_pixel_values(pixel_values, self.config)
        last_hidden_state = self.encoder(self.embeddings(pixel_values))
        return self.latent_proj(last_hidden_state[:, 1:])


class UniFlowModel(UniFlowPreTrainedModel):
    """The UniFlow tokenizer: `encode` images to (B, N, latent_channels) latents, `decode` latents to images with
    the patch flow head, `reconstruct` both; `forward` in training returns the flow and distillation losses.
    `encode` and `decode` run under the hooks wrappers attach to `forward` (`apply_forward_hooks`)."""

    # `enable_distillation` adds the teacher's keys (matched exactly), so no save writes the teacher.
    _keys_to_ignore_on_save = None
    _keys_to_ignore_on_load_missing = [r"^distillation_teacher\."]

    def __init__(self, config: UniFlowConfig):
        super().__init__(config)
        if config.encoder_config is None:
            self.vision_model = UniFlowVisionModel(config, add_latent_head=False)
            # The tower's load policy (ignore decoder weights) is its own: `post_init` would merge it into ours.
            self.vision_model._keys_to_ignore_on_load_unexpected = None
        else:
            self.vision_model = AutoModel.from_config(config.encoder_config)
        width = config.hidden_size
        self.latent_proj = UniFlowMLP(width, width, config.latent_channels)
        self.latent_unproj = UniFlowMLP(config.latent_channels, width, width)
        self.global_position_embedding = nn.Parameter(torch.zeros(1, config.grid_size**2, width))
        self.global_blocks = nn.ModuleList([UniFlowGlobalBlock(config) for _ in range(config.num_global_blocks)])
        self.decoder_position_embedding = nn.Parameter(torch.zeros(1, config.grid_size**2, width))
        self.flow_head = UniFlowFlowHead(config)
        self.distillation_teacher = None
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, **config_kwargs) -> "UniFlowModel":
        """A UniFlow tokenizer around a pretrained vision encoder: `UniFlowVisionModel` or a ViT-style transformers
        tower (`CLIPVisionModel`, `SiglipVisionModel`, `Dinov2Model`...). Its weights are copied in; the rest is new,
        built from `config_kwargs`. The decoder reads the last `(image_size / patch_size)²` tokens of its
        `last_hidden_state`, the distillation its `hidden_states[1:]`."""
        if not isinstance(encoder, PreTrainedModel):
            raise TypeError(f"`encoder` must be a transformers PreTrainedModel, got {type(encoder).__name__}.")
        encoder_config = encoder.config
        if hasattr(encoder_config, "vision_config"):
            raise ValueError(f"Pass the vision tower itself (e.g. CLIPVisionModel), not a {type(encoder).__name__}.")
        for name in ("num_channels", "image_size", "patch_size", "hidden_size", "num_hidden_layers"):
            if name in config_kwargs and config_kwargs[name] != getattr(encoder_config, name, config_kwargs[name]):
                raise ValueError(
                    f"`{name}={config_kwargs[name]!r}` contradicts the encoder ({name}={getattr(encoder_config, name)!r}); "
                    "the encoder defines it: change the encoder's config instead."
                )
        if isinstance(encoder, UniFlowVisionModel):
            fields = {k: v for k, v in encoder_config.to_diff_dict().items() if k in UniFlowConfig.__dataclass_fields__}
            config = UniFlowConfig(**{**fields, **config_kwargs})
        else:
            config = UniFlowConfig(encoder_config=encoder_config, **config_kwargs)

        model = cls(config)
        if type(model.vision_model) is not type(encoder):
            raise ValueError(
                f"`from_encoder` takes the bare encoder that AutoModel builds from its config "
                f"({type(model.vision_model).__name__}), got {type(encoder).__name__}: pass e.g. its base model "
                f"(`AutoModel.from_pretrained(...)`)."
            )
        state_dict = encoder.state_dict()
        if getattr(encoder, "has_latent_head", False) and not getattr(model.vision_model, "has_latent_head", False):
            latent_keys = [key for key in state_dict if key.startswith(("latent_proj.", "latent_unproj."))]
            model.load_state_dict({key: state_dict.pop(key) for key in latent_keys}, strict=False)
        missing, unexpected = model.vision_model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"Encoder weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}.")
        return model

    def encoder_forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **kwargs):
        """(patch features (B, N, C): the last N = rows·cols tokens of `last_hidden_state`, the token grid
        (rows, cols), the hidden states or None)."""
        _check_pixel_values(pixel_values, self.config)
        outputs = self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        name = type(self.vision_model).__name__
        num_states = len(getattr(outputs, "hidden_states", None) or ())
        if output_hidden_states and num_states < self.config.num_hidden_layers + 1:
            raise ValueError(
                f"The encoder {name} returned {num_states or 'no'} hidden states for `output_hidden_states=True`; "
                f"UniFlow's distillation needs the embeddings and the output of each of its "
                f"{self.config.num_hidden_layers} layers (or train with `distillation_mode='none'`)."
            )
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        last_hidden_state = outputs.last_hidden_state
        if last_hidden_state.ndim != 3 or last_hidden_state.shape[1] < grid[0] * grid[1]:
            raise ValueError(
                f"The encoder {name} returned `last_hidden_state` of shape {tuple(last_hidden_state.shape)}; expected "
                f"(batch, tokens >= {grid[0] * grid[1]}, hidden): one token per {self.config.patch_size}-pixel patch."
            )
        features = last_hidden_state[:, -grid[0] * grid[1] :]  # drop CLS (and register) tokens
        return features, grid, outputs.hidden_states if output_hidden_states else None

    @apply_forward_hooks
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in the processor's normalised space -> latents (B, H/p · W/p, latent_channels)."""
        features, _, _ = self.encoder_forward(pixel_values)
        return self.latent_proj(features)

    def decoder_condition(self, latents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latents (B, N, latent) -> the flow head's per-token condition (B, N, C)."""
        global_pos = resize_position_embedding(self.global_position_embedding, grid)
        hidden_states = self.latent_unproj(latents) + global_pos.to(latents.dtype)
        for block in self.global_blocks:
            hidden_states = block(hidden_states)
        return hidden_states + resize_position_embedding(self.decoder_position_embedding, grid).to(latents.dtype)

    def _latent_grid(self, latents: torch.Tensor, height: int | None, width: int | None) -> tuple[int, int]:
        if latents.ndim != 3 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"`latents` must have shape (batch, tokens, {self.config.latent_channels}), got {tuple(latents.shape)}."
            )
        num_tokens, p = latents.shape[1], self.config.patch_size
        if height is None and width is None:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"{num_tokens} latent tokens are not a square grid: pass `height` and `width`.")
            return side, side
        if height is None or width is None or height % p or width % p or (height // p) * (width // p) != num_tokens:
            raise ValueError(f"`height`x`width` = {height}x{width} does not fit {num_tokens} tokens of patch size {p}.")
        return height // p, width // p

    @apply_forward_hooks
    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """Latents (B, N, latent_channels) -> images (B, C, H, W) in the normalised pixel space (not clamped): the
        pixel decoder's one sampler. Each patch flows from Gaussian `noise` (B, N, C·p·p) (drawn in float32 from
        `generator`, one per image when a list) by `num_inference_steps` Euler steps (`config.num_sampling_steps`)
        over the grid of `config.sampling_schedule`. `height`/`width` are needed only for non-square grids."""
        return self._decode(latents, noise, generator, num_inference_steps, height, width)

    def _decode(self, latents, noise, generator, num_inference_steps, height, width) -> torch.Tensor:
        """`decode` without the wrappers' hooks, for `forward` (whose own hooks have run)."""
        grid = self._latent_grid(latents, height, width)
        batch, num_tokens, _ = latents.shape
        patch_dim = self.config.patch_dim
        dtype = self.flow_head.input_proj.weight.dtype
        if noise is None:
            noise = flow_matching.randn((batch, num_tokens, patch_dim), generator, latents.device)
        elif noise.numel() != batch * num_tokens * patch_dim:
            raise ValueError(f"`noise` must hold ({batch}, {num_tokens}, {patch_dim}) values, got {tuple(noise.shape)}.")
        steps = self.config.num_sampling_steps if num_inference_steps is None else num_inference_steps
        times = flow_matching.time_grid(steps, self.config.sampling_schedule).to(latents.device)

        condition = self.decoder_condition(latents.to(dtype), grid).reshape(batch * num_tokens, -1)
        sample = noise.reshape(batch * num_tokens, patch_dim).to(device=latents.device, dtype=dtype)
        for t, t_next in zip(times[:-1], times[1:]):
            velocity = self.flow_head(sample, t * NUM_TRAIN_TIMESTEPS, condition)
            sample = flow_matching.euler_step(sample, velocity, t, t_next)
        return unpatchify(sample.reshape(batch, num_tokens, patch_dim), self.config.patch_size, grid)

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, **decode_kwargs) -> torch.Tensor:
        """`decode(encode(pixel_values))`; `decode_kwargs` as in `decode` (noise, generator, num_inference_steps)."""
        height, width = pixel_values.shape[-2:]
        return self.decode(self.encode(pixel_values), height=height, width=width, **decode_kwargs)

    # ---------------------------------------------------------------------------------------------- training
    def enable_distillation(self, teacher: nn.Module | None = None) -> None:
        """Snapshot the current encoder as the frozen teacher of the self-distillation (in eval mode, no gradients,
        never saved: `save_pretrained` and Trainer checkpoints skip it). Call it on the pretrained model, before
        adding adapters: resuming from a checkpoint restores only the student. To continue adapting an already
        adapted model, pass the original pretrained encoder as `teacher` (a frozen copy of it is used)."""
        teacher = copy.deepcopy(teacher if teacher is not None else self.vision_model).eval()
        teacher.requires_grad_(False)
        self.disable_distillation()
        self.distillation_teacher = teacher
        teacher_keys = {f"distillation_teacher.{key}" for key in teacher.state_dict()}
        self._keys_to_ignore_on_save = set(self._keys_to_ignore_on_save or ()) | teacher_keys

    def disable_distillation(self) -> None:
        """Drop the teacher (and its keys from `_keys_to_ignore_on_save`)."""
        self.distillation_teacher = None
        self._keys_to_ignore_on_save = {
            key for key in (self._keys_to_ignore_on_save or ()) if not key.startswith("distillation_teacher.")
        }

    def train(self, mode: bool = True):
        super().train(mode)
        if self.distillation_teacher is not None:
            self.distillation_teacher.eval()
        return self

    def _flow_loss_draws(self, noise, timesteps, batch_size: int, num_tokens: int, generator, device):
        """The flow loss's `noise` (B, draws, N, C·p·p) and `timesteps` (B, draws, N): as given, the missing ones
        drawn from `generator` by `flow_matching.draw_flow_training_inputs`."""
        if noise is None or timesteps is None:
            drawn = flow_matching.draw_flow_training_inputs(self.config, batch_size, num_tokens, generator, device)
            noise = drawn[0] if noise is None else noise
            timesteps = drawn[1] if timesteps is None else timesteps
        shape = (batch_size, self.config.flow_samples_per_token, num_tokens)
        if noise.numel() != math.prod(shape) * self.config.patch_dim:
            raise ValueError(
                f"`noise` must have shape {(*shape, self.config.patch_dim)} (batch, draws per token = "
                f"config.flow_samples_per_token, tokens, pixel patch), got {tuple(noise.shape)}."
            )
        if timesteps.numel() == batch_size:  # one time per image, shared by its tokens and draws
            timesteps = timesteps.reshape(batch_size, 1, 1).expand(shape)
        elif timesteps.numel() != math.prod(shape):
            raise ValueError(
                f"`timesteps` must hold one network timestep (1000·t) per token and draw, shape {shape}, or one per "
                f"image, shape ({batch_size},); got shape {tuple(timesteps.shape)}."
            )
        return noise.reshape(*shape, self.config.patch_dim).to(device), timesteps.reshape(shape).to(device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> UniFlowModelOutput | tuple:
        """The latents of `pixel_values` and their reconstruction; with `return_loss` (default: when `timesteps` are
        given), the training losses instead: the patch flow loss, plus the adaptive self-distillation loss when a
        teacher is set (`enable_distillation()`; under `torch.distributed` in training, its layer weights use the
        global batch, see `adaptive_distillation_loss`).

        The flow loss's draws are `noise` (B, draws, N, C·p·p) and network `timesteps` (1000·t; (B, draws, N), or
        (B,) one per image), draws = `config.flow_samples_per_token`; those not given are drawn from `generator`
        (one, or a list of one per image) by `flow_matching.draw_flow_training_inputs`. Without the losses, `noise`
        (B, N, C·p·p) and `generator` are the decoder's."""
        kwargs.pop("labels", None)
        kwargs.pop("num_items_in_batch", None)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        compute_loss = timesteps is not None if return_loss is None else return_loss
        distill = (
            compute_loss
            and self.distillation_teacher is not None
            and self.config.distillation_mode != "none"
            and not self.config.freeze_encoder  # a frozen encoder is its own teacher
        )
        encoder_grad = torch.is_grad_enabled() and not (self.training and self.config.freeze_encoder)
        with torch.set_grad_enabled(encoder_grad):
            features, grid, hidden_states = self.encoder_forward(
                pixel_values, output_hidden_states=distill or bool(output_hidden_states)
            )
        latents = self.latent_proj(features)
        encoder_hidden_states = hidden_states if output_hidden_states else None
        output = UniFlowModelOutput(latents=latents, encoder_hidden_states=encoder_hidden_states)
        if not compute_loss:
            with torch.no_grad():
                output.reconstruction = self._decode(latents, noise, generator, None, *pixel_values.shape[-2:])
            return output if return_dict else output.to_tuple()

        batch_size, num_tokens = latents.shape[:2]
        draws = self.config.flow_samples_per_token  # several (noise, t) draws per token, as MAR's diffusion loss
        noise, timesteps = self._flow_loss_draws(noise, timesteps, batch_size, num_tokens, generator, latents.device)
        # draw-major rows: (draws, batch, tokens) flattened, each row one pixel patch and its condition
        target = patchify(pixel_values, self.config.patch_size).reshape(-1, self.config.patch_dim).repeat(draws, 1)
        condition = self.decoder_condition(latents, grid).reshape(batch_size * num_tokens, -1).repeat(draws, 1)
        noise = noise.transpose(0, 1).reshape(target.shape).to(dtype=target.dtype)
        timesteps = timesteps.transpose(0, 1).reshape(-1)
        noisy = flow_matching.add_noise(target, noise, timesteps)
        velocity = self.flow_head(noisy.to(self.flow_head.input_proj.weight.dtype), timesteps, condition)
        output.flow_loss = F.mse_loss(velocity.float(), flow_matching.velocity_target(target, noise).float())
        output.loss = self.config.flow_loss_weight * output.flow_loss

        if distill:
            with torch.no_grad():
                teacher_states = self.distillation_teacher(
                    pixel_values=pixel_values, output_hidden_states=True, return_dict=True
                ).hidden_states
            # hidden_states[0] is the embedding output; the L layer outputs follow (a tower may append more).
            layers = slice(1, self.config.num_hidden_layers + 1)
            student_states, teacher_states = hidden_states[layers], teacher_states[layers]
            output.distillation_loss, output.distillation_weights = adaptive_distillation_loss(
                student_states,
                teacher_states,
                self.config.distillation_beta,
                self.config.distillation_mode,
                sync_across_processes=self.training,
            )
            output.distillation_cosine = torch.stack(
                [F.cosine_similarity(s.float(), t.float(), dim=-1).mean() for s, t in zip(student_states, teacher_states)]
            ).detach()
            output.loss = output.loss + self.config.distillation_weight * output.distillation_loss
        return output if return_dict else output.to_tuple()


class UniFlowForImageClassification(UniFlowPreTrainedModel):
    """UniFlow's encoder with a linear classifier on the layer-normed mean of its tokens (to pretrain a small encoder
    and to linear-probe features). Loads from its own, tower, `UniFlowModel` and official folders (a new head)."""

    def __init__(self, config: UniFlowConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = UniFlowVisionModel(config, add_latent_head=False)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        """`logits` (B, num_labels), and the cross-entropy `loss` when `labels` (B,) are given."""
        kwargs.pop("num_items_in_batch", None)  # the Trainer's; the loss is a mean over the batch
        outputs = self.vision_model(pixel_values, return_dict=True, **kwargs)
        logits = self.classifier(self.norm(outputs.last_hidden_state.mean(dim=1)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


UniFlowModel.register_for_auto_class("AutoModelForImageToImage")
UniFlowVisionModel.register_for_auto_class("AutoModel")
UniFlowForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "UniFlowPreTrainedModel",
    "UniFlowVisionModel",
    "UniFlowModel",
    "UniFlowModelOutput",
    "UniFlowTrainingOutput",
    "UniFlowForImageClassification",
    "patchify",
    "unpatchify",
]
