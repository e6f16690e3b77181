"""`uniflow-hf train-tokenizer` and `uniflow-hf train-generator`: training with the Hugging Face Trainer.

Every `TrainingArguments` field is an option (`--learning_rate`, `--max_steps`...; dashes work too). Multi-GPU /
multi-node: launch the same command with `torchrun` or `accelerate launch` (examples/README.md)."""

# No `from __future__ import annotations`: HfArgumentParser reads the dataclass field types at runtime.
import argparse
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainTokenizerArguments:
    """Data and model options of `uniflow-hf train-tokenizer` (the rest are `TrainingArguments`)."""

    dataset: str = _help("an image folder, a dataset saved with `save_to_disk`, or a dataset name on the Hub")
    image_column: str = _help("the dataset column holding the images", default="image")
    train_split: str = _help("split to train on when the dataset has several", default="train")
    eval_split: str | None = _help("split to evaluate on (e.g. 'validation')", default=None)
    streaming: bool = _help("stream the training split (split between processes); needs --max_steps", default=False)
    init_from: str | None = _help("UniFlowModel folder to start from (ours or the official format)", default=None)
    encoder: str | None = _help("a transformers vision encoder folder (CLIP, SigLIP...) to build around", default=None)
    config: str | None = _help(
        "UniFlowConfig fields (JSON file or inline): the model, the decoder with --encoder, or overrides", default=None
    )
    no_distillation: bool = _help("train without the self-distillation teacher", default=False)
    no_augmentation: bool = _help("no random resized crop / horizontal flip", default=False)
    lora: str | None = _help("train LoRA adapters only, on the 'encoder', the 'decoder' or 'both'", default=None)
    lora_rank: int = _help("LoRA rank r", default=8)
    lora_alpha: int | None = _help("LoRA alpha (default 2r)", default=None)


@dataclass
class TrainGeneratorArguments:
    """Tokenizer and images of `uniflow-hf train-generator` (the rest are `GeneratorTrainingArguments`)."""

    tokenizer: str = _help("UniFlow model folder (or a pipeline folder holding one)")
    dataset: str = _help("a labelled imagefolder directory (one sub-folder per class) or a `save_to_disk` dataset")
    train_split: str = _help("split to train on when the dataset has several", default="train")


@dataclass
class TrainingRunArguments:
    """What every training command does with a used output folder and unreadable images."""

    overwrite_output_dir: bool = _help("train into a non-empty --output-dir, removing its checkpoints", default=False)
    skip_unreadable: bool = _help("train without the images that cannot be read (listed by name)", default=False)


def _tokenizer_argument_types():
    from transformers import TrainingArguments

    return TrainTokenizerArguments, TrainingRunArguments, TrainingArguments


def _generator_argument_types():
    from ..generator_training import GeneratorTrainingArguments

    return TrainGeneratorArguments, TrainingRunArguments, GeneratorTrainingArguments


def add_training_command(subparsers, name: str, argument_types, func, **kwargs):
    """A sub-command whose options are the fields of the dataclasses `argument_types()` (HfArgumentParser)."""
    from transformers import HfArgumentParser

    parents = [HfArgumentParser(argument_types(), add_help=False)]
    formatter_class = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(name, parents=parents, formatter_class=formatter_class, **kwargs)
    parser.set_defaults(func=func, argument_types=argument_types)
    return parser


def register(subparsers) -> None:
    for name, argument_types, func in (
        ("train-tokenizer", _tokenizer_argument_types, run_train_tokenizer),
        ("train-generator", _generator_argument_types, run_train_generator),
    ):
        add_training_command(subparsers, name, argument_types, func, description=__doc__)


def parse_arguments(args: argparse.Namespace):
    """The parsed options as instances of the command's dataclasses."""
    argument_types = args.argument_types()
    names = {option.name for argument_type in argument_types for option in fields(argument_type)}
    return parse_training_options(argument_types, {key: value for key, value in vars(args).items() if key in names})


def parse_training_options(argument_types, values: dict):
    """`HfArgumentParser(argument_types).parse_dict(values)` (`TrainingArguments` last) after the checks that need no
    work (output folder, launch, step and batch numbers); with `--overwrite-output-dir`, old checkpoints go."""
    from transformers import HfArgumentParser

    from ..io import check_training_output_dir, remove_checkpoints
    from ..training import check_cpu_launch, check_training_numbers, cpu_processes_need_use_cpu

    if not values.get("output_dir"):
        raise ValueError("--output-dir is required: the folder for checkpoints and the trained model.")
    resume = values.get("resume_from_checkpoint") not in (None, "", "false", "False")
    overwrite = bool(values.get("overwrite_output_dir")) if TrainingRunArguments in argument_types else None
    check_training_output_dir(values["output_dir"], resume=resume, overwrite=overwrite)
    check_cpu_launch(values.get("deepspeed"))
    if cpu_processes_need_use_cpu():
        values = {**values, "use_cpu": True}
    parsed = HfArgumentParser(argument_types).parse_dict(values)
    check_training_numbers(parsed[-1])
    if overwrite and not resume and parsed[-1].process_index == 0:
        remove_checkpoints(parsed[-1].output_dir)
    return parsed


def read_json_argument(value: str | None) -> dict:
    """`--config`: a JSON file or an inline JSON object."""
    if value is None:
        return {}
    try:
        config = json.loads(Path(value).read_text(encoding="utf-8") if os.path.isfile(value) else value)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {value!r} is neither a JSON file nor an inline JSON object: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"--config must hold a JSON object of UniFlowConfig fields, got {type(config).__name__}.")
    return config


def build_model(script_args: TrainTokenizerArguments, seed: int):
    """The model to train and its image processor (from --init-from, --encoder or --config)."""
    from transformers import AutoModel, set_seed
    from transformers.utils import logging

    from .. import UniFlowConfig, UniFlowImageProcessor, UniFlowModel

    if script_args.init_from and script_args.encoder:
        raise ValueError("Pass either --init-from (a UniFlow model) or --encoder (a vision encoder), not both.")
    config_fields = read_json_argument(script_args.config)
    set_seed(seed)  # the freshly initialised parts, and so the teacher of a from-scratch run, depend on it only
    if script_args.init_from:
        model = UniFlowModel.from_pretrained(script_args.init_from, **config_fields)
        if os.path.isfile(os.path.join(script_args.init_from, "preprocessor_config.json")):
            return model, UniFlowImageProcessor.from_pretrained(script_args.init_from)
    elif script_args.encoder:
        model = UniFlowModel.from_encoder(AutoModel.from_pretrained(script_args.encoder), **config_fields)
    elif config_fields:
        model = UniFlowModel(UniFlowConfig(**config_fields))
        if not script_args.no_distillation and model.config.distillation_mode != "none":
            logging.get_logger(__name__).warning(
                "Training from scratch: the distillation teacher is the random encoder (see --init-from, --encoder)."
            )
    else:
        raise ValueError("Pass --init-from DIR (a UniFlow model), --encoder DIR (a vision encoder) or --config JSON.")
    return model, UniFlowImageProcessor.from_image_size(model.config.image_size)


def resume_argument(value: str | None) -> str | bool | None:
    """`--resume-from-checkpoint`: a checkpoint folder, or true / latest for the last complete one in --output-dir."""
    if value is None or value.lower() == "false":
        return None
    if value.lower() in ("true", "latest", "last"):
        return True
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume-from-checkpoint {value!r} is not a checkpoint folder (or 'true').")
    return value


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from ..data import check_images, load_image_dataset
    from ..training import LORA_TARGETS, lora_config_for, train_tokenizer

    script_args, run_args, training_args = parse_arguments(args)
    if script_args.lora is not None and script_args.lora not in LORA_TARGETS:
        raise ValueError(f"--lora must be one of {LORA_TARGETS}, got {script_args.lora!r}.")
    resume_from_checkpoint = resume_argument(training_args.resume_from_checkpoint)
    train_dataset = load_image_dataset(script_args.dataset, script_args.train_split, streaming=script_args.streaming)
    train_dataset = check_images(train_dataset, script_args.image_column, run_args.skip_unreadable)
    eval_dataset = load_image_dataset(script_args.dataset, script_args.eval_split) if script_args.eval_split else None
    model, processor = build_model(script_args, training_args.seed)

    lora = script_args.lora and lora_config_for(model, script_args.lora, script_args.lora_rank, script_args.lora_alpha)
    trainer = train_tokenizer(
        model,
        train_dataset,
        training_args,
        image_column=script_args.image_column,
        processor=processor,
        eval_dataset=eval_dataset,
        distillation=not script_args.no_distillation,
        lora_config=lora,
        augment=not script_args.no_augmentation,
        resume_from_checkpoint=resume_from_checkpoint,
    )
    if trainer.is_world_process_zero():  # one JSON line: where the model is, and the final training metrics
        print(json.dumps({"output_dir": training_args.output_dir, **trainer.state.log_history[-1]}))
    return 0


def run_train_generator(args: argparse.Namespace) -> int:
    from ..data import check_images, load_image_dataset
    from ..generator_training import train_generator
    from .generate import load_reconstruction_pipeline
    from ..io import check_output_dir

    script_args, run_args, training_args = parse_arguments(args)
    resume_from_checkpoint = resume_argument(training_args.resume_from_checkpoint)
    if training_args.latent_cache_dir:
        check_output_dir(training_args.latent_cache_dir, "--latent-cache-dir")
    dataset = load_image_dataset(script_args.dataset, script_args.train_split)
    dataset = check_images(dataset, training_args.image_column, run_args.skip_unreadable)
    tokenizer = load_reconstruction_pipeline(script_args.tokenizer).tokenizer
    result = train_generator(tokenizer, dataset, training_args, resume_from_checkpoint=resume_from_checkpoint)
    if training_args.process_index == 0:
        last = result.losses[-100:]
        mean = sum(last) / max(1, len(last))
        print(f"Trained {len(result.losses)} steps (mean loss of the last {len(last)}: {mean:.4f})")
        print(f"Saved the UniFlowClassConditionalPipeline to {training_args.output_dir}")
    return 0
