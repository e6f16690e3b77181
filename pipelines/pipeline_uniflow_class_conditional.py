# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional image generation in UniFlow's latent space: a DiT flows Gaussian noise to latents of the
requested class, the UniFlow tokenizer decodes them to pixels."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_uniflow_utils import (
    OUTPUT_TYPES,
    UniFlowPipelineMixin,
    check_callback,
    check_generator,
    check_num_inference_steps,
    check_output_type,
    check_saved_decoder_scheduler,
)


def latents_to_grid(latents: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Tokenizer latents (B, N, C), tokens row-major over the patch grid -> a DiT input (B, C, grid, grid)."""
    return latents.transpose(1, 2).reshape(latents.shape[0], latents.shape[2], grid_size, grid_size)


def grid_to_latents(grid_latents: torch.Tensor) -> torch.Tensor:
    """(B, C, grid, grid) -> tokenizer latents (B, grid * grid, C)."""
    return grid_latents.flatten(2).transpose(1, 2)


DEFAULT_GUIDANCE_SCALE = 1.5


def is_number(value) -> bool:
    """A real number; `True` / `False` are not (Python counts them as ints)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_guidance_scale(guidance_scale: float | None, name: str = "guidance_scale") -> float | None:
    if guidance_scale is not None and (not is_number(guidance_scale) or not guidance_scale >= 0):
        raise ValueError(f"`{name}` must be a number >= 0 (1 = no guidance), got {guidance_scale!r}.")
    return None if guidance_scale is None else float(guidance_scale)


def check_guidance_rescale(guidance_rescale: float | None) -> float | None:
    if guidance_rescale is not None and (not is_number(guidance_rescale) or not 0 <= guidance_rescale <= 1):
        raise ValueError(
            f"`guidance_rescale` must be a number in [0, 1] (0 = no rescaling, 1 = the guided velocity fully "
            f"rescaled to the class-conditional one's standard deviation), got {guidance_rescale!r}."
        )
    return None if guidance_rescale is None else float(guidance_rescale)


def rescale_guided_velocity(guided: torch.Tensor, conditional: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Rescaled classifier-free guidance (Lin et al., 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Sec. 3.4; diffusers' `rescale_noise_cfg`): the guided prediction scaled to the per-sample standard
    deviation of the conditional one, mixed with it by `guidance_rescale`. Guidance overshoots the conditional
    prediction's scale; this pulls it back without undoing its direction."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


def check_decoder_latent_scale(decoder_latent_scale: float | None) -> float | None:
    if decoder_latent_scale is not None and (not is_number(decoder_latent_scale) or not decoder_latent_scale > 0):
        raise ValueError(
            f"`decoder_latent_scale` must be a number > 0 (1 = the latents decoded as generated), got "
            f"{decoder_latent_scale!r}."
        )
    return None if decoder_latent_scale is None else float(decoder_latent_scale)


def check_guidance_interval(interval: Sequence[float] | None, name: str = "guidance_interval") -> list[float] | None:
    """`(t_start, t_end)` with 0 <= t_start <= t_end <= 1 as a list (how the pipeline config stores it), or `None`."""
    if interval is None:
        return None
    values = list(interval) if isinstance(interval, Sequence) and not isinstance(interval, str) else None
    if (
        values is None
        or len(values) != 2
        or not all(is_number(v) for v in values)
        or not 0 <= values[0] <= values[1] <= 1
    ):
        raise ValueError(
            f"`{name}` must be a pair (t_start, t_end) of flow times with 0 <= t_start <= t_end <= 1 "
            f"(t = 0 is the noise, t = 1 the data), or None for the whole trajectory; got {interval!r}."
        )
    return [float(v) for v in values]


def normalize_id2label(id2label: dict | None) -> dict[int, str] | None:
    """`id2label` with int keys (a JSON round trip through `model_index.json` turns them into strings)."""
    if id2label is None:
        return None
    return {int(key): str(value) for key, value in sorted(id2label.items(), key=lambda item: int(item[0]))}


class UniFlowClassConditionalPipeline(UniFlowPipelineMixin, DiffusionPipeline):
    r"""
    Class-conditional generation with a UniFlow tokenizer: a [`DiTTransformer2DModel`] predicts the velocity of a
    rectified flow over the tokenizer's latent grid (t = 0 noise -> t = 1 data, sampled by `scheduler`), with
    classifier-free guidance and, with a `guide_transformer`, autoguidance; the latents are de-normalised and decoded
    to pixels by the tokenizer's flow decoder, whose sampler is [`UniFlowModel.decode`]'s own (Euler steps over the
    tokenizer's `config.sampling_schedule`; the pipeline chooses only its number of steps).

    The transformer follows diffusers' DiT convention: `num_embeds_ada_norm` is the number of classes and the id
    `num_embeds_ada_norm` is the null class of classifier-free guidance (the extra row diffusers' `LabelEmbedding`
    reserves for it). Its `sample_size` is the tokenizer's latent grid size, `in_channels` = `out_channels` = the
    tokenizer's `latent_channels` (velocity prediction, no learned sigma).

    The latent normalisation, the class names and the generation's decoder steps are not part of any model's config:
    they are registered to the pipeline's own config (`model_index.json`), which `save_pretrained`/`from_pretrained`
    carry along.

    Args:
        transformer ([`DiTTransformer2DModel`]): the latent velocity model.
        scheduler ([`UniFlowFlowMatchScheduler`]): the sampler of the latent flow.
        tokenizer ([`UniFlowModel`]): the UniFlow tokenizer whose decoder turns latents into images.
        id2label (`dict[int, str]`, *optional*): class names, so that `class_labels` may be names (string ids, as
            `model_index.json` stores them, are accepted).
        latent_mean, latent_std (`list[float]`, *optional*): per-channel statistics of the training latents; the
            transformer works on `(latents - mean) / std`. `None` means 0 and 1.
        image_processor ([`UniFlowImageProcessor`], *optional*): maps decoded pixels back to images; when `None`
            (it stays absent through save and load), one built for the tokenizer (`pipe.processor`) serves.
        decoder_num_inference_steps (`int`, *optional*): the default steps of the pixel flow decoder when generating
            (the tokenizer's `num_sampling_steps`, its reconstruction default, when `None`). A 1-step decoder gives
            the mean of the patches a latent could stand for, which is best for reconstruction PSNR; a few steps
            draw sharper samples, which can suit generation better (UniFlow-FMNIST: see
            `benchmarks/fmnist_report.md`).
        guidance_scale (`float`, *optional*), guidance_interval (`tuple[float, float]`, *optional*): the defaults of
            the same arguments of `__call__`, the sampling settings a trained generator is meant to be used with
            (`None`: guidance 1.5, over the whole trajectory).
        guidance_rescale (`float`, *optional*): the default of the same argument of `__call__` (`None`: 0, none).
        guide_transformer ([`DiTTransformer2DModel`], *optional*): a weaker model of the same latents and classes
            (smaller, trained less), the guiding model of autoguidance (Karras et al., 2024, "Guiding a Diffusion
            Model with a Bad Version of Itself"): its errors point the way the main model's own errors go, so
            extrapolating away from it corrects them without the loss of diversity that classifier-free guidance
            costs. It must have the transformer's latent shape and classes.
        autoguidance_scale (`float`, *optional*), autoguidance_interval (`tuple[float, float]`, *optional*): the
            defaults of the same arguments of `__call__` (`None`: 1, no autoguidance; over the whole trajectory).
        decoder_latent_scale (`float`, *optional*): the default of the same argument of `__call__` (`None`: 1).
    """

    model_cpu_offload_seq = "transformer->guide_transformer->tokenizer"
    _optional_components = ["image_processor", "guide_transformer"]
    # The Hub has no class-conditional generation task (`unconditional-image-generation` would say it takes no input).
    card_pipeline_tag = None
    card_tags = ("pixel-flow-decoder", "class-conditional", "class-conditional-image-generation", "dit")

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        scheduler: SchedulerMixin,
        tokenizer,
        id2label: dict[int, str] | dict[str, str] | None = None,
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        image_processor=None,
        decoder_num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: Sequence[float] | None = None,
        guide_transformer: DiTTransformer2DModel | None = None,
        autoguidance_scale: float | None = None,
        autoguidance_interval: Sequence[float] | None = None,
        guidance_rescale: float | None = None,
        decoder_latent_scale: float | None = None,
    ):
        super().__init__()
        check_num_inference_steps(decoder_num_inference_steps, "decoder_num_inference_steps", allow_none=True)
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_interval = check_guidance_interval(guidance_interval)
        guidance_rescale = check_guidance_rescale(guidance_rescale)
        decoder_latent_scale = check_decoder_latent_scale(decoder_latent_scale)
        autoguidance_scale = check_guidance_scale(autoguidance_scale, "autoguidance_scale")
        autoguidance_interval = check_guidance_interval(autoguidance_interval, "autoguidance_interval")
        if guide_transformer is None and autoguidance_scale not in (None, 1.0):
            raise ValueError(
                f"`autoguidance_scale` {autoguidance_scale} needs a `guide_transformer`; without one pass "
                "`autoguidance_scale=None` (or 1), i.e. no autoguidance."
            )
        self.register_modules(
            transformer=transformer,
            scheduler=scheduler,
            tokenizer=tokenizer,
            image_processor=image_processor,
            guide_transformer=guide_transformer,
        )
        id2label = normalize_id2label(id2label)
        latent_mean = self._check_latent_statistic(latent_mean, "latent_mean", tokenizer)
        latent_std = self._check_latent_statistic(latent_std, "latent_std", tokenizer)
        if latent_std is not None and min(latent_std) <= 0:
            raise ValueError(f"`latent_std` must be positive, got {latent_std}.")
        if transformer is not None:
            self._check_transformer(transformer, tokenizer, id2label)
            if guide_transformer is not None:
                self._check_guide_transformer(guide_transformer, transformer)
        self.register_to_config(
            id2label=id2label,
            latent_mean=latent_mean,
            latent_std=latent_std,
            decoder_num_inference_steps=decoder_num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
            autoguidance_scale=autoguidance_scale,
            autoguidance_interval=autoguidance_interval,
            guidance_rescale=guidance_rescale,
            decoder_latent_scale=decoder_latent_scale,
        )

    @staticmethod
    def _check_latent_statistic(values, name: str, tokenizer) -> list[float] | None:
        if values is None:
            return None
        values = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()]
        if tokenizer is not None and len(values) != tokenizer.config.latent_channels:
            raise ValueError(
                f"`{name}` needs one value per latent channel ({tokenizer.config.latent_channels}), got {len(values)}."
            )
        return values

    @staticmethod
    def _check_transformer(transformer, tokenizer, id2label) -> None:
        config = transformer.config
        num_classes = config.num_embeds_ada_norm
        if transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.num_embeddings != num_classes + 1:
            raise ValueError(
                "The transformer has no null-class embedding for classifier-free guidance: build the "
                "DiTTransformer2DModel with its default class dropout (its label table then has "
                "num_embeds_ada_norm + 1 rows)."
            )
        if tokenizer is not None:
            out_channels = config.out_channels or config.in_channels
            latent_channels, grid_size = tokenizer.config.latent_channels, tokenizer.config.grid_size
            if config.in_channels != latent_channels or out_channels != latent_channels:
                raise ValueError(
                    f"The transformer maps {config.in_channels} to {out_channels} channels; the tokenizer's latents "
                    f"have {latent_channels} (velocity prediction needs in_channels = out_channels = latent_channels)."
                )
            if config.sample_size != grid_size:
                raise ValueError(
                    f"The transformer's sample_size is {config.sample_size}; the tokenizer's latent grid is "
                    f"{grid_size}x{grid_size}."
                )
        if id2label is not None and any(not 0 <= class_id < num_classes for class_id in id2label):
            raise ValueError(f"`id2label` has ids outside 0..{num_classes - 1}: {sorted(id2label)}.")

    @staticmethod
    def _check_guide_transformer(guide_transformer, transformer) -> None:
        def latent_interface(model) -> dict:
            config = model.config
            return {
                "in_channels": config.in_channels, "out_channels": config.out_channels or config.in_channels,
                "sample_size": config.sample_size, "num_embeds_ada_norm": config.num_embeds_ada_norm,
            }

        guide, main = latent_interface(guide_transformer), latent_interface(transformer)
        if guide != main:
            raise ValueError(
                f"The guide_transformer must model the transformer's latents and classes: it has {guide}, the "
                f"transformer {main}."
            )

    def card_description(self) -> str:
        names = list(self.labels) or [str(class_id) for class_id in range(self.num_classes)]
        config = self.transformer.config
        guide = " and a guide DiT for autoguidance" if self.guide_transformer is not None else ""
        return (
            f"a class-conditional UniFlow pipeline for {self.num_classes} classes ({', '.join(names)}): a "
            f"{config.num_layers}-layer latent DiT{guide} samples latents for a class label, and "
            f"{self.tokenizer_facts()} decodes them to images with its patch-wise pixel flow decoder"
        )

    @classmethod
    def setting_names(cls) -> list[str]:
        """The pipeline's own settings, kept in `model_index.json` beside its components: the `__init__` arguments
        that are not components (class names, latent statistics, sampling defaults)."""
        return cls._get_signature_keys(cls)[1]

    @property
    def settings(self) -> dict:
        """The values of `setting_names()`, as `__init__` takes them."""
        return {name: self.config[name] for name in self.setting_names()}

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> id (empty without `id2label`)."""
        return {name: class_id for class_id, name in (self.config.id2label or {}).items()}

    def get_label_ids(self, class_labels: int | str | Sequence[int | str]) -> list[int]:
        """Class ids for `class_labels`: ids, names from `id2label`, or a list mixing both."""
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        if isinstance(class_labels, (str, numbers.Integral)):
            class_labels = [class_labels]
        if not isinstance(class_labels, Sequence) or len(class_labels) == 0:
            raise TypeError(
                "`class_labels` must be a class id, a class name, or a non-empty list of them, got "
                f"{class_labels!r}."
            )
        labels, ids = self.labels, []
        for label in class_labels:
            if isinstance(label, str):
                if label not in labels:
                    known = ", ".join(repr(name) for name in labels) or "none: this pipeline has no id2label"
                    raise ValueError(f"Unknown class name {label!r}. Known names: {known}.")
                ids.append(labels[label])
            elif isinstance(label, numbers.Integral) and not isinstance(label, bool):
                if not 0 <= int(label) < self.num_classes:
                    raise ValueError(f"Class id {label} is out of range: ids run from 0 to {self.num_classes - 1}.")
                ids.append(int(label))
            else:
                raise TypeError(f"A class label must be an int id or a str name, got {type(label).__name__} {label!r}.")
        return ids

    def _latent_statistics(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.transformer.config.in_channels
        mean = self.config.latent_mean if self.config.latent_mean is not None else [0.0] * channels
        std = self.config.latent_std if self.config.latent_std is not None else [1.0] * channels
        shape = (1, channels, 1, 1)
        return (
            torch.tensor(mean, device=device, dtype=dtype).reshape(shape),
            torch.tensor(std, device=device, dtype=dtype).reshape(shape),
        )

    def register_to_config(self, **kwargs):
        """`ConfigMixin.register_to_config`; when `from_pretrained` records the folder the pipeline was loaded from,
        a `decoder_scheduler` saved there by an earlier version (not loaded: the tokenizer's `decode` samples) is
        checked to describe the tokenizer's sampler, so that the folder decodes as it did."""
        super().register_to_config(**kwargs)
        if kwargs.get("_name_or_path") and getattr(self, "tokenizer", None) is not None:
            check_saved_decoder_scheduler(kwargs["_name_or_path"], self.tokenizer)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Tokenizer latents (B, N, C) -> the transformer's space (B, C, grid, grid), `(latents - mean) / std`."""
        grid = latents_to_grid(latents, self.transformer.config.sample_size)
        mean, std = self._latent_statistics(grid.device, grid.dtype)
        return (grid - mean) / std

    @property
    def default_decoder_num_inference_steps(self) -> int:
        """The decoder steps a call uses when not told: the pipeline's config, else the tokenizer's."""
        return self.config.decoder_num_inference_steps or self.tokenizer.config.num_sampling_steps

    @property
    def default_guidance_scale(self) -> float:
        """The guidance a call uses when not told: the pipeline's config, else 1.5."""
        return DEFAULT_GUIDANCE_SCALE if self.config.guidance_scale is None else self.config.guidance_scale

    @property
    def default_guidance_interval(self) -> list[float]:
        """The flow times a call guides when not told: the pipeline's config, else the whole trajectory."""
        return [0.0, 1.0] if self.config.guidance_interval is None else self.config.guidance_interval

    @property
    def default_guidance_rescale(self) -> float:
        """The guidance rescaling a call uses when not told: the pipeline's config, else 0 (none)."""
        return 0.0 if self.config.guidance_rescale is None else self.config.guidance_rescale

    @property
    def default_autoguidance_scale(self) -> float:
        """The autoguidance a call uses when not told: the pipeline's config, else 1 (none)."""
        return 1.0 if self.config.autoguidance_scale is None else self.config.autoguidance_scale

    @property
    def default_autoguidance_interval(self) -> list[float]:
        """The flow times a call autoguides when not told: the pipeline's config, else the whole trajectory."""
        return [0.0, 1.0] if self.config.autoguidance_interval is None else self.config.autoguidance_interval

    @property
    def default_decoder_latent_scale(self) -> float:
        """The scale of the latents the decoder gets when a call is not told: the pipeline's config, else 1."""
        return 1.0 if self.config.decoder_latent_scale is None else self.config.decoder_latent_scale

    def denormalize_latents(self, grid_latents: torch.Tensor) -> torch.Tensor:
        """The transformer's space (B, C, grid, grid) -> tokenizer latents (B, N, C)."""
        mean, std = self._latent_statistics(grid_latents.device, grid_latents.dtype)
        return grid_to_latents(grid_latents * std + mean)

    def prepare_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The latent flow's starting noise `(batch_size, in_channels, sample_size, sample_size)` on the execution
        device in the transformer's dtype: `latents` checked and moved there, or, when `None`, drawn from
        `generator` (in float32, then cast: a seed gives the same noise in every dtype)."""
        device, dtype = self._execution_device, self.transformer.dtype
        config = self.transformer.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device).to(dtype)
        if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"`latents` must be a tensor of shape {shape} (batch, channels, grid, grid), got {got}.")
        return latents.to(device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str],
        guidance_scale: float | None = None,
        num_inference_steps: int = 25,
        decoder_num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_interval: Sequence[float] | None = None,
        autoguidance_scale: float | None = None,
        autoguidance_interval: Sequence[float] | None = None,
        guidance_rescale: float | None = None,
        latents: torch.Tensor | None = None,
        decoder_latent_scale: float | None = None,
        num_images_per_prompt: int = 1,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            class_labels (`int`, `str`, or a list of them): one image per label; ids `0..num_classes - 1` or names
                from `id2label` (`pipe.labels`).
            guidance_scale (`float`, *optional*): classifier-free guidance
                `v = v_null + guidance_scale * (v_class - v_null)`. `1` is plain conditional sampling (no null-class
                forward), `0` unconditional sampling; any value >= 0 is accepted. Higher values trade diversity for
                class fidelity. When `None`: the pipeline's `config.guidance_scale`, else 1.5.
            num_inference_steps (`int`, *optional*, defaults to 25): steps of the latent flow.
            decoder_num_inference_steps (`int`, *optional*): steps of the tokenizer's pixel flow decoder (when
                `None`: the pipeline's `config.decoder_num_inference_steps`, else the tokenizer's `num_sampling_steps`).
            generator (`torch.Generator` or a list of them, *optional*): the source of all noise (latent noise, then
                decoder noise); with a list (one per image) a batch equals the images generated one by one.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (see
                [`UniFlowReconstructionPipeline.__call__`]), or `"latent"`: the generated tokenizer latents
                `(batch, tokens, latent_channels)` (de-normalised, not decoded).
            return_dict (`bool`, *optional*, defaults to `True`): return an [`ImagePipelineOutput`] or a tuple.
            guidance_interval (`tuple[float, float]`, *optional*): guide only the network calls at flow times t
                (0 = noise, 1 = data) with `t_start <= t <= t_end`; the others are plain conditional calls. Guidance
                near the noise decides the layout and costs the most diversity, so leaving it out there can lower
                the Fréchet distance at a given class accuracy (Kynkäänniemi et al., 2024, "Applying Guidance in a
                Limited Interval"). When `None`: the pipeline's `config.guidance_interval`, else the whole trajectory.
            autoguidance_scale (`float`, *optional*): autoguidance by the `guide_transformer`, added to the velocity
                above as `(autoguidance_scale - 1) * (v_class - v_guide)` (`v_guide`: the guide's prediction for the
                same class), so `1` is none. When `None`: the pipeline's `config.autoguidance_scale`, else 1. A value
                other than 1 needs a `guide_transformer`.
            autoguidance_interval (`tuple[float, float]`, *optional*): the flow times it applies at, as
                `guidance_interval`. When `None`: the pipeline's `config.autoguidance_interval`, else all.
            guidance_rescale (`float`, *optional*): rescaled classifier-free guidance (Lin et al., 2024; as
                `guidance_rescale` of diffusers' Stable Diffusion pipelines): at the guided calls, the guided velocity
                is scaled to the class-conditional velocity's per-sample standard deviation and mixed with the
                unscaled one, `guidance_rescale * rescaled + (1 - guidance_rescale) * guided`, before autoguidance is
                added. In [0, 1]; `0` is none. When `None`: the pipeline's `config.guidance_rescale`, else 0.
            latents (`torch.Tensor`, *optional*): the latent flow's starting noise, `(batch, in_channels,
                sample_size, sample_size)` of the transformer (its normalised latent space), e.g. to reuse or edit
                one draw. When `None`: drawn from `generator`, which then draws the decoder's noise too; given, the
                `generator` draws only the decoder's noise, continuing where it stands.
            decoder_latent_scale (`float`, *optional*): the generated latents are multiplied by it before the pixel
                flow decoder decodes them (not with `output_type="latent"`). A decoder trained for 1-step
                reconstruction and run for several steps can decode slightly enlarged latents closer to the data:
                UniFlow-FMNIST's decodes its training images' latents in 8 steps at 2.1x the Fréchet floor from the
                test set, and at 1.2x when they are scaled by 1.025 (`benchmarks/fmnist_experiments.md`). Guidance
                enlarges the latents too, so a scale above 1 lets the guidance drop and the samples keep more of
                their diversity.
                When `None`: the pipeline's `config.decoder_latent_scale`, else 1.
            num_images_per_prompt (`int`, *optional*, defaults to 1): images per class label, each label's images
                consecutive (as diffusers repeats each prompt): `[a, b]` with 2 gives `a, a, b, b`.
            callback_on_step_end (`Callable`, *optional*): called after each step of the latent flow as
                `callback_on_step_end(self, step, timestep, callback_kwargs)`, `callback_kwargs` holding the tensors
                named in `callback_on_step_end_tensor_inputs`; the tensors it returns in a dict replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`): of
                `pipe._callback_tensor_inputs` (`latents`: the latent flow's sample, in the transformer's space).

        Examples:
        ```py
        >>> import uniflow_hf  # registers the UniFlow pipelines with diffusers
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("path/to/uniflow-class-conditional")
        >>> images = pipe(["Sneaker", "Bag"], generator=torch.manual_seed(0)).images
        ```

        Returns:
            [`ImagePipelineOutput`] with `images`, or `(images,)` when `return_dict=False`.
        """
        check_num_inference_steps(num_inference_steps)
        check_num_inference_steps(decoder_num_inference_steps, "decoder_num_inference_steps", allow_none=True)
        check_output_type(output_type, OUTPUT_TYPES + ("latent",))
        guidance_scale = check_guidance_scale(self.default_guidance_scale if guidance_scale is None else guidance_scale)
        guidance_start, guidance_end = check_guidance_interval(
            self.default_guidance_interval if guidance_interval is None else guidance_interval
        )
        guidance_rescale = check_guidance_rescale(
            self.default_guidance_rescale if guidance_rescale is None else guidance_rescale
        )
        decoder_latent_scale = check_decoder_latent_scale(
            self.default_decoder_latent_scale if decoder_latent_scale is None else decoder_latent_scale
        )
        autoguidance_scale = check_guidance_scale(
            self.default_autoguidance_scale if autoguidance_scale is None else autoguidance_scale, "autoguidance_scale"
        )
        autoguidance_start, autoguidance_end = check_guidance_interval(
            self.default_autoguidance_interval if autoguidance_interval is None else autoguidance_interval,
            "autoguidance_interval",
        )
        if autoguidance_scale != 1 and self.guide_transformer is None:
            raise ValueError(
                f"`autoguidance_scale` {autoguidance_scale} needs a `guide_transformer`, and this pipeline has none "
                "(1 = no autoguidance)."
            )
        check_num_inference_steps(num_images_per_prompt, "num_images_per_prompt")
        callback_on_step_end_tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        class_ids = [class_id for class_id in self.get_label_ids(class_labels) for _ in range(num_images_per_prompt)]
        batch_size = len(class_ids)
        check_generator(generator, batch_size)

        device = self._execution_device
        latents = self.prepare_latents(batch_size, generator, latents)
        labels = torch.tensor(class_ids, device=device)
        labels_and_null = torch.cat([labels, torch.full_like(labels, self.num_classes)])  # second half: null class

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        times = (self.scheduler.timesteps / self.scheduler.config.num_train_timesteps).tolist()
        # which network calls to guide, compared at 6 decimals (float32 grid times: 0.2 may read 0.19999998)
        guided = [guidance_scale != 1 and guidance_start <= round(t, 6) <= guidance_end for t in times]
        autoguided = [autoguidance_scale != 1 and autoguidance_start <= round(t, 6) <= autoguidance_end for t in times]
        steps = zip(self.progress_bar(self.scheduler.timesteps), guided, autoguided)
        for step, (timestep, do_guidance, do_autoguidance) in enumerate(steps):
            model_input = torch.cat([latents, latents]) if do_guidance else latents
            velocity = self.transformer(
                model_input,
                timestep=timestep.expand(model_input.shape[0]),
                class_labels=labels_and_null if do_guidance else labels,
            ).sample
            velocity_class = velocity[:batch_size]
            if do_guidance:
                velocity_null = velocity[batch_size:]
                velocity = velocity_null + guidance_scale * (velocity_class - velocity_null)
                if guidance_rescale > 0:
                    velocity = rescale_guided_velocity(velocity, velocity_class, guidance_rescale)
            if do_autoguidance:
                velocity_guide = self.guide_transformer(
                    latents.to(self.guide_transformer.dtype), timestep=timestep.expand(batch_size), class_labels=labels
                ).sample.to(velocity.dtype)
                velocity = velocity + (autoguidance_scale - 1) * (velocity_class - velocity_guide)
            latents = self.scheduler.step(velocity, timestep, latents).prev_sample
            latents = self.run_step_end_callback(
                callback_on_step_end, callback_on_step_end_tensor_inputs, step, timestep, {"latents": latents}
            )["latents"]

        latents = self.denormalize_latents(latents)
        if output_type == "latent":
            images = latents
        else:
            if decoder_num_inference_steps is None:
                decoder_num_inference_steps = self.default_decoder_num_inference_steps
            images = self.decode_latents(
                latents * decoder_latent_scale, decoder_num_inference_steps, generator=generator
            )
            images = self.processor.postprocess(images, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["UniFlowClassConditionalPipeline"]
