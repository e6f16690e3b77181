"""`python -m uniflow_hf.cli` (e.g. under `torchrun` or `accelerate launch`): the `uniflow-hf` console script.

The console script itself is `uniflow_hf_cli.main`, outside this package so that `uniflow-hf --help` does not pay for
the registrations `import uniflow_hf` makes; this module is the same entry point for launchers that take a module.
"""

import sys

from uniflow_hf_cli import COMMANDS, build_parser, main


__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
