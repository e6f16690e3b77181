# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Loading UniFlow models: the official release's parameter names and `from_pretrained`'s checks (weights that a
folder lacks or has no place for, pickled-only folders). `modeling_uniflow.py`'s `from_pretrained` methods call into
it. (How the package saves, atomically, is `uniflow_hf/saving.py`.)"""

from __future__ import annotations

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Official parameter names (github.com/ZhengrongYue/UniFlow) -> ours. Applied on load of an official folder.
OFFICIAL_TO_HF_KEY_MAPPING = {
    r"^(embeddings|encoder)\.": r"vision_model.\1.",
    r"^chal_proj\.c_fc\.": "latent_proj.fc1.",
    r"^chal_proj\.c_proj\.": "latent_proj.fc2.",
    r"^chal_unproj\.c_fc\.": "latent_unproj.fc1.",
    r"^chal_unproj\.c_proj\.": "latent_unproj.fc2.",
    r"^global_block_pos_embed$": "global_position_embedding",
    r"^decoder_pos_embed$": "decoder_position_embedding",
    r"^flow_head\.net\.time_embed\.mlp\.0\.": "flow_head.time_embed.linear_1.",
    r"^flow_head\.net\.time_embed\.mlp\.2\.": "flow_head.time_embed.linear_2.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.in_ln\.": r"flow_head.res_blocks.\1.norm.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.mlp\.0\.": r"flow_head.res_blocks.\1.fc1.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.mlp\.2\.": r"flow_head.res_blocks.\1.fc2.",
    r"^flow_head\.net\.(res_blocks\.\d+|final_layer)\.adaLN_modulation\.1\.": r"flow_head.\1.modulation.",
    r"^flow_head\.net\.": "flow_head.",
}


def _refuse_pickled_only_folder(folder: str) -> None:
    """Raise if a local `folder` holds pickled weights but no safetensors ones (loading a pickle can run code)."""
    import os

    if not os.path.isdir(folder):
        return
    names = os.listdir(folder)
    if any(name.endswith((".safetensors", ".safetensors.index.json")) for name in names):
        return
    # What transformers would unpickle: pytorch_model.bin, its shards and their index.
    pickled = sorted(name for name in names if name.startswith("pytorch_model") and ".bin" in name)
    if pickled:
        raise OSError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), no model.safetensors. Unpickling can run "
            "arbitrary code, so uniflow-hf loads safetensors only by default. If you trust these files, pass "
            "`use_safetensors=False` explicitly (then re-save the model: `save_pretrained` writes safetensors)."
        )


def _local_checkpoint_keys(folder: str, variant: str | None) -> list[str] | None:
    """Parameter names in the safetensors weights of a local `folder` (headers only), or None if it has none."""
    import json
    import os

    from safetensors import safe_open

    suffix = f".{variant}" if variant else ""
    index_file = os.path.join(folder, f"model{suffix}.safetensors.index.json")
    weights_file = os.path.join(folder, f"model{suffix}.safetensors")
    if os.path.isfile(weights_file):
        with safe_open(weights_file, framework="pt") as handle:
            return list(handle.keys())
    if os.path.isfile(index_file):
        with open(index_file, encoding="utf-8") as handle:
            return list(json.load(handle)["weight_map"])
    return None


def _unexpected_decoder_keys(model, folder: str, key_mapping: dict, variant: str | None) -> set[str]:
    """Decoder-side checkpoint parameters (after `key_mapping`) that `model` has no place for.

    transformers merges a sub-model's `_keys_to_ignore_on_load_unexpected` into its parent's, so a `UniFlowModel`
    with our own tower inherits the tower's "ignore the decoder keys" and would silently drop, e.g., the weights of
    extra flow-head blocks. This finds those keys in the (local, safetensors) checkpoint; the decoder has no weight
    conversions, so renaming with `key_mapping` is exact for them."""
    import re

    from transformers.core_model_loading import WeightRenaming, rename_source_key

    from .modeling_uniflow import UniFlowVisionModel

    if isinstance(model, UniFlowVisionModel) or not isinstance(getattr(model, "vision_model", None), UniFlowVisionModel):
        return set()
    keys = _local_checkpoint_keys(folder, variant) or []
    renamings = [WeightRenaming(source_patterns=source, target_patterns=target) for source, target in key_mapping.items()]
    leaked = [re.compile(pattern) for pattern in UniFlowVisionModel._keys_to_ignore_on_load_unexpected]
    expected = set(model.state_dict())
    renamed_keys = (rename_source_key(key, renamings, [])[0] for key in keys)
    return {key for key in renamed_keys if key not in expected and any(pattern.search(key) for pattern in leaked)}


def from_pretrained_with_key_mapping(parent, cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """`from_pretrained` that maps official (or sibling-class) parameter names, refuses to random-initialise weights
    the folder lacks or to drop weights it has no place for, and saves with our own names (never reverting to the
    names it loaded). Pickled weights (`pytorch_model.bin`) load only with an explicit `use_safetensors=False`.

    `initialize_missing_weights=True` is the opt-in for growing a model (a checkpoint loaded into a config with
    more global blocks or flow-head blocks, or `from_pretrained(None, config=..., state_dict=...)` with part of the
    weights): the weights the checkpoint lacks are initialised by `_init_weights`, as in a new model, and reported
    in a warning and in `output_loading_info`'s `missing_keys`."""
    import os
    import re

    from .modeling_uniflow import UniFlowForImageClassification, UniFlowVisionModel

    kwargs.setdefault("key_mapping", dict(cls._checkpoint_key_mapping))
    wants_info = kwargs.pop("output_loading_info", False)
    initialize_missing_weights = kwargs.pop("initialize_missing_weights", False)
    folder = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else ""
    if kwargs.get("subfolder"):
        folder = os.path.join(folder, kwargs["subfolder"])
    is_model_folder = any(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json"))
    if os.path.isdir(folder) and kwargs.get("config") is None and not is_model_folder:
        # transformers would silently build the default (448 px, 24-layer) config instead. (A PEFT adapter folder
        # names its base model; transformers loads that, then the adapter.)
        raise OSError(
            f"{folder} has no config.json (nor adapter_config.json): it is not a saved {cls.__name__} folder or a "
            "PEFT adapter of one."
        )
    if kwargs.get("use_safetensors") is None:
        _refuse_pickled_only_folder(folder)
        kwargs["use_safetensors"] = True
    model, info = parent.from_pretrained.__func__(
        cls, pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
    )
    new_head = getattr(cls, "_new_head_keys", None)  # a head that may be newly initialised (transformers reports it)
    missing = [
        key for key in info["missing_keys"]
        if not key.startswith("distillation_teacher.") and not (new_head and re.match(new_head, key))
    ]
    source = pretrained_model_name_or_path if pretrained_model_name_or_path is not None else "The given state_dict"
    if missing and not initialize_missing_weights:
        raise ValueError(
            f"{source} does not hold weights for {len(missing)} parameters of {cls.__name__} (e.g. "
            f"{sorted(missing)[:5]}): its weights don't match its config. Refusing to initialise them randomly; check "
            "the folder, or, to grow a model on purpose (e.g. more global blocks than the checkpoint), pass "
            "`initialize_missing_weights=True`."
        )
    if missing:
        # transformers skips the model-level `_init_weights` (the flow head's zero-initialised layers, the decoder
        # position embeddings) of a model outside the library whose own parameters were loaded; run it here. The
        # `init` functions leave the loaded parameters (flagged `_is_hf_initialized`) alone.
        with torch.no_grad():
            model._init_weights(model)
        logger.warning(
            f"{source} does not hold weights for {len(missing)} parameters of {cls.__name__}; initialised by "
            f"`_init_weights` (`initialize_missing_weights=True`): {sorted(missing)}"
        )
    # The tower loads from folders holding more than itself (a UniFlowModel, a classifier) and leaves the rest, with
    # transformers' load report; the full model must use every weight of its folder.
    takes_encoder_only = isinstance(model, (UniFlowVisionModel, UniFlowForImageClassification))
    unexpected = set() if takes_encoder_only else set(info["unexpected_keys"])
    if not takes_encoder_only and os.path.isdir(folder) and kwargs.get("use_safetensors") is not False:
        unexpected |= _unexpected_decoder_keys(model, folder, kwargs["key_mapping"], kwargs.get("variant"))
    if unexpected:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds {len(unexpected)} weights that {cls.__name__} has no place for "
            f"(e.g. {sorted(unexpected)[:5]}): its weights don't match its config.json (e.g. more blocks than the "
            "config says). Refusing to drop them silently; check the folder's config.json."
        )
    model._weight_conversions = []
    return (model, info) if wants_info else model


__all__ = ["OFFICIAL_TO_HF_KEY_MAPPING"]
