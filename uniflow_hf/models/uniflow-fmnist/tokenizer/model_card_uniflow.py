# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Model cards of saved folders: `save_pretrained` of the models and the pipelines, and the converters, write a
README.md with Hugging Face YAML metadata (`huggingface_hub.ModelCard` / `ModelCardData`, built offline) unless the
folder has one already. A pipeline's component folders get no card of their own: the pipeline's describes them."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re


MODEL_CARD_NAME = "README.md"
LICENSE = "apache-2.0"
TAGS = ("uniflow", "uniflow-hf", "image-tokenizer")
PAPER = "UniFlow (Yue et al., ICLR 2026, [arXiv:2510.10575](https://arxiv.org/abs/2510.10575))"
# What each class is for: (Hub pipeline tag, extra tags, one sentence).
CARD_KINDS = {
    "UniFlowModel": (
        "image-to-image",
        ("pixel-flow-decoder",),
        "a UniFlow image tokenizer: a ViT encoder, a 64-channel latent per patch, global blocks and a patch-wise "
        "pixel flow decoder (`encode`, `decode`, `reconstruct`)",
    ),
    "UniFlowVisionModel": (
        "image-feature-extraction",
        ("vision-encoder",),
        "the vision encoder of a UniFlow image tokenizer (features for understanding tasks, e.g. a LLaVA tower)",
    ),
    "UniFlowForImageClassification": (
        "image-classification",
        ("vision-encoder",),
        "a UniFlow vision encoder with an image classification head",
    ),
    "UniFlowReconstructionPipeline": (
        "image-to-image",
        ("pixel-flow-decoder", "reconstruction"),
        "a UniFlow reconstruction pipeline: images are encoded to latents and decoded back by the pixel flow decoder",
    ),
    "UniFlowClassConditionalPipeline": (
        "unconditional-image-generation",
        ("pixel-flow-decoder", "class-conditional", "dit"),
        "a class-conditional UniFlow pipeline: a latent DiT generator samples UniFlow latents for class labels, "
        "which the tokenizer's pixel flow decoder turns into images",
    ),
}
_HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_saving_pipeline = contextvars.ContextVar("uniflow_saving_pipeline", default=False)


def hub_repo_id(name_or_path) -> str | None:
    """`name_or_path` when it names a Hub repository ("owner/name", not a local folder), else None: the only kind of
    `base_model` a card may record."""
    name = os.fspath(name_or_path or "")
    if _HUB_REPO_ID.fullmatch(name) and not os.path.exists(name):
        return name
    return None


def create_model_card(
    title: str,
    description: str,
    library_name: str,
    pipeline_tag: str,
    tags: tuple[str, ...] = (),
    base_model: str | None = None,
    usage: str | None = None,
):
    """A `huggingface_hub.ModelCard`: YAML metadata (license, library_name, pipeline_tag, tags, base_model) and a
    short text. Nothing is downloaded."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license=LICENSE,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys((*TAGS, *tags))),
        base_model=base_model,
    )
    text = f"# {title}\n\nThis folder holds {description}; see {PAPER}.\n"
    if base_model:
        text += f"\nIt is derived from [{base_model}](https://huggingface.co/{base_model}).\n"
    if usage:
        text += f"\n## Usage\n\n```python\n{usage}\n```\n"
    text += "\nThis card was written by `uniflow-hf` when the folder was saved; edit it freely (saves keep it).\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _card_for(saved):
    """The card of a UniFlow model or pipeline, from its class (and, for a model, its `name_or_path`)."""
    from diffusers import DiffusionPipeline

    class_name = type(saved).__name__
    pipeline_tag, tags, description = CARD_KINDS.get(class_name, CARD_KINDS["UniFlowModel"])
    if isinstance(saved, DiffusionPipeline):
        library_name, base_model = "diffusers", hub_repo_id(getattr(saved, "name_or_path", None))
        usage = (
            "from diffusers import DiffusionPipeline\nimport uniflow_hf  # registers the UniFlow classes\n\n"
            'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")'
        )
    else:
        library_name, base_model = "transformers", hub_repo_id(getattr(saved, "name_or_path", None))
        usage = f'from uniflow_hf import {class_name}\n\nmodel = {class_name}.from_pretrained("path/to/this/folder")'
    return create_model_card(class_name, description, library_name, pipeline_tag, tags, base_model, usage)


def save_model_card(folder, saved=None, existing_folder=None, **card_kwargs) -> bool:
    """Write README.md into `folder` unless `existing_folder` (default: `folder`) has one already; returns whether
    it wrote. The card is that of `saved` (a UniFlow model or pipeline), or built from `card_kwargs` (the arguments of
    `create_model_card`). Does nothing while a pipeline is saving its components (`saving_pipeline`)."""
    existing_folder = folder if existing_folder is None else existing_folder
    if _saving_pipeline.get() or os.path.exists(os.path.join(existing_folder, MODEL_CARD_NAME)):
        return False
    card = _card_for(saved) if saved is not None else create_model_card(**card_kwargs)
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
