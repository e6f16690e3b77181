"""`uniflow-hf` console script: one sub-command per module in `uniflow_hf.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys


# Each module defines `register(subparsers)`, which adds its sub-command(s) with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "uniflow_hf.commands.convert",
    "uniflow_hf.commands.evaluate",
    "uniflow_hf.commands.fmnist",
    "uniflow_hf.commands.generate",
    "uniflow_hf.commands.llava",
    "uniflow_hf.commands.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniflow-hf",
        description="UniFlow tokenizer tools: generate, reconstruct, train, evaluate, convert.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    """Under `torchrun`/`accelerate launch` a command initialises a process group; it must be destroyed before the
    interpreter exits, or gloo's worker threads can abort the process at teardown ("terminate called without an
    active exception", pytorch/pytorch#190489) after all the work is done."""
    distributed = sys.modules.get("torch.distributed")  # a command that never imported torch has nothing to close
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
