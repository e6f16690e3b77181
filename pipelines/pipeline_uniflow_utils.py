# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""What UniFlow's two pipelines share: how their components are recorded in `model_index.json`, input checks,
the default image processor and the flow decoder run under a progress bar."""

from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple


# The library name that `model_index.json` records for our own component classes.
LIBRARY_NAME = "uniflow_hf"
OUTPUT_TYPES = ("pil", "np", "pt")


def component_library_tuple(component) -> tuple[str, str]:
    """`(library, class name)` under which diffusers records `component` in `model_index.json`.

    diffusers records a class from outside its known libraries under its full module path (e.g.
    `uniflow_hf.modeling.modeling_uniflow`); a class exported by `uniflow_hf` is recorded as `("uniflow_hf", name)`
    instead, so saved folders don't depend on where our modules live."""
    import uniflow_hf

    component_class = component if isinstance(component, type) else type(component)
    if getattr(uniflow_hf, component_class.__name__, None) is component_class:
        return LIBRARY_NAME, component_class.__name__
    return _fetch_class_library_tuple(component)


class UniFlowPipelineMixin:
    """Mixed into our `DiffusionPipeline`s (listed before it). Records `uniflow_hf` components in `model_index.json`
    as `("uniflow_hf", name)`, whether set at construction (`register_modules`) or later (`pipe.tokenizer = ...`)."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        # `DiffusionPipeline` has just recorded the component under its module path; record the short name instead.
        if hasattr(type(value), "from_pretrained") and name in self.__dict__.get("_internal_dict", {}):
            self.register_to_config(**{name: component_library_tuple(value)})

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """`DiffusionPipeline.enable_sequential_cpu_offload`, which also works with `device="cpu"`. diffusers names
        the execution device with an index (`cpu:0`); torch copies a CPU parameter moved to `cpu:0` into a plain
        tensor, which Accelerate then fails to offload after the module's forward ("new() received an invalid
        combination of arguments"). On the CPU the hooks therefore execute on `cpu`."""
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)
        if self._offload_device.type != "cpu":
            return
        for component in self.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for module in component.modules():
                hook = getattr(module, "_hf_hook", None)
                for hook in getattr(hook, "hooks", [hook]):  # a `SequentialHook` holds several
                    if getattr(hook, "execution_device", None) is not None:
                        hook.execution_device = torch.device("cpu")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`DiffusionPipeline.save_pretrained`, then a model card (README.md) unless the folder has one."""
        from uniflow_hf.modeling.model_card_uniflow import save_model_card, saving_pipeline

        with saving_pipeline():
            super().save_pretrained(save_directory, *args, **kwargs)
        save_model_card(save_directory, self)

    @property
    def processor(self):
        """The `image_processor` component, or, where it is absent (it is optional: `pipe.image_processor = None`),
        the tokenizer's default one (`default_image_processor`)."""
        if self.image_processor is not None:
            return self.image_processor
        return default_image_processor(self.tokenizer)

    def decode_latents(
        self,
        latents: torch.Tensor,
        scheduler,
        num_inference_steps: int | None,
        generator=None,
        noise: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """`tokenizer.decode`: the decoder's own Euler loop over the tokenizer's `config.sampling_schedule`, the one
        owner of the decoder's schedule. `scheduler` (the pipeline's decoder scheduler component, kept so that saved
        folders load) must describe that same sampler; anything else is refused rather than silently ignored."""
        expected = {"solver": "euler", "schedule": self.tokenizer.config.sampling_schedule, "shift": 1.0}
        actual = {name: scheduler.config[name] for name in expected}
        if actual != expected:
            raise ValueError(
                f"The pipeline's decoder scheduler says {actual}, but the tokenizer's pixel decoder samples by Euler steps "
                f"over its config's schedule ({expected}). Set `tokenizer.config.sampling_schedule` to choose the "
                "decoder's schedule, and give the pipeline a matching `UniFlowFlowMatchScheduler("
                f"schedule={expected['schedule']!r})`."
            )
        return self.tokenizer.decode(
            latents, noise=noise, generator=generator, num_inference_steps=num_inference_steps, height=height, width=width
        )


def default_image_processor(tokenizer):
    """A `UniFlowImageProcessor` for `tokenizer`'s input size (`UniFlowImageProcessor.from_image_size`): the
    official release's preprocessing."""
    from uniflow_hf.modeling import UniFlowImageProcessor

    return UniFlowImageProcessor.from_image_size(tokenizer.config.image_size)


def check_num_inference_steps(value, name: str = "num_inference_steps", allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


def check_output_type(output_type: str, accepted: tuple[str, ...] = OUTPUT_TYPES) -> None:
    if output_type not in accepted:
        raise ValueError(f"`output_type` must be one of {accepted}, got {output_type!r}.")


def check_generator(generator, batch_size: int) -> None:
    """One `torch.Generator` for the batch, or a list with one per image (each image then draws its own noise)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for {batch_size} images: pass one per image, or one.")
        return
    raise TypeError(
        f"`generator` must be a torch.Generator or a list of them (one per image), got {type(generator).__name__}."
    )


__all__ = ["UniFlowPipelineMixin", "component_library_tuple", "default_image_processor"]
