# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow as the vision tower of transformers' `LlavaForConditionalGeneration`, and LoRA fine-tuning.

`import uniflow_hf` registers `UniFlowVisionModel` with `AutoModel`, so a stock LLaVA takes a `UniFlowConfig` as its
`vision_config`; `hidden_states[0]` is the embeddings, CLS first. Grafting a LLaVA checkpoint:
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
# LLaVA-1.5's conversation format.
DEFAULT_PROMPT_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"

# LoRA targets (PEFT matches them with `re.fullmatch`), each anchored to its own sub-model.
LANGUAGE_MODEL_ATTENTION_PATTERN = r"(?:.*\.)?language_model\.(?:.*\.)?(?:q_proj|k_proj|v_proj|o_proj)"
VISION_TOWER_ATTENTION_PATTERN = r"(?:.*\.)?vision_tower\.encoder\.layers\.\d+\.attn\.(?:qkv|proj)"


def build_word_level_tokenizer(corpus: Sequence[str], image_token: str = "<image>"):
    """A word-level `PreTrainedTokenizerFast` trained on `corpus` with `<pad>`, `<unk>`, `<s>`, `</s>` and the image
    token, for offline demos and tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special_tokens = ["<pad>", "<unk>", "<s>", "</s>", image_token]
    tokenizer.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": image_token},
    )


def build_llava_processor(
    tokenizer,
    uniflow_config_or_image_processor: UniFlowConfig | UniFlowImageProcessor,
    vision_feature_select_strategy: str = "default",
    *,
    patch_size: int | None = None,
    chat_template: str | None = None,
) -> LlavaProcessor:
    """A `LlavaProcessor` that inserts as many image tokens as a UniFlow tower gives features, from the tower's
    `UniFlowConfig` or from a `UniFlowImageProcessor` and the tower's `patch_size`. The tokenizer must hold the image
    token (`tokenizer.image_token`, else `"<image>"`) as one token."""
    if vision_feature_select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
        raise ValueError(
            f"`vision_feature_select_strategy` must be one of {VISION_FEATURE_SELECT_STRATEGIES} ('default' drops the "
            f"CLS token, 'full' keeps it), got {vision_feature_select_strategy!r}."
        )
    image_processor = config = uniflow_config_or_image_processor
    if isinstance(config, UniFlowConfig):
        image_processor, patch_size = UniFlowImageProcessor.from_image_size(config.image_size), config.patch_size
    elif not isinstance(image_processor, UniFlowImageProcessor):
        raise TypeError(
            "Expected the tower's UniFlowConfig (e.g. `llava_config.vision_config`) or a UniFlowImageProcessor, got "
            f"{type(image_processor).__name__}."
        )
    elif not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError("Pass the tower's `patch_size` (a positive int) with an image processor, or its config.")
    image_token = getattr(tokenizer, "image_token", None) or "<image>"
    token_ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(token_ids) != 1 or token_ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"The tokenizer does not hold the image token {image_token!r} as a single token (it encodes to "
            f"{token_ids}): add it first, e.g. `tokenizer.add_special_tokens({{'additional_special_tokens': "
            f"[{image_token!r}]}})`, and resize the model's embeddings."
        )
    return LlavaProcessor(
        image_processor, tokenizer, patch_size=patch_size, chat_template=chat_template, image_token=image_token,
        vision_feature_select_strategy=vision_feature_select_strategy, num_additional_image_tokens=1,  # the CLS token
    )


def num_image_features(llava_config, height: int | None = None, width: int | None = None) -> int:
    """Image features (= image tokens) of one `height`x`width` image (default: the tower's `image_size`)."""
    image_size, patch_size = llava_config.vision_config.image_size, llava_config.vision_config.patch_size
    num_patches = ((height or image_size) // patch_size) * ((width or image_size) // patch_size)
    return num_patches + (1 if llava_config.vision_feature_select_strategy == "full" else 0)  # the CLS token


def check_image_tokens(llava_config, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """Raise a clear error unless `input_ids` hold one image token per image feature of `pixel_values` (LLaVA's own
    error counts the features times the language model's width)."""
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


@dataclass
class LlavaImageQACollator:
    """Image-question-answer rows -> right-padded LLaVA training batches: `prompt_template` filled with the image token
    and the question (or `default_question`), then the answer and EOS; `labels` mask the prompt and padding with -100.
    With `llava_config`, each batch is checked by `check_image_tokens`."""

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
        questions = [
            self._column(row, self.question_column)
            if self.question_column in row or self.default_question is None
            else self.default_question
            for row in rows
        ]
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


def lora_target_modules(language_model: bool = True, vision_tower: bool = False) -> str:
    """PEFT `target_modules` regex: the language model's `q_proj`/`k_proj`/`v_proj`/`o_proj` and/or the UniFlow
    tower's `attn.qkv`/`attn.proj` (each anchored to its own sub-model)."""
    targets = ((LANGUAGE_MODEL_ATTENTION_PATTERN, language_model), (VISION_TOWER_ATTENTION_PATTERN, vision_tower))
    patterns = [pattern for pattern, wanted in targets if wanted]
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

    target_modules = lora_target_modules(train_language_model, train_vision_tower)
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none",
        modules_to_save=["multi_modal_projector"],
    )


def train_llava(
    model,
    processor: LlavaProcessor,
    train_dataset,
    training_args: TrainingArguments,
    *,
    collator: Callable[[list[dict]], dict] | None = None,
    lora_config=None,
    resume_from_checkpoint: str | bool | None = None,
):
    """Train `model` (a LLaVA) on image-question-answer rows with the HF `Trainer` (the collator defaults to a
    `LlavaImageQACollator` of `processor` checked against the model's config); with `lora_config`, the model is first
    wrapped with PEFT, initialised with `training_args.seed`. Returns the trainer."""
    from peft import get_peft_model
    from transformers import Trainer, set_seed

    from .training import prepare_training_arguments

    if not isinstance(training_args, TrainingArguments):
        raise TypeError(f"`training_args` must be a transformers.TrainingArguments, got {type(training_args).__name__}")
    prepare_training_arguments(training_args)
    training_args = copy.copy(training_args)
    training_args.remove_unused_columns = False  # the collator reads the raw rows
    if lora_config is not None:
        set_seed(training_args.seed)
        model = get_peft_model(model, lora_config)
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
    """LoRA fine-tuning (`lora_config` defaults to `build_lora_config()`) by `train_llava`, then the adapter (LoRA
    weights + projector) and the processor saved to `training_args.output_dir`. Returns the trainer, whose `model`
    is the `PeftModel`."""
    from .training import save_final_model

    lora_config = lora_config if lora_config is not None else build_lora_config()
    trainer = train_llava(
        model, processor, train_dataset, training_args, collator=collator, lora_config=lora_config,
        resume_from_checkpoint=resume_from_checkpoint,
    )
    save_final_model(trainer)  # the adapter, gathered whole under FSDP / DeepSpeed ZeRO-3
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return trainer


def training_losses(trainer) -> list[float]:
    """The per-step training losses a `Trainer` logged."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
