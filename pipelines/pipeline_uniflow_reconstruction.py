# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Image -> UniFlow latents -> image: the tokenizer's round trip as a diffusers pipeline."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .pipeline_uniflow_utils import (
    OUTPUT_TYPES,
    UniFlowPipelineMixin,
    check_callback,
    check_decoder_scheduler,
    check_generator,
    check_num_inference_steps,
    check_output_type,
)


class UniFlowReconstructionPipeline(UniFlowPipelineMixin, DiffusionPipeline):
    r"""
    Reconstruct images with a UniFlow tokenizer: encode them to latents, then decode the latents with the patch-wise
    pixel flow decoder.

    This pipeline inherits from [`DiffusionPipeline`]: see there for the generic methods (saving, loading, moving
    to a device, progress-bar configuration). It is a thin orchestrator: the decoder's sampler is
    [`UniFlowModel.decode`]'s.

    Args:
        tokenizer ([`UniFlowModel`]): the UniFlow image tokenizer (encoder and flow decoder).
        scheduler ([`UniFlowFlowMatchScheduler`]): a record of the flow decoder's sampler, which is
            [`UniFlowModel.decode`]'s own (Euler steps over the tokenizer's `config.sampling_schedule`): it must
            describe that sampler, and gives the callback's timestep scale (`num_train_timesteps`).
        image_processor ([`UniFlowImageProcessor`], *optional*): the pre/post-processing. When `None` (it stays
            absent through save and load), one built for the tokenizer's input size (resize the short side,
            centre-crop to `config.image_size`) serves (`pipe.processor`).
    """

    model_cpu_offload_seq = "tokenizer"
    _optional_components = ["image_processor"]
    card_pipeline_tag = "image-to-image"
    card_tags = ("pixel-flow-decoder", "reconstruction")

    def __init__(self, tokenizer, scheduler: SchedulerMixin, image_processor=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, scheduler=scheduler, image_processor=image_processor)

    def card_description(self) -> str:
        return (
            f"a UniFlow reconstruction pipeline: {self.tokenizer_facts()} encodes images to latents and decodes them "
            "back with its patch-wise pixel flow decoder"
        )

    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        images: Any = None,
        num_images_per_prompt: int = 1,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of those): the image(s) to reconstruct
                (anything the image processor takes: uint8, or float in [0, 1]; any size, they are resized and
                centre-cropped); `image`, as diffusers' image-input pipelines name it.
            num_inference_steps (`int`, *optional*): flow decoder steps; the tokenizer's `num_sampling_steps` when
                `None`.
            generator (`torch.Generator` or a list of them, *optional*): the decoder's noise is drawn with it; with a
                list (one per image) each image draws its own, so a batch equals the images decoded one by one.
            noise (`torch.Tensor`, *optional*): the decoder's initial noise `(batch, tokens, channels * p * p)`
                (then `generator` is unused).
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"` (list of PIL images), `"np"` (float array
                `(batch, height, width, 3)` in [0, 1]), `"pt"` (tensor `(batch, 3, height, width)` in [0, 1]) or
                `"latent"`: the encoded latents `(batch, tokens, latent_channels)`, not decoded.
            return_dict (`bool`, *optional*, defaults to `True`): return an [`ImagePipelineOutput`] or a tuple.
            images: the former name of `image` (deprecated; still accepted, with a warning).
            num_images_per_prompt (`int`, *optional*, defaults to 1): reconstructions per image (each its own
                decoder noise), each image's consecutive.
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(self, step, timestep,
                callback_kwargs)`, diffusers' contract. The reconstruction has one latent step, the encoding: the
                callback is called once (step 0, timestep 1000: the data end of the flow) with the latents the decoder
                is about to decode, and the tensors it returns in a dict replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`): of
                `pipe._callback_tensor_inputs`.

        Examples:
        ```py
        >>> import uniflow_hf  # registers the UniFlow pipelines with diffusers
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("path/to/uniflow-reconstruction")
        >>> reconstruction = pipe(image, generator=torch.manual_seed(0)).images[0]
        ```

        Returns:
            [`ImagePipelineOutput`] with `images`, or `(images,)` when `return_dict=False`.
        """
        if images is not None:
            if image is not None:
                raise ValueError("Pass the images as `image` (`images` is its deprecated former name), not both.")
            warnings.warn("`images` is deprecated: pass the images to reconstruct as `image`.", FutureWarning, stacklevel=2)
            image = images
        if image is None:
            raise ValueError("`image` is required: the image(s) to reconstruct.")
        check_num_inference_steps(num_inference_steps, allow_none=True)
        check_num_inference_steps(num_images_per_prompt, "num_images_per_prompt")
        check_output_type(output_type, OUTPUT_TYPES + ("latent",))
        callback_on_step_end_tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)

        device = self._execution_device
        processor = self.processor
        pixel_values = processor(image, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=device, dtype=self.tokenizer.dtype)
        pixel_values = pixel_values.repeat_interleave(num_images_per_prompt, dim=0)
        check_generator(generator, len(pixel_values))

        latents = self.tokenizer.encode(pixel_values)
        timestep = torch.tensor(float(self.scheduler.config.num_train_timesteps), device=device)
        latents = self.run_step_end_callback(
            callback_on_step_end, callback_on_step_end_tensor_inputs, 0, timestep, {"latents": latents}
        )["latents"]
        if output_type == "latent":
            images = latents
        else:
            check_decoder_scheduler("scheduler", self.scheduler.config, self.tokenizer)
            reconstruction = self.decode_latents(
                latents,
                num_inference_steps,
                generator=generator,
                noise=noise,
                height=pixel_values.shape[-2],
                width=pixel_values.shape[-1],
            )
            images = processor.postprocess(reconstruction, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["UniFlowReconstructionPipeline"]
