# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""How the package saves and loads UniFlow models: `save_pretrained` and `from_pretrained` of
`UniFlowPreTrainedModel` once `uniflow_hf` is imported. Saves go through a staging folder (a killed save leaves the
previous model intact), gather sharded (FSDP2) models and add the model card. Loads map the official release's
parameter names and refuse what transformers only warns about: weights a folder lacks or (for `UniFlowModel`) has
no place for, pickled-only folders and folders without a config. Code loaded with `trust_remote_code` alone saves
and loads as transformers does."""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # Windows: staging folders of killed saves are not recognised
    fcntl = None

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from transformers.utils import logging

from .model_card import save_model_card
from .modeling import OFFICIAL_TO_HF_KEY_MAPPING, UniFlowForImageClassification, UniFlowModel


logger = logging.get_logger(__name__)


def save_pretrained(
    self,
    save_directory,
    is_main_process: bool = True,
    *,
    variant: str | None = None,
    max_shard_size: int | str = "50GB",
    safe_serialization: bool = True,
    **kwargs,
):
    """`PreTrainedModel.save_pretrained` through a staging folder beside `save_directory`: only a complete save
    replaces the files there (other files are kept, except weight files of the same variant that it does not
    overwrite), so a killed save leaves the previous model intact; staging folders of killed saves are removed. A
    model sharded by FSDP2 is gathered (every process must call this) and rank 0 writes it. The folder gets the code
    of the class and `auto_map` (`AutoModel` builds the encoder tower), so it loads without uniflow-hf.

    The signature names `variant`, `max_shard_size` and `safe_serialization` because diffusers passes a component
    only the arguments its signature names; transformers v5 writes safetensors only."""
    if not safe_serialization:
        logger.warning("`safe_serialization=False` is ignored: transformers v5 saves safetensors only.")
    auto_map = getattr(self.config, "auto_map", None) or {}
    if self.config.encoder_config is None:  # the tower is UniFlow's own encoder only
        self.config.auto_map = {**auto_map, "AutoModel": "modeling_uniflow.UniFlowVisionModel"}
    kwargs.update(variant=variant, max_shard_size=max_shard_size)
    save = functools.partial(PreTrainedModel.save_pretrained, self)
    if kwargs.get("state_dict") is None and any(isinstance(p, DTensor) for p in self.parameters()):
        # Sharded by FSDP2: a collective, every process gets here; rank 0 gets the full state dict on its CPU.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        kwargs["state_dict"] = get_model_state_dict(self, options=options)
        if torch.distributed.get_rank() != 0:
            return  # only rank 0 holds the gathered weights, and writes them
    if not is_main_process or kwargs.get("distributed_checkpoint"):
        return save(save_directory, is_main_process=is_main_process, **kwargs)
    save_directory = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory` ({save_directory}) is a file; pass a folder.")
    if kwargs.get("push_to_hub"):
        kwargs.setdefault("repo_id", os.path.basename(save_directory))
    parent = os.path.dirname(save_directory)
    os.makedirs(parent, exist_ok=True)
    remove_abandoned_staging_folders(save_directory)
    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(save_directory)}.saving-", dir=parent)
    except PermissionError:  # a writable folder in a read-only parent: stage inside it
        os.makedirs(save_directory, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".saving-", dir=save_directory)
    lock = lock_folder(staging)
    try:
        save(staging, **kwargs)
        unpin_dtype(staging)
        save_model_card(staging, self, existing_folder=save_directory)  # README.md, unless the folder has one
        if os.path.isdir(save_directory):
            move_saved_files(staging, save_directory)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private
            os.rename(staging, save_directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
    """`push_to_hub` puts transformers' generic card into the folder it uploads: upload ours instead (a card already
    on the Hub is kept)."""
    save_model_card(working_dir, self, replace_generic=True, repo_id=repo_id)
    return PreTrainedModel._upload_modified_files(self, working_dir, repo_id, *args, **kwargs)


# model[.variant][-00001-of-00002].safetensors and model[.variant].safetensors.index.json
_SAFETENSORS_WEIGHTS_FILE = r"model(?P<variant>\.[^.-]+)?(?:-\d{5}-of-\d{5})?\.safetensors(?:\.index\.json)?"


def move_saved_files(staging: str, save_directory: str) -> None:
    """Move a finished save into `save_directory` (config.json last), then delete the weight files of the same
    variant that it did not write."""
    new_names = sorted(os.listdir(staging), key=lambda name: name == "config.json")
    new_variants = {
        match["variant"] for name in new_names if (match := re.fullmatch(_SAFETENSORS_WEIGHTS_FILE, name))
    }
    stale = [
        name
        for name in os.listdir(save_directory)
        if name not in new_names
        and (match := re.fullmatch(_SAFETENSORS_WEIGHTS_FILE, name))
        and match["variant"] in new_variants
    ]
    for name in new_names:
        target = os.path.join(save_directory, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    for name in stale:
        os.remove(os.path.join(save_directory, name))


def lock_folder(folder: str) -> int | None:
    """Lock `folder` until the returned descriptor is closed or the process dies (POSIX `flock`; None elsewhere)."""
    if fcntl is None:
        return None
    lock = os.open(folder, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def remove_abandoned_staging_folders(save_directory: str) -> None:
    """Delete the staging folders beside and in `save_directory` that no running save holds (killed saves)."""
    if fcntl is None:
        return
    parent, name = os.path.split(save_directory)
    beside = glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.saving-*"))
    for path in beside + glob.glob(os.path.join(glob.escape(save_directory), ".saving-*")):
        try:
            lock = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            logger.info(f"Removing {path}, left by a save that was killed.")
            shutil.rmtree(path, ignore_errors=True)
        except BlockingIOError:
            pass  # a save still running
        finally:
            os.close(lock)


def unpin_dtype(folder: str) -> None:
    """Drop `dtype` from `folder`'s config.json: one config serves every variant saved beside (`variant="fp16"`),
    and `from_pretrained`'s default `dtype="auto"` then loads each in the dtype of its weights."""
    config_file = os.path.join(folder, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
        config.pop("dtype", None)
        with open(config_file, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
