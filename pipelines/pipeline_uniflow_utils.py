# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""What UniFlow's two pipelines share. Saved with every pipeline (loaded by `trust_remote_code=True` without
`uniflow_hf`), it imports only torch, diffusers and its siblings."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import shutil

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES, _fetch_class_library_tuple
from diffusers.utils.dynamic_modules_utils import get_relative_imports


OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Schedulers of UniFlow's flow convention (t = 0 noise -> t = 1 data, the model predicts v = data - noise). diffusers'
# flow-match schedulers run the other way (sigma = 1 - t, model output -v) and would walk the wrong way silently.
COMPATIBLE_SCHEDULERS = ("UniFlowFlowMatchScheduler",)
CARD_USAGE = (
    "from diffusers import DiffusionPipeline\n\n"
    "# without uniflow-hf: the code saved in this folder (from the Hub, download the whole folder first with\n"
    "# huggingface_hub.snapshot_download(repo_id): diffusers fetches only the code file a component names)\n"
    'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)\n\n'
    "# with uniflow-hf installed (pip install uniflow-hf): the package's classes\n"
    "import uniflow_hf\n\n"
    'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")'
)


def component_library_tuple(component) -> tuple[str, str]:
    """`(library, class name)` of `component` in `model_index.json`; ours as `(module file, class)`."""
    library, class_name = _fetch_class_library_tuple(component)
    return (library if library in LOADABLE_CLASSES else library.rsplit(".", 1)[-1]), class_name


def module_code_files(module) -> dict[str, str]:
    """File name -> source path of `module` and of the modules it imports relatively, recursively."""
    files, pending = {}, [module]
    while pending:
        module = pending.pop()
        file_name = module.__name__.rsplit(".", 1)[-1] + ".py"
        if file_name not in files:
            files[file_name] = inspect.getfile(module)
            package = module.__name__.rpartition(".")[0]
            pending += [importlib.import_module(f"{package}.{name}") for name in get_relative_imports(files[file_name])]
    return files


class UniFlowPipelineMixin:
    """Mixed into our `DiffusionPipeline`s (listed before it): records our components as `(module file, class)`,
    refuses schedulers of another flow convention, and saves the code of the pipeline and its components with it."""

    _callback_tensor_inputs = ["latents"]
    # components that earlier versions saved to describe the pixel decoder's sampler (`UniFlowModel.decode`)
    _former_decoder_schedulers = ()

    def __setattr__(self, name, value):
        if name == "scheduler" and value is not None and type(value).__name__ not in COMPATIBLE_SCHEDULERS:
            raise ValueError(
                f"`scheduler` is a {type(value).__name__}, which does not run UniFlow's flow convention (t = 0 noise "
                f"to t = 1 data, velocity v = data - noise). Compatible schedulers: {', '.join(COMPATIBLE_SCHEDULERS)}."
            )
        super().__setattr__(name, value)
        # `DiffusionPipeline` has just recorded the component under its module path; record the file name instead.
        if hasattr(type(value), "from_pretrained") and name in self.__dict__.get("_internal_dict", {}):
            self.register_to_config(**{name: component_library_tuple(value)})

    def register_to_config(self, **kwargs):
        """When `from_pretrained` records the folder it loaded, the folder's former decoder schedulers (not loaded)
        must describe the tokenizer's sampler, Euler steps over its schedule."""
        super().register_to_config(**kwargs)
        folder, tokenizer = kwargs.get("_name_or_path"), self.__dict__.get("tokenizer")  # not the config entry
        for name in self._former_decoder_schedulers if folder and tokenizer is not None else ():
            path = os.path.join(str(folder), name, "scheduler_config.json")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as file:
                saved = {"solver": "euler", "schedule": "linear", "shift": 1.0, **json.load(file)}  # with the defaults
            expected = {"solver": "euler", "schedule": tokenizer.config.sampling_schedule, "shift": 1.0}
            actual = {key: saved[key] for key in expected}
            if actual != expected:
                raise ValueError(
                    f"`{name}` says {actual}, but the pixel decoder samples by Euler steps over the tokenizer's "
                    f"schedule ({expected}): set `tokenizer.config.sampling_schedule` and delete the folder's `{name}`."
                )

    def to_json_string(self) -> str:
        """`model_index.json` names the pipeline `[module file, class]`."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = [type(self).__module__.rsplit(".", 1)[-1], type(self).__name__]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """Also works with `device="cpu"`: the hooks execute on `cpu`, not `cpu:0` (where torch copies a parameter
        into a plain tensor that Accelerate fails to offload)."""
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)
        if self._offload_device.type != "cpu":
            return
        models = [component for component in self.components.values() if isinstance(component, torch.nn.Module)]
        for module in (module for model in models for module in model.modules()):
            hook = getattr(module, "_hf_hook", None)
            for hook in getattr(hook, "hooks", [hook]):  # a `SequentialHook` holds several
                if getattr(hook, "execution_device", None) is not None:
                    hook.execution_device = torch.device("cpu")

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """`DiffusionPipeline.save_pretrained`, plus the code of the pipeline and of our components, the image
        processor also in `tokenizer/`, and a model card unless the folder has one; `push_to_hub` then uploads it."""
        try:
            cards = importlib.import_module("uniflow_hf.model_card")
        except ImportError:  # only the code saved beside a pipeline is loaded: no card
            cards = None
        with cards.saving_pipeline() if cards is not None else contextlib.nullcontext():
            super().save_pretrained(save_directory, *args, **kwargs)
        code = [("", self)]  # (folder, the object whose code is saved there)
        for name, component in self.components.items():
            if component is not None and component_library_tuple(component)[0] not in LOADABLE_CLASSES:
                code.append((name, component))
        if self.tokenizer is not None:
            self.processor.save_pretrained(os.path.join(save_directory, "tokenizer"))
            code.append(("tokenizer", self.processor))
        for folder, owner in code:
            os.makedirs(os.path.join(save_directory, folder), exist_ok=True)
            for file_name, source in module_code_files(inspect.getmodule(type(owner))).items():
                target = os.path.join(save_directory, folder, file_name)
                if not os.path.exists(target) or not os.path.samefile(source, target):
                    shutil.copyfile(source, target)
        if cards is not None:  # README.md, unless the folder has one
            cards.save_model_card(
                save_directory, title=type(self).__name__, description=self.card_description(), usage=CARD_USAGE,
                library_name="diffusers", pipeline_tag=self.card_pipeline_tag, tags=self.card_tags,
                base_model=cards.hub_repo_id(self.name_or_path),
            )
        if push_to_hub:  # after the code and the card (diffusers' own push would write a generic card)
            from huggingface_hub import create_repo

            repo_id = kwargs.get("repo_id") or os.path.basename(os.path.normpath(save_directory))
            token = kwargs.get("token")
            repo_id = create_repo(repo_id, exist_ok=True, private=kwargs.get("private"), token=token).repo_id
            hub_kwargs = {key: kwargs[key] for key in ("commit_message", "create_pr") if key in kwargs}
            self._upload_folder(save_directory, repo_id, token=token, **hub_kwargs)

    def tokenizer_facts(self) -> str:
        config = self.tokenizer.config
        return (
            f"a UniFlow tokenizer of {config.image_size}x{config.image_size} images ({config.patch_size}x"
            f"{config.patch_size} patches, one latent of {config.latent_channels} channels per patch, "
            f"{config.grid_size}x{config.grid_size} latents per image)"
        )

    @property
    def processor(self):
        """The `image_processor` component, else one built for the tokenizer's input size."""
        return default_image_processor(self.tokenizer) if self.image_processor is None else self.image_processor

    def run_step_end_callback(self, callback, tensor_inputs: list[str], step: int, timestep, tensors: dict) -> dict:
        """diffusers' `callback_on_step_end` contract; returns `tensors`, updated by what the callback returns."""
        if callback is None:
            return tensors
        outputs = callback(self, step, timestep, {name: tensors[name] for name in tensor_inputs})
        return {**tensors, **{name: value for name, value in (outputs or {}).items() if name in tensors}}


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_call_arguments(num_images_per_prompt, output_type: str, callback, tensor_inputs) -> list[str]:
    """Checks the arguments both pipelines take; returns the tensor names `callback` is given."""
    if not is_positive_int(num_images_per_prompt):
        raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback.tensor_inputs
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback).__name__}.")
    allowed = UniFlowPipelineMixin._callback_tensor_inputs
    if any(name not in allowed for name in tensor_inputs):
        raise ValueError(f"`callback_on_step_end_tensor_inputs` may name {allowed}, got {tensor_inputs}.")
    return list(tensor_inputs)


def default_image_processor(tokenizer):
    """The official release's `UniFlowImageProcessor` for `tokenizer`'s input size."""
    package = type(tokenizer).__module__.rpartition(".")[0]  # `uniflow_hf.modeling`, or the saved code
    try:
        processing = importlib.import_module(f"{package}.image_processing_uniflow")
    except ImportError as error:  # `trust_remote_code` loaded only the files the tokenizer imports
        folder = tokenizer.name_or_path  # a saved pipeline's `tokenizer/` holds the processor and its code
        if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
            raise ValueError(
                "This pipeline has no `image_processor` and no image processor code: set `pipe.image_processor` "
                "(e.g. `AutoImageProcessor.from_pretrained(<folder>/tokenizer, trust_remote_code=True)`)."
            ) from error
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    return processing.UniFlowImageProcessor.from_image_size(tokenizer.config.image_size)


def check_generator(generator, batch_size: int) -> None:
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}.")
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"Got {len(generator)} generators for {batch_size} images: pass one per image, or one.")

