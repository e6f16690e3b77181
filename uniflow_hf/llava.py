# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow as the vision tower of LLaVA (transformers' `LlavaForConditionalGeneration`).

`UniFlowVisionModel` is registered with `AutoModel` on `import uniflow_hf`, so a stock LLaVA takes it as its tower:

```python
>>> import uniflow_hf
>>> from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
>>> config = LlavaConfig(vision_config=uniflow_hf.UniFlowConfig(...), text_config=LlamaConfig(...))
>>> model = LlavaForConditionalGeneration(config)
>>> processor = build_llava_processor(tokenizer, config.vision_config, config.vision_feature_select_strategy)
```

How the tower meets LLaVA: LLaVA asks for the hidden states it selects (`vision_feature_layer`, an index or a list,
passed on as `output_hidden_states`); the tower then returns those, at their indices (`None` at the others),
`hidden_states[0]` being the embeddings (CLS first). `vision_feature_select_strategy="default"` drops index 0 of each selected state, our CLS token, `"full"`
keeps it: an image gives `(H/p)·(W/p) + 1 - (1 if "default")` features, which is what `build_llava_processor`'s
`LlavaProcessor` inserts (`num_additional_image_tokens=1` for the CLS token).

Latent features (`UniFlowConfig.vision_feature_source="latent"`): the tower appends the latent tokens re-embedded by
UniFlow's own `latent_unproj` as one more hidden state, `hidden_size` wide, so LLaVA's projector (built
`vision_config.hidden_size` wide) takes them unchanged with `vision_feature_layer=-1`; see `UniFlowVisionModel`.

This module also holds the training side: `LlavaImageQACollator` (image-question-answer rows -> model inputs with the
prompt and padding masked out of the labels), `lora_target_modules` / `build_lora_config` (PEFT LoRA on the language
model's attention and optionally the tower's, the projector trained fully), `train_llava` (the HF `Trainer`) and
`finetune_llava_lora`. Grafting UniFlow into an existing LLaVA checkpoint:
`conversion_scripts/graft_uniflow_into_llava.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LlavaProcessor, PreTrainedConfig, TrainingArguments

from .io import last_complete_checkpoint
from .modeling import UniFlowConfig, UniFlowImageProcessor


VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")
# LLaVA-1.5's conversation format; `{image}` becomes the processor's image token, `{question}` the row's question.
DEFAULT_PROMPT_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"

# LoRA targets, matched by PEFT with `re.fullmatch` against module names such as
# `model.language_model.layers.0.self_attn.q_proj` and `model.vision_tower.encoder.layers.0.attn.qkv`. Each is anchored
# to its own sub-model, so the tower's `attn.proj` can never catch the LM's `o_proj` nor the reverse.
LANGUAGE_MODEL_ATTENTION_PATTERN = r"(?:.*\.)?language_model\.(?:.*\.)?(?:q_proj|k_proj|v_proj|o_proj)"
VISION_TOWER_ATTENTION_PATTERN = r"(?:.*\.)?vision_tower\.encoder\.layers\.\d+\.attn\.(?:qkv|proj)"


# ----------------------------------------------------------------------------------------------- processor
def build_word_level_tokenizer(corpus: Sequence[str], image_token: str = "<image>"):
    """A small word-level `PreTrainedTokenizerFast` trained on `corpus`, with `<pad>`, `<unk>`, `<s>`, `</s>` and the
    image token: a tokenizer built locally, for offline demos and tests where no hub tokenizer can be downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special_tokens = ["<pad>", "<unk>", "<s>", "</s>", image_token]
    tokenizer.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": image_token},
    )


def check_vision_feature_select_strategy(vision_feature_select_strategy: str) -> str:
    if vision_feature_select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
        raise ValueError(
            f"`vision_feature_select_strategy` must be one of {VISION_FEATURE_SELECT_STRATEGIES} ('default' drops the "
            f"CLS token, 'full' keeps it), got {vision_feature_select_strategy!r}."
        )
    return vision_feature_select_strategy



def build_llava_processor(
    tokenizer,
    uniflow_config_or_image_processor: UniFlowConfig | UniFlowImageProcessor,
    vision_feature_select_strategy: str = "default",
    *,
    patch_size: int | None = None,
    chat_template: str | None = None,
) -> LlavaProcessor:
    """A `LlavaProcessor` that inserts as many image tokens as a UniFlow tower gives features.

    Args:
        tokenizer: the language model's tokenizer; it must hold the image token as one token (`tokenizer.image_token`
            if it defines one, else `"<image>"`).
        uniflow_config_or_image_processor: the tower's `UniFlowConfig` (its image processor is then
            `UniFlowImageProcessor.from_image_size(config.image_size)` and its `patch_size` is read from it), or a `UniFlowImageProcessor` (pass
            `patch_size` too).
        vision_feature_select_strategy: the model config's, `"default"` (CLS dropped) or `"full"`.
        patch_size: the tower's patch size, when an image processor is passed.
        chat_template: optional chat template of the processor.
    """
    check_vision_feature_select_strategy(vision_feature_select_strategy)
    if isinstance(uniflow_config_or_image_processor, PreTrainedConfig):
        config = uniflow_config_or_image_processor
        if not isinstance(config, UniFlowConfig):
            raise TypeError(
                f"Expected the tower's UniFlowConfig (e.g. `llava_config.vision_config`), got {type(config).__name__}."
            )
        if patch_size is not None and patch_size != config.patch_size:
            raise ValueError(f"`patch_size={patch_size}` contradicts the config's patch size {config.patch_size}.")
        image_processor, patch_size = UniFlowImageProcessor.from_image_size(config.image_size), config.patch_size
    elif isinstance(uniflow_config_or_image_processor, UniFlowImageProcessor):
        image_processor = uniflow_config_or_image_processor
        if not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(
                "Pass the tower's `patch_size` (a positive int) with an image processor, or pass its UniFlowConfig."
            )
    else:
        raise TypeError(
            "Expected a UniFlowConfig or a UniFlowImageProcessor, got "
            f"{type(uniflow_config_or_image_processor).__name__}."
        )
    image_token = getattr(tokenizer, "image_token", None) or "<image>"
    token_ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(token_ids) != 1 or token_ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"The tokenizer does not hold the image token {image_token!r} as a single token (it encodes to "
            f"{token_ids}): add it first, e.g. `tokenizer.add_special_tokens({{'additional_special_tokens': "
            f"[{image_token!r}]}})`, and resize the model's embeddings."
        )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=chat_template,
        image_token=image_token,
        num_additional_image_tokens=1,  # UniFlow's CLS token
    )


def num_image_features(llava_config, height: int | None = None, width: int | None = None) -> int:
    """Features (= image tokens) one `height`x`width` image (default: the tower's `image_size`) gives a LLaVA whose
    tower puts one CLS token first (UniFlow, CLIP): the patch grid, plus the CLS token under `"full"`."""
    vision_config = llava_config.vision_config
    height = vision_config.image_size if height is None else height
    width = vision_config.image_size if width is None else width
    patch_size = vision_config.patch_size
    num_features = (height // patch_size) * (width // patch_size)
    return num_features + (1 if llava_config.vision_feature_select_strategy == "full" else 0)


def check_image_tokens(llava_config, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """Raise a clear error when `input_ids` do not hold one image token per image feature of `pixel_values`. (LLaVA's
    forward raises "Image features and image tokens do not match, tokens: T, features: F" where F counts features
    × hidden width of the language model, which hides what went wrong.)"""
    num_tokens = int((input_ids == llava_config.image_token_id).sum())
    per_image = num_image_features(llava_config, *pixel_values.shape[-2:])
    expected = per_image * pixel_values.shape[0]
    if num_tokens != expected:
        raise ValueError(
            f"The prompts hold {num_tokens} image tokens (id {llava_config.image_token_id}) but the "
            f"{pixel_values.shape[0]} image(s) of {pixel_values.shape[-2]}x{pixel_values.shape[-1]} give "
            f"{per_image} features each ({expected} in all, vision_feature_select_strategy="
            f"{llava_config.vision_feature_select_strategy!r}). Put one image token in the text per image and let the "
            "processor from `build_llava_processor` expand it; don't expand or truncate image tokens yourself."
        )


# ------------------------------------------------------------------------------------------------ training data
@dataclass
class LlavaImageQACollator:
    """Turns image-question-answer rows (e.g. of a `datasets.Dataset`) into LLaVA training batches.

    Each row becomes `prompt_template.format(image=<image token>, question=row[question_column])` (the processor
    expands the image token to one token per image feature), then the answer's tokens and the tokenizer's EOS token.
    `labels` are the input ids with the prompt (image tokens included) and the padding set to -100, so the loss is
    taken on the answer (and EOS) only. Rows are right-padded. Without a `question_column` in a row,
    `default_question` is asked. With the model's `llava_config`, each batch is checked to hold as many image tokens
    as the model will make image features (`check_image_tokens`), so that a processor that doesn't match the model
    fails here with a clear message rather than in LLaVA's forward.

    `prompt_inputs(rows)` gives the left-padded prompts alone, for `generate`.
    """

    processor: LlavaProcessor
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answer"
    default_question: str | None = None
    answer_separator: str = " "
    llava_config: PreTrainedConfig | None = None

    def __post_init__(self):
        if self.prompt_template.count("{image}") != 1 or "{question}" not in self.prompt_template:
            raise ValueError(
                "`prompt_template` must hold `{image}` exactly once and `{question}`, e.g. "
                f"{DEFAULT_PROMPT_TEMPLATE!r}; got {self.prompt_template!r}."
            )
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token: set `tokenizer.pad_token` first.")

    def _column(self, row: dict, column: str) -> Any:
        if column not in row:
            raise KeyError(f"Row has no {column!r} column (columns: {sorted(row)}); set the collator's column names.")
        return row[column]

    def prompts(self, rows: Sequence[dict]) -> list[str]:
        questions = []
        for row in rows:
            if self.question_column in row or self.default_question is None:
                questions.append(self._column(row, self.question_column))
            else:
                questions.append(self.default_question)
        return [self.prompt_template.format(image=self.processor.image_token, question=q) for q in questions]

    def prompt_inputs(self, rows: Sequence[dict], return_tensors: str = "pt"):
        """Left-padded prompts with their images (`input_ids`, `attention_mask`, `pixel_values`), for `generate`."""
        images = [self._column(row, self.image_column) for row in rows]
        return self.processor(
            images=images, text=self.prompts(rows), padding=True, padding_side="left", return_tensors=return_tensors
        )

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids the model is trained to produce for `answer`: its tokens, then EOS."""
        tokenizer = self.processor.tokenizer
        ids = tokenizer.encode(self.answer_separator + str(answer), add_special_tokens=False)
        return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        images = [self._column(row, self.image_column) for row in rows]
        prompt = self.processor(images=images, text=self.prompts(rows))
        sequences, labels = [], []
        for prompt_ids, row in zip(prompt["input_ids"], rows):
            answer_ids = self.answer_ids(self._column(row, self.answer_column))
            sequences.append(list(prompt_ids) + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        length = max(len(ids) for ids in sequences)
        batch = {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (length - len(ids)) for ids in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in sequences]),
            "labels": torch.tensor([ids + [-100] * (length - len(ids)) for ids in labels]),
            "pixel_values": torch.as_tensor(np.stack(prompt["pixel_values"])),
        }
        if self.llava_config is not None:
            check_image_tokens(self.llava_config, batch["input_ids"], batch["pixel_values"])
        return batch


# ------------------------------------------------------------------------------------------------------ LoRA
def lora_target_modules(language_model: bool = True, vision_tower: bool = False) -> str:
    """PEFT `target_modules` regex: the language model's `q_proj`/`k_proj`/`v_proj`/`o_proj` and/or the UniFlow
    tower's `attn.qkv`/`attn.proj` (each anchored to its own sub-model)."""
    patterns = ([LANGUAGE_MODEL_ATTENTION_PATTERN] if language_model else []) + (
        [VISION_TOWER_ATTENTION_PATTERN] if vision_tower else []
    )
    if not patterns:
        raise ValueError("LoRA needs a target: the language model, the vision tower, or both.")
    return "|".join(f"(?:{pattern})" for pattern in patterns)


def build_lora_config(
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    train_vision_tower: bool = False,
    train_language_model: bool = True,
):
    """`peft.LoraConfig` for LLaVA-UniFlow: LoRA on the attention projections (language model, and the tower's with
    `train_vision_tower`), the multi-modal projector trained fully and saved with the adapter."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(train_language_model, train_vision_tower),
        modules_to_save=["multi_modal_projector"],
        bias="none",
    )


# --------------------------------------------------------------------------------------------------- training
def _check_training_arguments(training_args) -> None:
    """The arguments' type and numbers; under a CPU launch, `use_cpu` so that the processes shard."""
    from .training import prepare_training_arguments

    if not isinstance(training_args, TrainingArguments):
        raise TypeError(f"`training_args` must be a transformers.TrainingArguments, got {type(training_args).__name__}.")
    prepare_training_arguments(training_args)


def train_llava(
    model,
    processor: LlavaProcessor,
    train_dataset,
    training_args: TrainingArguments,
    *,
    collator: Callable[[list[dict]], dict] | None = None,
    resume_from_checkpoint: str | bool | None = None,
):
    """Train `model` (a LLaVA, or a PEFT model around one) on image-question-answer rows with the HF `Trainer` under
    `training_args` (whose `remove_unused_columns` is taken as `False`: the collator reads the raw rows); returns the
    trainer (its `state.log_history` holds the losses). The collator defaults to a `LlavaImageQACollator` of
    `processor` checked against the model's config."""
    from transformers import Trainer

    _check_training_arguments(training_args)
    training_args = copy.copy(training_args)
    training_args.remove_unused_columns = False  # the collator needs the images, questions and answers
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator if collator is not None else LlavaImageQACollator(processor, llava_config=model.config),
    )
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_complete_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def finetune_llava_lora(
    model,
    processor: LlavaProcessor,
    train_dataset,
    training_args: TrainingArguments,
    *,
    lora_config=None,
    collator: Callable[[list[dict]], dict] | None = None,
    resume_from_checkpoint: str | bool | None = None,
):
    """LoRA fine-tuning of a LLaVA-UniFlow (`lora_config` defaults to `build_lora_config()`): wraps `model` with PEFT
    (initialised with `training_args.seed`), trains it with `train_llava`, and saves the adapter (LoRA weights + the
    projector) and the processor to `training_args.output_dir`. Returns the trainer; `trainer.model` is the
    `PeftModel` (`merge_and_unload()` merges it). Reload with `LlavaForConditionalGeneration.from_pretrained(
    output_dir)` (the base named in adapter_config.json, then the adapter) or `model.load_adapter(output_dir)`."""
    from peft import get_peft_model
    from transformers import set_seed

    from .training import save_final_model

    _check_training_arguments(training_args)
    set_seed(training_args.seed)  # the LoRA initialisation
    peft_model = get_peft_model(model, lora_config if lora_config is not None else build_lora_config())
    trainer = train_llava(
        peft_model, processor, train_dataset, training_args, collator=collator,
        resume_from_checkpoint=resume_from_checkpoint,
    )
    save_final_model(trainer)  # the adapter, gathered whole under FSDP / DeepSpeed ZeRO-3
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return trainer


def training_losses(trainer) -> list[float]:
    """The per-step training losses a `Trainer` logged."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "LlavaImageQACollator",
    "build_llava_processor",
    "build_lora_config",
    "check_image_tokens",
    "check_vision_feature_select_strategy",
    "finetune_llava_lora",
    "lora_target_modules",
    "num_image_features",
    "train_llava",
    "training_losses",
]
