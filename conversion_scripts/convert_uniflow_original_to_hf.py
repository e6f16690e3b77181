"""Convert an official UniFlow release folder (config.json + safetensors, usually bf16) into a uniflow-hf folder: our
config format and parameter names, one dtype, a preprocessor config, and the code beside the weights, so that it loads
without uniflow-hf through `trust_remote_code=True` as the release does (the options of `uniflow-hf convert`).

    python conversion_scripts/convert_uniflow_original_to_hf.py --input OFFICIAL_DIR --output OUT_DIR \
        [--dtype float32|bfloat16|float16] [--verify]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(input_dir: str | Path, output_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the uniflow-hf folder of the release at `input_dir`; returns `output_dir`."""
    from uniflow_hf.evaluation import load_tokenizer

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not (input_dir / "config.json").is_file():
        raise FileNotFoundError(f"{input_dir} has no config.json: expected an official UniFlow release folder.")
    model, processor = load_tokenizer(str(input_dir), dtype=DTYPES[dtype])
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


@torch.no_grad()
def verify(input_dir: str | Path, output_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Max abs differences of the latents and reconstructions of both folders, run in float32 on the same input."""
    from uniflow_hf import UniFlowModel

    official = UniFlowModel.from_pretrained(input_dir, dtype=torch.float32).eval()
    converted = UniFlowModel.from_pretrained(output_dir, dtype=torch.float32).eval()
    config = official.config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, config.num_channels, config.image_size, config.image_size, generator=generator)
    noise = torch.randn(1, config.grid_size**2, config.patch_dim, generator=generator)
    return {
        "latents": (official.encode(pixel_values) - converted.encode(pixel_values)).abs().max().item(),
        "reconstruction": (
            official.reconstruct(pixel_values, noise=noise) - converted.reconstruct(pixel_values, noise=noise)
        ).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    from uniflow_hf_cli import main as cli_main

    return cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
