"""`python -m uniflow_hf.cli COMMAND ...`: `uniflow_hf_cli.main` for launchers that take a module (`torchrun`,
`accelerate launch -m`)."""

import sys

from uniflow_hf_cli import main


if __name__ == "__main__":
    sys.exit(main())
