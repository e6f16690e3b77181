# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional image generation in UniFlow's latent space: a DiT flows Gaussian noise to latents of the
requested class, the UniFlow tokenizer decodes them to pixels."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_uniflow_utils import UniFlowPipelineMixin, check_call_arguments, check_generator, is_positive_int


def latents_to_grid(latents: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Tokenizer latents (B, N, C), tokens row-major over the patch grid -> a DiT input (B, C, grid, grid)."""
    return latents.transpose(1, 2).reshape(latents.shape[0], latents.shape[2], grid_size, grid_size)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_flow_time_interval(value) -> bool:
    pair = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    return pair and all(is_number(v) for v in value) and 0 <= value[0] <= value[1] <= 1


INTERVAL = "a pair (t_start, t_end) of flow times with 0 <= t_start <= t_end <= 1 (0 = noise, 1 = data)"

# name -> (built-in default, what is accepted, check); registered as the defaults of the same `__call__` arguments
SAMPLING_SETTINGS = {
    "decoder_num_inference_steps": (None, "a positive integer", is_positive_int),  # None: the tokenizer's steps
    "guidance_scale": (1.5, "a number >= 0 (1 = no guidance)", lambda v: is_number(v) and v >= 0),
    "guidance_interval": ([0.0, 1.0], INTERVAL, is_flow_time_interval),
    "guidance_rescale": (0.0, "a number in [0, 1] (0 = no rescaling)", lambda v: is_number(v) and 0 <= v <= 1),
    "autoguidance_scale": (1.0, "a number >= 0 (1 = no autoguidance)", lambda v: is_number(v) and v >= 0),
    "autoguidance_interval": ([0.0, 1.0], INTERVAL, is_flow_time_interval),
    "decoder_latent_scale": (1.0, "a number > 0 (1 = decode the latents unscaled)", lambda v: is_number(v) and v > 0),
}


def check_sampling_setting(name: str, value):
    """`value` of the sampling setting `name` as the config stores it (a float, a list of two floats, an int)."""
    if value is None:
        return None
    _, accepted, is_valid = SAMPLING_SETTINGS[name]
    if not is_valid(value):
        raise ValueError(f"`{name}` must be {accepted}, or None for the pipeline's default; got {value!r}.")
    if name.endswith("_interval"):
        return [float(v) for v in value]
    return value if name == "decoder_num_inference_steps" else float(value)


class UniFlowClassConditionalPipeline(UniFlowPipelineMixin, DiffusionPipeline):
    r"""
    Class-conditional generation with a UniFlow tokenizer: a [`DiTTransformer2DModel`] over the tokenizer's latent
    grid (class id `num_embeds_ada_norm` is the null class) predicts the velocity of a rectified flow over the
    latents normalised by `latent_mean` / `latent_std`, with classifier-free guidance and, given a `guide_transformer`
    (a weaker model of the same latents), autoguidance; [`UniFlowModel.decode`] turns the latents into images.
    The `SAMPLING_SETTINGS` arguments are the defaults of the same `__call__` arguments.
    """

    model_cpu_offload_seq = "transformer->guide_transformer->tokenizer"
    _optional_components = ["image_processor", "guide_transformer"]
    _former_decoder_schedulers = ("decoder_scheduler",)
    card_pipeline_tag = None  # the Hub has no class-conditional generation task
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
        self.register_modules(
            transformer=transformer, scheduler=scheduler, tokenizer=tokenizer, image_processor=image_processor,
            guide_transformer=guide_transformer,
        )
        if id2label is not None:  # `model_index.json` stores the ids as strings
            id2label = {int(key): str(value) for key, value in sorted(id2label.items(), key=lambda item: int(item[0]))}
        if transformer is not None:
            self._check_transformer(transformer, tokenizer, guide_transformer, id2label)
        sampling = dict(
            decoder_num_inference_steps=decoder_num_inference_steps, guidance_scale=guidance_scale,
            guidance_interval=guidance_interval, guidance_rescale=guidance_rescale,
            autoguidance_scale=autoguidance_scale, autoguidance_interval=autoguidance_interval,
            decoder_latent_scale=decoder_latent_scale,
        )
        self.register_to_config(
            id2label=id2label,
            latent_mean=self._check_latent_statistic(latent_mean, "latent_mean", tokenizer),
            latent_std=self._check_latent_statistic(latent_std, "latent_std", tokenizer),
            **{name: check_sampling_setting(name, value) for name, value in sampling.items()},
        )
        self.sampling_setting("autoguidance_scale")  # a default autoguidance needs the guide

    @staticmethod
    def _check_latent_statistic(values, name: str, tokenizer) -> list[float] | None:
        if values is None:
            return None
        values = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()]
        channels = len(values) if tokenizer is None else tokenizer.config.latent_channels
        if len(values) != channels:
            raise ValueError(f"`{name}` needs one value per latent channel ({channels}), got {len(values)}.")
        if name == "latent_std" and min(values) <= 0:
            raise ValueError(f"`latent_std` must be positive, got {values}.")
        return values

    @staticmethod
    def _check_transformer(transformer, tokenizer, guide_transformer, id2label) -> None:
        def latents_and_classes(model) -> dict:
            keys = ("in_channels", "out_channels", "sample_size", "num_embeds_ada_norm")
            return {key: model.out_channels if key == "out_channels" else model.config[key] for key in keys}

        main, num_classes = latents_and_classes(transformer), transformer.config.num_embeds_ada_norm
        if tokenizer is not None:
            channels = tokenizer.config.latent_channels
            expected = {"in_channels": channels, "out_channels": channels, "sample_size": tokenizer.config.grid_size}
            if not expected.items() <= main.items():
                raise ValueError(f"The transformer has {main}; the tokenizer's latents need {expected}.")
        if id2label is not None and any(not 0 <= class_id < num_classes for class_id in id2label):
            raise ValueError(f"`id2label` has ids outside 0..{num_classes - 1}: {sorted(id2label)}.")
        if guide_transformer is not None:
            guide = latents_and_classes(guide_transformer)
            if guide != main:
                message = f"The guide_transformer must model the transformer's latents and classes: it has {guide}"
                raise ValueError(f"{message}, the transformer {main}.")

    def card_description(self) -> str:
        names = list(self.labels) or [str(class_id) for class_id in range(self.num_classes)]
        guide = " and a guide DiT for autoguidance" if self.guide_transformer is not None else ""
        return (
            f"a class-conditional UniFlow pipeline for {self.num_classes} classes ({', '.join(names)}): a "
            f"{self.transformer.config.num_layers}-layer latent DiT{guide} samples latents for a class label, and "
            f"{self.tokenizer_facts()} decodes them to images with its patch-wise pixel flow decoder"
        )

    @classmethod
    def setting_names(cls) -> list[str]:
        """The `__init__` arguments that are not components, kept in `model_index.json`."""
        return cls._get_signature_keys(cls)[1]

    @property
    def settings(self) -> dict:
        return {name: self.config[name] for name in self.setting_names()}

    def sampling_setting(self, name: str, value=None):
        """The value a call uses for the sampling setting `name`: `value` (checked), else `config.<name>`, else the
        built-in default (decoder steps: the tokenizer's `num_sampling_steps`)."""
        value = check_sampling_setting(name, value)
        if value is None:
            value = self.config.get(name)
        if value is None and name == "decoder_num_inference_steps":
            value = self.tokenizer.config.num_sampling_steps
        if value is None:
            value = SAMPLING_SETTINGS[name][0]
        if name == "autoguidance_scale" and value != 1 and self.guide_transformer is None:
            raise ValueError(
                f"`autoguidance_scale` {value} needs a `guide_transformer`; this pipeline has none (1 = off)."
            )
        return value

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    @property
    def labels(self) -> dict[str, int]:
        return {name: class_id for class_id, name in (self.config.id2label or {}).items()}

    def get_label_ids(self, class_labels: int | str | Sequence[int | str]) -> list[int]:
        """Class ids for `class_labels`: ids, names from `id2label`, or a list mixing both."""
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        if isinstance(class_labels, (str, numbers.Integral)):
            class_labels = [class_labels]
        if not isinstance(class_labels, Sequence) or len(class_labels) == 0:
            raise TypeError(
                f"`class_labels` must be a class id, a class name, or a non-empty list of them, got {class_labels!r}."
            )
        ids = []
        for label in class_labels:
            if isinstance(label, bool) or not isinstance(label, (str, numbers.Integral)):
                raise TypeError(f"A class label must be an int id or a str name, got {type(label).__name__} {label!r}.")
            if isinstance(label, str) and label not in self.labels:
                known = ", ".join(repr(name) for name in self.labels) or "none: this pipeline has no id2label"
                raise ValueError(f"Unknown class name {label!r}. Known names: {known}.")
            ids.append(self.labels[label] if isinstance(label, str) else int(label))
            if not 0 <= ids[-1] < self.num_classes:
                raise ValueError(f"Class id {label} is out of range: ids run from 0 to {self.num_classes - 1}.")
        return ids

    def _latent_statistics(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.transformer.config.in_channels
        mean, std = self.config.latent_mean or [0.0] * channels, self.config.latent_std or [1.0] * channels
        return tuple(torch.tensor(v, device=device, dtype=dtype).reshape(1, channels, 1, 1) for v in (mean, std))

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Tokenizer latents (B, N, C) -> the transformer's space (B, C, grid, grid), `(latents - mean) / std`."""
        grid = latents_to_grid(latents, self.transformer.config.sample_size)
        mean, std = self._latent_statistics(grid.device, grid.dtype)
        return (grid - mean) / std

    def denormalize_latents(self, grid_latents: torch.Tensor) -> torch.Tensor:
        """The transformer's space (B, C, grid, grid) -> tokenizer latents (B, N, C)."""
        mean, std = self._latent_statistics(grid_latents.device, grid_latents.dtype)
        return (grid_latents * std + mean).flatten(2).transpose(1, 2)

    def prepare_latents(self, batch_size: int, generator=None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The latent flow's starting noise: `latents`, or drawn from `generator` in float32 (a seed gives the same
        noise in every dtype)."""
        config, device, dtype = self.transformer.config, self._execution_device, self.transformer.dtype
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
        Sampling settings left `None` take the pipeline's defaults (`pipe.sampling_setting(name)` says which applies).

        Args:
            class_labels (`int`, `str`, or a list of them): one image per label; ids or names from `id2label`.
            guidance_scale (`float`, *optional*): `v = v_null + guidance_scale * (v_class - v_null)`.
            generator (`torch.Generator` or a list of them, *optional*): draws the latent noise, then the decoder's;
                with one per image, a batch equals the images generated one by one.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (tokenizer
                latents `(batch, tokens, latent_channels)`).
            guidance_interval, autoguidance_interval (`tuple[float, float]`, *optional*): guide only the network
                calls at flow times `t_start <= t <= t_end` (0 = noise, 1 = data).
            autoguidance_scale (`float`, *optional*): adds `(autoguidance_scale - 1) * (v_class - v_guide)`.
            guidance_rescale (`float`, *optional*): diffusers' `rescale_noise_cfg` of the guided velocity.
            latents (`torch.Tensor`, *optional*): the latent flow's starting noise, in the transformer's space.
            decoder_latent_scale (`float`, *optional*): multiplies the latents before they are decoded.

        Examples:
        ```py
        >>> import uniflow_hf  # registers the UniFlow pipelines with diffusers
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("path/to/uniflow-class-conditional")
        >>> images = pipe(["Sneaker", "Bag"], generator=torch.manual_seed(0)).images
        ```
        """
        callback_on_step_end_tensor_inputs = check_call_arguments(
            num_images_per_prompt, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        guidance_scale = self.sampling_setting("guidance_scale", guidance_scale)
        guidance_start, guidance_end = self.sampling_setting("guidance_interval", guidance_interval)
        guidance_rescale = self.sampling_setting("guidance_rescale", guidance_rescale)
        autoguidance_scale = self.sampling_setting("autoguidance_scale", autoguidance_scale)
        autoguidance_start, autoguidance_end = self.sampling_setting("autoguidance_interval", autoguidance_interval)
        decoder_num_inference_steps = self.sampling_setting("decoder_num_inference_steps", decoder_num_inference_steps)
        decoder_latent_scale = self.sampling_setting("decoder_latent_scale", decoder_latent_scale)
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
            inputs = torch.cat([latents, latents]) if do_guidance else latents
            classes = labels_and_null if do_guidance else labels
            velocity = self.transformer(inputs, timestep=timestep.expand(len(classes)), class_labels=classes).sample
            velocity_class = velocity[:batch_size]
            if do_guidance:
                velocity_null = velocity[batch_size:]
                velocity = velocity_null + guidance_scale * (velocity_class - velocity_null)
                if guidance_rescale > 0:
                    velocity = rescale_noise_cfg(velocity, velocity_class, guidance_rescale)
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
            images = self.tokenizer.decode(
                latents * decoder_latent_scale, generator=generator, num_inference_steps=decoder_num_inference_steps
            )
            images = self.processor.postprocess(images, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

