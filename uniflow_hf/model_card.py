# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Model cards written from the saved config, saying how to load the folder with uniflow-hf and without it
(`trust_remote_code=True`); `UniFlowPreTrainedModel.save_pretrained` (uniflow_hf/serialization.py) and `push_to_hub`
write `save_model_card`'s card, pipelines theirs with `create_model_card`."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re


MODEL_CARD_NAME = "README.md"
LICENSE = "apache-2.0"
TAGS = ("uniflow", "uniflow-hf")
PAPER = "UniFlow (Yue et al., ICLR 2026, [arXiv:2510.10575](https://arxiv.org/abs/2510.10575))"
# transformers' card for a model pushed without one (`transformers.utils.hub.create_and_tag_model_card`).
_GENERIC_CARD_SENTENCE = "This is the model card of a 🤗 transformers model that has been pushed on the Hub"
_HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_saving_pipeline = contextvars.ContextVar("uniflow_saving_pipeline", default=False)


def hub_repo_id(name_or_path) -> str | None:
    """`name_or_path` when it names a Hub repository ("owner/name", not a local folder), else None."""
    name = os.fspath(name_or_path or "")
    if _HUB_REPO_ID.fullmatch(name) and not os.path.exists(name):
        return name
    return None


def create_model_card(
    title: str, description: str, library_name: str, pipeline_tag: str, tags: tuple[str, ...] = (),
    base_model: str | None = None, usage: str | None = None,
):
    """A `huggingface_hub.ModelCard`: `description` completes "This folder holds ...", `usage` is Python code."""
    from huggingface_hub import ModelCard, ModelCardData

    tags = list(dict.fromkeys((*TAGS, *tags)))
    data = ModelCardData(
        license=LICENSE, library_name=library_name, pipeline_tag=pipeline_tag, tags=tags, base_model=base_model
    )
    text = f"# {title}\n\nThis folder holds {description}; see {PAPER}.\n"
    if base_model:
        text += f"\nIt is derived from [{base_model}](https://huggingface.co/{base_model}).\n"
    if usage:
        text += f"\n## Usage\n\n```python\n{usage}\n```\n"
    text += "\nThis card was written by `uniflow-hf` from the saved configuration; edit it freely (saves keep it).\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _encoder_facts(config) -> str:
    if config.encoder_config is not None:
        return f"a {config.encoder_config.model_type} encoder (width {config.hidden_size})"
    return f"a {config.num_hidden_layers}-layer ViT encoder (width {config.hidden_size})"


def _input_facts(config) -> str:
    return (
        f"{config.image_size}x{config.image_size} {config.num_channels}-channel images in "
        f"{config.patch_size}x{config.patch_size} patches"
    )


def _uniflow_card_parts(model) -> tuple[str, tuple[str, ...], str]:
    """(pipeline tag, tags, description)."""
    config, class_name = model.config, type(model).__name__
    if class_name == "UniFlowVisionModel":
        if getattr(model, "has_latent_head", False):
            features = (
                f"hidden states plus its latents ({config.latent_channels} channels per patch) re-embedded to "
                f"width {config.hidden_size} (`vision_feature_source='latent'`)"
            )
        else:
            features = "its hidden states"
        description = (
            f"the vision encoder of a UniFlow image tokenizer: {_encoder_facts(config)} over {_input_facts(config)}; "
            f"it returns {features}, e.g. as a LLaVA vision tower"
        )
        return "image-feature-extraction", ("vision-encoder",), description
    if class_name == "UniFlowForImageClassification":
        description = (
            f"a UniFlow vision encoder ({_encoder_facts(config)} over {_input_facts(config)}) with a "
            f"{config.num_labels}-class image classification head"
        )
        return "image-classification", ("vision-encoder",), description
    description = (
        f"a UniFlow image tokenizer: {_encoder_facts(config)} over {_input_facts(config)}, a latent of "
        f"{config.latent_channels} channels per patch, {config.num_global_blocks} global blocks and a patch-wise "
        f"pixel flow decoder ({config.num_flow_head_blocks} blocks, `num_sampling_steps={config.num_sampling_steps}`); "
        "`encode`, `decode`, `reconstruct`"
    )
    return "image-to-image", ("image-tokenizer", "pixel-flow-decoder"), description


# The Auto class that loads a saved class without the package (`AutoModel` for the others).
_AUTO_CLASSES = {
    "UniFlowModel": "AutoModelForImageToImage", "UniFlowForImageClassification": "AutoModelForImageClassification"
}


def _usage(class_name: str, repo_id: str, with_encoder: bool = False) -> str:
    if class_name == "UniFlowLlavaForConditionalGeneration":
        return (
            "# with uniflow-hf installed\nimport uniflow_hf  # registers the UniFlow vision tower\n"
            "from transformers import AutoProcessor, LlavaForConditionalGeneration\n\n"
            f'model = LlavaForConditionalGeneration.from_pretrained("{repo_id}")\n'
            f'processor = AutoProcessor.from_pretrained("{repo_id}")\n\n'
            "# without it: the code saved beside the weights\n"
            "from transformers import AutoModelForImageTextToText\n\n"
            f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)\n'
            f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)'
        )
    auto_class = _AUTO_CLASSES.get(class_name, "AutoModel")
    # `AutoModel` builds the encoder tower of a UniFlow folder whose encoder is UniFlow's own (`auto_map`).
    with_encoder = with_encoder and auto_class != "AutoModel"
    usage = (
        f"# with uniflow-hf installed\nfrom uniflow_hf import {class_name}\n\n"
        f'model = {class_name}.from_pretrained("{repo_id}")\n\n'
        "# without it: the code saved beside the weights\n"
        f"from transformers import {'AutoModel, ' if with_encoder else ''}{auto_class}\n\n"
        f'model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)'
    )
    if with_encoder:
        usage += f'\nencoder = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)  # the encoder alone'
    return usage


def model_card(obj, repo_id: str | None = None):
    """The card of a UniFlow model or a LLaVA with a UniFlow tower; `repo_id` is the name its usage example loads."""
    class_name, repo_id = type(obj).__name__, repo_id or "path/to/this/folder"
    config = obj.config
    if getattr(config, "model_type", None) == "llava":
        pipeline_tag, tags = "image-text-to-text", ("llava", "vision-encoder")
        description = (
            f"a LLaVA model ({config.text_config.model_type} language model) whose vision tower is a UniFlow encoder: "
            f"{_encoder_facts(config.vision_config)} over {_input_facts(config.vision_config)}, "
            f"{config.image_seq_length} image tokens per image (`vision_feature_layer={config.vision_feature_layer}`, "
            f"`vision_feature_select_strategy='{config.vision_feature_select_strategy}'`)"
        )
        class_name, title = "UniFlowLlavaForConditionalGeneration", "LLaVA with a UniFlow vision tower"
    else:
        (pipeline_tag, tags, description), title = _uniflow_card_parts(obj), class_name
    usage = _usage(class_name, repo_id, with_encoder=getattr(config, "encoder_config", True) is None)
    base_model = hub_repo_id(getattr(obj, "name_or_path", None))
    return create_model_card(title, description, "transformers", pipeline_tag, tags, base_model, usage)


def save_model_card(
    folder, saved=None, existing_folder=None, replace_generic: bool = False, repo_id: str | None = None, **card_kwargs
) -> bool:
    """Write `model_card(saved, repo_id)` (or `create_model_card(**card_kwargs)`) to `folder`/README.md unless
    `existing_folder` (default: `folder`) has a card (transformers' generic one is replaced with `replace_generic`)
    or a pipeline is saving its components; returns whether it wrote."""
    if _saving_pipeline.get():
        return False
    existing = os.path.join(folder if existing_folder is None else existing_folder, MODEL_CARD_NAME)
    if os.path.exists(existing):
        with open(existing, encoding="utf-8") as handle:
            is_generic = _GENERIC_CARD_SENTENCE in handle.read()
        if not (replace_generic and is_generic):
            return False
    card = model_card(saved, repo_id) if saved is not None else create_model_card(**card_kwargs)
    card.save(os.path.join(folder, MODEL_CARD_NAME))
    return True


@contextlib.contextmanager
def saving_pipeline():
    """While a pipeline saves its components into sub-folders, those get no card of their own."""
    token = _saving_pipeline.set(True)
    try:
        yield
    finally:
        _saving_pipeline.reset(token)
