"""The `uniflow-hf` console script (also `python -m uniflow_hf.cli`). Outside the package, so that `--help` imports
nothing heavy: a command's module in `uniflow_hf.commands` is imported only when that command runs."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # in `uniflow_hf.commands`: its `register(subparsers)` adds the command
    help: str


COMMANDS = {
    "generate": Command("generate", "generate images of a class with a class-conditional pipeline"),
    "reconstruct": Command("generate", "reconstruct images with a UniFlow tokenizer, print PSNR/SSIM"),
    "attach-guide": Command("generate", "give a class-conditional pipeline a weaker DiT as its autoguidance guide"),
    "set-defaults": Command("generate", "save a class-conditional pipeline with other default sampling settings"),
    "train-tokenizer": Command("train", "train a UniFlow tokenizer (flow + self-distillation losses)"),
    "train-generator": Command("train", "train a class-conditional latent generator (a DiT) on a frozen tokenizer"),
    "evaluate": Command("evaluate", "PSNR / SSIM / rFID of a tokenizer's reconstructions of images"),
    "convert": Command("convert", "convert an official UniFlow release folder to a uniflow-hf folder"),
    "graft-llava": Command("llava", "graft UniFlow's encoder into a LLaVA checkpoint as its tower"),
    "finetune-llava": Command("llava", "LoRA fine-tuning of a LLaVA-UniFlow on image-question-answer rows"),
    "fmnist": Command("fmnist", "the UniFlow-FMNIST recipe (data, pretraining, adaptation, generator, report)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `uniflow-hf`: with a known `command`, its module's full parsers; else one listing the commands."""
    description = "UniFlow tokenizer tools: generate, reconstruct, train, evaluate, convert."
    parser = argparse.ArgumentParser(prog="uniflow-hf", description=description)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command not in COMMANDS:
        for name, entry in COMMANDS.items():
            subparsers.add_parser(name, help=entry.help)
        return parser
    importlib.import_module(f"uniflow_hf.commands.{COMMANDS[command].module}").register(subparsers)
    for name, subparser in subparsers.choices.items():
        if subparser.description is None and name in COMMANDS:
            subparser.description = COMMANDS[name].help
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, TypeError) as error:
        print(f"uniflow-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        destroy_process_group()


def destroy_process_group() -> None:
    """Destroy the process group a launched command initialised (gloo's threads can otherwise abort the finished
    process at teardown, pytorch/pytorch#190489), after collecting the command's garbage: a DDP reducer freed after
    the group would destroy it again while holding the GIL."""
    distributed = sys.modules.get("torch.distributed")  # a command that never imported torch has nothing to close
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        gc.collect()
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
