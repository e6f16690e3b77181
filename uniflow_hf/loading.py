# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""How the package loads UniFlow models: `from_pretrained` of `UniFlowPreTrainedModel` once `uniflow_hf` is imported.
It maps the official release's parameter names and refuses what transformers only warns about: weights a folder
lacks or (for `UniFlowModel`) has no place for, pickled-only folders and folders without a config. Code loaded with
`trust_remote_code` alone loads as transformers does."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .modeling import OFFICIAL_TO_HF_KEY_MAPPING, UniFlowForImageClassification, UniFlowModel


logger = logging.get_logger(__name__)


def refuse_pickled_only_folder(folder: str) -> None:
    """Raise if a local `folder` holds pickled weights but no safetensors ones (loading a pickle can run code)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    if any(name.endswith((".safetensors", ".safetensors.index.json")) for name in names):
        return
    pickled = sorted(name for name in names if name.startswith("pytorch_model") and ".bin" in name)
    if pickled:
        raise OSError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), no model.safetensors. Unpickling can run "
            "arbitrary code, so uniflow-hf loads safetensors only by default. If you trust these files, pass "
            "`use_safetensors=False` explicitly (then re-save the model: `save_pretrained` writes safetensors)."
        )


def from_pretrained(
    cls,
    pretrained_model_name_or_path,
    *model_args,
    initialize_missing_weights: bool = False,
    output_loading_info: bool = False,
    **kwargs,
):
    """`PreTrainedModel.from_pretrained` that also loads the official release (its names are mapped) and refuses to
    random-initialise weights the folder lacks, unless `initialize_missing_weights=True` (to grow a model: they are
    then initialised by `_init_weights` and reported). `UniFlowModel` also refuses weights it has no place for; the
    tower and the classifier take their part of larger folders. A classifier's head may be new."""
    kwargs.setdefault("key_mapping", OFFICIAL_TO_HF_KEY_MAPPING)
    folder = os.path.join(os.fspath(pretrained_model_name_or_path or ""), kwargs.get("subfolder") or "")
    has_config = any(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json"))
    if os.path.isdir(folder) and kwargs.get("config") is None and not has_config:
        raise OSError(
            f"{folder} has no config.json (nor adapter_config.json): it is not a saved {cls.__name__} folder or a "
            "PEFT adapter of one."
        )
    if kwargs.get("use_safetensors") is None:
        refuse_pickled_only_folder(folder)
        kwargs["use_safetensors"] = True
    model, info = PreTrainedModel.from_pretrained.__func__(
        cls, pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
    )
    new_head = ("norm.", "classifier.") if isinstance(model, UniFlowForImageClassification) else ()
    missing = sorted(key for key in info["missing_keys"] if not (new_head and key.startswith(new_head)))
    source = pretrained_model_name_or_path if pretrained_model_name_or_path is not None else "The given state_dict"
    if missing and not initialize_missing_weights:
        raise ValueError(
            f"{source} does not hold weights for {len(missing)} parameters of {cls.__name__} (e.g. {missing[:5]}): "
            "its weights don't match its config. Refusing to initialise them randomly; check the folder, or, to grow "
            "a model on purpose (e.g. more global blocks than the checkpoint), pass `initialize_missing_weights=True`."
        )
    if missing:
        # transformers skips the model-level `_init_weights` of a model outside the library whose own parameters
        # were loaded; the `init` functions leave loaded parameters (flagged `_is_hf_initialized`) alone.
        with torch.no_grad():
            model._init_weights(model)
        logger.warning(
            f"{source} does not hold weights for {len(missing)} parameters of {cls.__name__}; initialised by "
            f"`_init_weights` (`initialize_missing_weights=True`): {missing}"
        )
    unexpected = sorted(info["unexpected_keys"]) if isinstance(model, UniFlowModel) else []
    if unexpected:
        raise ValueError(
            f"{source} holds {len(unexpected)} weights that {cls.__name__} has no place for (e.g. {unexpected[:5]}): "
            "its weights don't match its config.json (e.g. more blocks than the config says). Refusing to drop them "
            "silently; check the folder's config.json."
        )
    model._weight_conversions = []  # save with our names, not those loaded
    return (model, info) if output_loading_info else model
