"""`uniflow-hf convert`: an official UniFlow release folder -> a uniflow-hf folder."""

from __future__ import annotations


def register(subparsers) -> None:
    from ..conversion_scripts.convert_uniflow_original_to_hf import DTYPES

    parser = subparsers.add_parser("convert")
    parser.add_argument("--input", required=True, help="official release folder")
    parser.add_argument("--output", required=True, help="where to write the uniflow-hf folder")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--verify", action="store_true", help="compare both folders on the same input")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..conversion_scripts.convert_uniflow_original_to_hf import main

    argv = ["--input", args.input, "--output", args.output, "--dtype", args.dtype] + (["--verify"] if args.verify else [])
    return main(argv)
