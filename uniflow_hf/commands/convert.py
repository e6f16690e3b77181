"""`uniflow-hf convert`: an official UniFlow release folder -> a uniflow-hf folder."""

from ..conversion_scripts.convert_uniflow_original_to_hf import DTYPES, convert, verify


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert")
    parser.add_argument("--input", required=True, help="official release folder")
    parser.add_argument("--output", required=True, help="where to write the uniflow-hf folder")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the saved weights")
    parser.add_argument("--verify", action="store_true", help="compare both folders on the same input")
    parser.set_defaults(func=run)


def run(args) -> int:
    output = convert(args.input, args.output, args.dtype)
    print(f"converted {args.input} -> {output}")
    if args.verify:
        for name, value in verify(args.input, output).items():
            print(f"{name}: max abs difference {value:.3e}")
    return 0
