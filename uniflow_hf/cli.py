"""`python -m uniflow_hf.cli COMMAND ...`: the `uniflow-hf` console script for launchers that take a module
(`torchrun`, `accelerate launch -m`). The commands and `main` are in `uniflow_hf_cli`, which says why it sits outside
this package."""

import sys

from uniflow_hf_cli import main


if __name__ == "__main__":
    sys.exit(main())
