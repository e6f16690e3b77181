"""`uniflow-hf graft-llava` (UniFlow's encoder as the vision tower of a LLaVA checkpoint) and `uniflow-hf
finetune-llava` (LoRA fine-tuning of a LLaVA-UniFlow on image-question-answer data)."""

from __future__ import annotations


def register(subparsers) -> None:
    from ..conversion_scripts.graft_uniflow_into_llava import add_arguments, run as run_graft

    graft = subparsers.add_parser("graft-llava")
    add_arguments(graft)
    graft.set_defaults(func=run_graft)

    finetune = subparsers.add_parser("finetune-llava")
    finetune.add_argument(
        "--model", required=True, help="LLaVA-UniFlow folder with its processor (e.g. graft-llava's output)"
    )
    finetune.add_argument(
        "--dataset", required=True, help="a `datasets` folder (save_to_disk) or anything `datasets.load_dataset` reads"
    )
    finetune.add_argument("--split", default="train", help="split of the dataset to train on")
    finetune.add_argument("--output", required=True, help="where to save the adapter (LoRA + projector) and processor")
    finetune.add_argument("--image-column", default="image")
    finetune.add_argument("--question-column", default="question")
    finetune.add_argument("--answer-column", default="answer")
    finetune.add_argument("--question", default=None, help="question asked of rows without a question column")
    finetune.add_argument(
        "--prompt-template", default=None, help="with {image} and {question}; LLaVA-1.5's by default"
    )
    finetune.add_argument("--lora-rank", type=int, default=8)
    finetune.add_argument("--lora-alpha", type=int, default=16)
    finetune.add_argument("--lora-dropout", type=float, default=0.0)
    finetune.add_argument("--train-vision-tower", action="store_true", help="LoRA on the tower's attention too")
    finetune.add_argument("--max-steps", type=int, default=100)
    finetune.add_argument("--learning-rate", type=float, default=2e-4)
    finetune.add_argument("--batch-size", type=int, default=4)
    finetune.add_argument("--gradient-accumulation-steps", type=int, default=1)
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--merge-to", default=None, help="also save the merged model (and processor) there")
    finetune.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..data import load_image_dataset
    from ..llava import (
        DEFAULT_PROMPT_TEMPLATE,
        LlavaImageQACollator,
        build_lora_config,
        finetune_llava_lora,
        training_losses,
    )

    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    try:
        processor = AutoProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{args.model} has no processor ({error}); graft-llava writes one.") from error
    collator = LlavaImageQACollator(
        processor,
        prompt_template=args.prompt_template or DEFAULT_PROMPT_TEMPLATE,
        image_column=args.image_column,
        question_column=args.question_column,
        answer_column=args.answer_column,
        default_question=args.question,
    )
    lora_config = build_lora_config(
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        train_vision_tower=args.train_vision_tower,
    )
    trainer = finetune_llava_lora(
        model,
        processor,
        load_image_dataset(args.dataset, args.split),
        args.output,
        lora_config=lora_config,
        collator=collator,
        seed=args.seed,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    losses = training_losses(trainer)
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} logged steps")
    print(f"adapter saved to {args.output}")
    if args.merge_to:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(args.merge_to)
        processor.save_pretrained(args.merge_to)
        print(f"merged model saved to {args.merge_to}")
    return 0
