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


if __name__ == "__main__":
    sys.exit(main())
