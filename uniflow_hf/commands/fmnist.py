"""`uniflow-hf fmnist ...`: the UniFlow-FMNIST recipe, stage by stage (fixed seeds)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..recipes import fmnist as recipe
from .train import add_training_command, parse_arguments


def register(subparsers) -> None:
    from ..modeling.configuration_uniflow import FLOW_TIMESTEP_DISTRIBUTIONS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output-dir", required=True)
    common.add_argument("--epochs", type=float, default=1.0)
    common.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    common.add_argument("--seed", type=int, default=0)
    flow_times = argparse.ArgumentParser(add_help=False)
    flow_times.add_argument(
        "--flow-timestep-distribution", default=None, choices=FLOW_TIMESTEP_DISTRIBUTIONS,
        help="training times of the flow loss (default: the tokenizer's config; 'fat_lognormal' for a new one)",
    )
    flow_times.add_argument("--flow-timestep-logit-mean", type=float, help="logit-normal mean (< 0: nearer the noise)")
    flow_times.add_argument("--flow-timestep-logit-std", type=float)

    stages = subparsers.add_parser("fmnist").add_subparsers(dest="stage", metavar="STAGE", required=True)
    stage = stages.add_parser(
        "pretrain-encoder", parents=[common], help="a. train a small UniFlow encoder as a Fashion-MNIST classifier"
    )
    stage.set_defaults(func=_pretrain)

    stage = stages.add_parser(
        "adapt", parents=[common, flow_times], help="b. UniFlow-adapt the pretrained encoder (distillation + decoder)"
    )
    stage.add_argument("--encoder", required=True, help="output folder of `pretrain-encoder`")
    stage.add_argument("--distillation-mode", default="adaptive", choices=["adaptive", "uniform", "none"])
    stage.add_argument("--freeze-encoder", action="store_true")
    stage.add_argument("--init-tokenizer", default=None, help="continue from this adapted tokenizer (same teacher)")
    stage.add_argument("--learning-rate", type=float, default=1e-3)
    stage.set_defaults(func=_adapt)

    stage = stages.add_parser(
        "finetune-decoder", parents=[common, flow_times],
        help="b'. train only the decoder of an adapted tokenizer (encoder and latents unchanged)",
    )
    stage.add_argument("--tokenizer", required=True, help="output folder of `adapt`")
    stage.add_argument("--learning-rate", type=float, default=5e-4)
    stage.set_defaults(func=_finetune_decoder)

    stage = add_training_command(
        stages, "train-generator", _generator_argument_types, _generator,
        help="c. class-conditional latent generator -> a pipeline folder (every train-generator option)",
    )
    stage.set_defaults(**recipe.FMNIST_GENERATOR_DEFAULTS)


@dataclass
class FmnistGeneratorArguments:
    """Stage c's own options (the rest are `GeneratorTrainingArguments`, with the recipe's defaults)."""

    tokenizer: str = field(metadata={"help": "output folder of `adapt`"})
    max_train: int | None = field(default=None, metadata={"help": "use only the first N training images"})


def _generator_argument_types():
    from ..generator_training import GeneratorTrainingArguments

    return FmnistGeneratorArguments, GeneratorTrainingArguments


def _flow_timestep_overrides(args) -> dict:
    names = ("flow_timestep_distribution", "flow_timestep_logit_mean", "flow_timestep_logit_std")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _pretrain(args) -> int:
    recipe.pretrain_encoder(args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed)
    return 0


def _adapt(args) -> int:
    recipe.adapt_tokenizer(
        args.encoder, args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed,
        distillation_mode=args.distillation_mode, freeze_encoder=args.freeze_encoder,
        init_tokenizer=args.init_tokenizer, learning_rate=args.learning_rate,
        config_overrides=_flow_timestep_overrides(args),
    )
    return 0


def _finetune_decoder(args) -> int:
    recipe.finetune_decoder(
        args.tokenizer, args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed,
        learning_rate=args.learning_rate, config_overrides=_flow_timestep_overrides(args),
    )
    return 0


def _generator(args) -> int:
    stage_args, training_args = parse_arguments(args)
    recipe.train_fmnist_generator(stage_args.tokenizer, training_args, max_train=stage_args.max_train)
    return 0
