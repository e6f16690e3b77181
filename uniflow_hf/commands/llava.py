"""`uniflow-hf graft-llava` (UniFlow's encoder as the vision tower of a LLaVA checkpoint) and `uniflow-hf
finetune-llava` (LoRA fine-tuning of a LLaVA-UniFlow on image-question-answer data)."""

# No `from __future__ import annotations`: HfArgumentParser reads the dataclass field types at runtime.
import argparse
from dataclasses import dataclass, field

from ..conversion_scripts.graft_uniflow_into_llava import graft_uniflow_into_llava


def register(subparsers) -> None:
    graft = subparsers.add_parser("graft-llava")
    graft.add_argument("--llava", required=True, help="LLaVA checkpoint folder (transformers format, any tower)")
    graft.add_argument("--uniflow", required=True, help="UniFlowModel, official release or UniFlowVisionModel folder")
    graft.add_argument("--output", required=True, help="where to write the grafted LLaVA")
    graft.add_argument("--keep-projector", action="store_true", help="keep the old projector when it fits")
    graft.add_argument(
        "--vision-feature-layer", type=int, nargs="+",
        help="hidden state(s) of the tower fed to the projector (default: the LLaVA's own; -1 with latent features)",
    )
    graft.add_argument("--vision-feature-select-strategy", choices=("default", "full"), help="drop or keep the CLS")
    graft.add_argument(
        "--vision-feature-source", choices=("encoder", "latent"),
        help="feed the encoder's hidden states or also UniFlow's latent tokens (default: the UniFlow config's)",
    )
    graft.add_argument("--seed", type=int, default=0, help="seed of the projector's re-initialisation")
    graft.add_argument("--no-verify", action="store_true", help="don't reload the output to check it")
    graft.set_defaults(func=run_graft)

    from transformers import HfArgumentParser

    finetune = subparsers.add_parser(
        "finetune-llava", parents=[HfArgumentParser(_finetune_argument_types(), add_help=False)]
    )
    finetune.set_defaults(func=run_finetune)


def run_graft(args: argparse.Namespace) -> int:
    layers = args.vision_feature_layer
    output = graft_uniflow_into_llava(
        args.llava, args.uniflow, args.output, keep_projector=args.keep_projector,
        vision_feature_layer=layers[0] if layers is not None and len(layers) == 1 else layers,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        vision_feature_source=args.vision_feature_source, seed=args.seed, verify=not args.no_verify,
    )
    print(f"grafted {args.uniflow} into {args.llava} -> {output}")
    return 0


@dataclass
class FinetuneLlavaArguments:
    """Model, data and LoRA options of `uniflow-hf finetune-llava` (the rest are `TrainingArguments`)."""

    model: str = field(metadata={"help": "LLaVA-UniFlow folder with its processor (e.g. graft-llava's output)"})
    dataset: str = field(metadata={"help": "a `save_to_disk` or image folder, or a `datasets.load_dataset` name"})
    split: str = field(default="train", metadata={"help": "split of the dataset to train on"})
    image_column: str = field(default="image")
    question_column: str = field(default="question")
    answer_column: str = field(default="answer")
    question: str | None = field(default=None, metadata={"help": "question asked of rows without a question column"})
    prompt_template: str | None = field(default=None, metadata={"help": "with {image} and {question} (LLaVA-1.5's)"})
    lora_rank: int = field(default=8)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.0)
    train_vision_tower: bool = field(default=False, metadata={"help": "LoRA on the tower's attention too"})
    merge_to: str | None = field(default=None, metadata={"help": "also save the merged model (and processor) there"})


def _finetune_argument_types():
    from transformers import TrainingArguments

    from .train import TrainingRunArguments

    return FinetuneLlavaArguments, TrainingRunArguments, TrainingArguments


def run_finetune(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..data import check_images, load_image_dataset
    from ..io import check_output_dir
    from ..llava import DEFAULT_PROMPT_TEMPLATE, LlavaImageQACollator, build_lora_config, finetune_llava_lora
    from ..llava import training_losses
    from .train import parse_training_options, resume_argument

    values = {key: value for key, value in vars(args).items() if key not in ("command", "func")}
    if not values.get("output_dir"):
        raise ValueError("--output-dir is required: where to save the adapter (LoRA + projector) and processor.")
    script_args, run_args, training_args = parse_training_options(_finetune_argument_types(), values)
    resume_from_checkpoint = resume_argument(training_args.resume_from_checkpoint)
    if script_args.merge_to:
        check_output_dir(script_args.merge_to, "--merge-to")
    dataset = check_images(
        load_image_dataset(script_args.dataset, script_args.split), script_args.image_column, run_args.skip_unreadable
    )
    model = LlavaForConditionalGeneration.from_pretrained(script_args.model, dtype=torch.float32)
    try:
        processor = AutoProcessor.from_pretrained(script_args.model)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{script_args.model} has no processor ({error}); graft-llava writes one.") from error
    collator = LlavaImageQACollator(
        processor, prompt_template=script_args.prompt_template or DEFAULT_PROMPT_TEMPLATE,
        image_column=script_args.image_column, question_column=script_args.question_column,
        answer_column=script_args.answer_column, default_question=script_args.question,
    )
    lora_config = build_lora_config(
        rank=script_args.lora_rank, alpha=script_args.lora_alpha, dropout=script_args.lora_dropout,
        train_vision_tower=script_args.train_vision_tower,
    )
    trainer = finetune_llava_lora(
        model, processor, dataset, training_args, lora_config=lora_config, collator=collator,
        resume_from_checkpoint=resume_from_checkpoint,
    )
    if trainer.is_world_process_zero():
        losses = training_losses(trainer)
        if losses:
            print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} logged steps")
        print(f"adapter saved to {training_args.output_dir}")
        if script_args.merge_to:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(script_args.merge_to)
            processor.save_pretrained(script_args.merge_to)
            print(f"merged model saved to {script_args.merge_to}")
    return 0
