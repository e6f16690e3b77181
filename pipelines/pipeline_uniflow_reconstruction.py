# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Image -> UniFlow latents -> image: the tokenizer's round trip as a diffusers pipeline."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .pipeline_uniflow_utils import UniFlowPipelineMixin, check_call_arguments, check_generator


class UniFlowReconstructionPipeline(UniFlowPipelineMixin, DiffusionPipeline):
    r"""
    Reconstruct images with a UniFlow tokenizer: encode them to latents, then decode the latents with the pixel flow
    decoder ([`UniFlowModel.decode`]). Without `image_processor`, `pipe.processor` is built for the tokenizer.
    """

    model_cpu_offload_seq = "tokenizer"
    _optional_components = ["image_processor"]
    _former_decoder_schedulers = ("scheduler",)
    card_pipeline_tag = "image-to-image"
    card_tags = ("pixel-flow-decoder", "reconstruction")

    def __init__(self, tokenizer, image_processor=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, image_processor=image_processor)

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
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of those): anything the image processor
                takes (`images` is its deprecated former name).
            num_inference_steps (`int`, *optional*): the pixel flow decoder's steps (default: the tokenizer's).
            generator (`torch.Generator` or a list of them, *optional*): draws the decoder's noise; with one per image,
                a batch equals the images decoded one by one.
            noise (`torch.Tensor`, *optional*): the decoder's initial noise `(batch, tokens, channels * p * p)`.
            callback_on_step_end (`Callable`, *optional*): called once (step 0, timestep 1000) with the latents about
                to be decoded.

        Examples:
        ```py
        >>> import uniflow_hf  # registers the UniFlow pipelines with diffusers
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("path/to/uniflow-reconstruction")
        >>> reconstruction = pipe(image, generator=torch.manual_seed(0)).images[0]
        ```
        """
        if images is not None:
            if image is not None:
                raise ValueError("Pass the images as `image` (`images` is its deprecated former name), not both.")
            warnings.warn("`images` is deprecated: pass the images as `image`.", FutureWarning, stacklevel=2)
            image = images
        if image is None:
            raise ValueError("`image` is required: the image(s) to reconstruct.")
        callback_on_step_end_tensor_inputs = check_call_arguments(
            num_images_per_prompt, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )

        device, processor = self._execution_device, self.processor
        pixel_values = processor(image, return_tensors="pt").pixel_values.to(device=device, dtype=self.tokenizer.dtype)
        pixel_values = pixel_values.repeat_interleave(num_images_per_prompt, dim=0)
        check_generator(generator, len(pixel_values))

        latents = self.tokenizer.encode(pixel_values)
        timestep = torch.tensor(1000.0, device=device)  # the network timestep 1000 * t at t = 1, the data
        latents = self.run_step_end_callback(
            callback_on_step_end, callback_on_step_end_tensor_inputs, 0, timestep, {"latents": latents}
        )["latents"]
        if output_type == "latent":
            images = latents
        else:
            decoded = self.tokenizer.decode(latents, noise, generator, num_inference_steps, *pixel_values.shape[-2:])
            images = processor.postprocess(decoded, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

