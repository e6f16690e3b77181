"""LLaVA-UniFlow on Fashion-MNIST: "What is in the image?" -> the class name, trained on the train split and scored
by exact-match accuracy of greedy answers on the test split.

Two set-ups:
- from scratch (default): a stock `LlavaForConditionalGeneration` with a UniFlow tower (random, or the encoder of
  `--uniflow DIR`, e.g. the adapted tokenizer of `uniflow-hf fmnist adapt`) and a small random Llama trained fully
  (the tower too, unless it comes from `--uniflow` and `--train-tower` is not given), with a tokenizer built here;
- `--llava DIR`: a LLaVA-UniFlow folder with its processor (e.g. `uniflow-hf graft-llava`'s output), LoRA fine-tuned
  (`finetune_llava_lora`: LoRA on the LM attention, `--train-tower` adds the tower's; the projector trained fully).

    python benchmarks/bench_llava_fmnist.py [--max-train N] [--max-eval N] [--steps N] [--batch-size B] \
        [--uniflow DIR [--vision-feature-source encoder|latent]] [--llava DIR] [--train-tower] [--threads T]

Smoke run: `--max-train 64 --max-eval 32 --steps 5`. Data: Debian's `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), read by `uniflow_hf.recipes.fmnist.load_fashion_mnist`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


QUESTION = "What is in the image?"


def build_tokenizer(class_names: list[str]):
    """A word-level tokenizer over the prompt and the class names, with the `<image>` token."""
    from uniflow_hf.llava import DEFAULT_PROMPT_TEMPLATE, build_word_level_tokenizer

    return build_word_level_tokenizer([DEFAULT_PROMPT_TEMPLATE.format(image="", question=QUESTION)] + class_names)


def build_model_from_scratch(
    class_names: list[str], uniflow_dir: str | None, vision_feature_source: str | None, seed: int
):
    """(model, processor, tower_pretrained): a LLaVA with a UniFlow tower and a small random Llama."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from uniflow_hf import UniFlowConfig, UniFlowVisionModel
    from uniflow_hf.recipes.fmnist import FMNIST_MODEL_CONFIG
    from uniflow_hf.llava import build_llava_processor

    tokenizer = build_tokenizer(class_names)
    overrides = {} if vision_feature_source is None else {"vision_feature_source": vision_feature_source}
    tower = None
    if uniflow_dir is not None:
        tower = UniFlowVisionModel.from_pretrained(uniflow_dir, dtype=torch.float32, **overrides)
        vision_config = tower.config
    else:
        vision_config = UniFlowConfig(**{**FMNIST_MODEL_CONFIG, **overrides})
    special_tokens = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, **special_tokens,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,  # the last encoder layer, or the latent tokens with vision_feature_source="latent"
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if tower is not None:
        model.model.vision_tower.load_state_dict(tower.state_dict())
    processor = build_llava_processor(tokenizer, vision_config, config.vision_feature_select_strategy)
    return model, processor, tower is not None


@torch.no_grad()
def answer_accuracy(model, collator, rows: list[dict], class_names: list[str], batch_size: int = 64) -> float:
    """Exact-match accuracy of greedy answers (the class name's tokens, then EOS)."""
    model.eval()
    answers = [collator.answer_ids(name) for name in class_names]
    max_new_tokens = max(len(ids) for ids in answers)
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        inputs = collator.prompt_inputs(batch).to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = generated[:, inputs["input_ids"].shape[1] :].tolist()
        for tokens, row in zip(generated, batch):
            expected = answers[row["label"]]
            correct += tokens[: len(expected)] == expected
    return correct / max(len(rows), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train", type=int, default=None, help="train rows (default: all 60,000)")
    parser.add_argument("--max-eval", type=int, default=None, help="test rows (default: all 10,000)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 1e-3 from scratch, 2e-4 LoRA")
    parser.add_argument("--uniflow", default=None, help="UniFlowModel / tower folder for the tower (from scratch)")
    parser.add_argument("--vision-feature-source", choices=("encoder", "latent"), default=None)
    parser.add_argument("--llava", default=None, help="a LLaVA-UniFlow folder to LoRA fine-tune instead")
    parser.add_argument("--train-tower", action="store_true", help="train a pretrained tower too (LoRA with --llava)")
    parser.add_argument("--output", default=None, help="training output folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainingArguments

    from uniflow_hf.recipes.fmnist import load_fashion_mnist
    from uniflow_hf.llava import (
        LlavaImageQACollator,
        build_lora_config,
        finetune_llava_lora,
        train_llava,
        training_losses,
    )

    limit = max(args.max_train or 60_000, args.max_eval or 10_000)
    data = load_fashion_mnist(max_per_split=None if limit >= 60_000 else limit)
    train = data["train"].select(range(min(args.max_train or len(data["train"]), len(data["train"]))))
    test = data["test"].select(range(min(args.max_eval or len(data["test"]), len(data["test"]))))
    class_names = train.features["label"].names

    if args.llava:
        model = LlavaForConditionalGeneration.from_pretrained(args.llava, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(args.llava)
    else:
        model, processor, tower_pretrained = build_model_from_scratch(
            class_names, args.uniflow, args.vision_feature_source, args.seed
        )
        if tower_pretrained and not args.train_tower:
            model.model.vision_tower.requires_grad_(False)
    collator = LlavaImageQACollator(processor, default_question=QUESTION, llava_config=model.config)

    def collate(rows):  # the answer is the class name of the row's label
        return collator([{**row, "answer": class_names[row["label"]]} for row in rows])

    output_dir = args.output or tempfile.mkdtemp(prefix="bench_llava_fmnist_")
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        learning_rate=args.learning_rate or (2e-4 if args.llava else 1e-3),
        per_device_train_batch_size=args.batch_size,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=max(1, args.steps // 20),
        warmup_steps=min(100, args.steps // 10),
        save_strategy="no",
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )
    start = time.perf_counter()
    if args.llava:
        lora_config = build_lora_config(train_vision_tower=args.train_tower)
        trainer = finetune_llava_lora(model, processor, train, training_args, lora_config=lora_config, collator=collate)
    else:
        trainer = train_llava(model, processor, train, training_args, collator=collate)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    accuracy = answer_accuracy(trainer.model, collator, list(test), class_names)
    losses = training_losses(trainer)
    result = {
        "setup": "lora" if args.llava else "from_scratch",
        "vision_feature_source": model.config.vision_config.vision_feature_source,
        "train_rows": len(train),
        "eval_rows": len(test),
        "steps": args.steps,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "accuracy": accuracy,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    print(f"Fashion-MNIST test accuracy ({len(test)} images): {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
