"""Convert an official UniFlow release folder (config.json + model.safetensors, single or sharded, usually bf16)
into a clean uniflow-hf folder: our config format, our parameter names, one dtype, plus a preprocessor config. Like
the release, it loads without uniflow-hf through `trust_remote_code=True`: the release's `auto_map` (to its own
code) becomes ours, to the code saved beside the weights (`AutoModelForImageToImage` for the tokenizer, `AutoModel`
for its encoder, `AutoImageProcessor`).

    python conversion_scripts/convert_uniflow_original_to_hf.py --input OFFICIAL_DIR --output OUT_DIR \
        [--dtype float32|bfloat16|float16] [--verify]

`--verify` runs the official layout (loaded with its names mapped) and the converted folder on the same random input
and noise, and reports the max abs difference of latents and reconstructions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(input_dir: str | Path, output_dir: str | Path, dtype: str = "float32") -> Path:
    from uniflow_hf import UniFlowImageProcessor, UniFlowModel

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not (input_dir / "config.json").is_file():
        raise FileNotFoundError(f"{input_dir} has no config.json: expected an official UniFlow release folder.")
    if dtype not in DTYPES:
        raise ValueError(f"Unknown --dtype {dtype!r}: expected one of {sorted(DTYPES)}.")
    model = UniFlowModel.from_pretrained(input_dir, dtype=DTYPES[dtype])
    model.save_pretrained(output_dir)
    if (input_dir / "preprocessor_config.json").is_file():
        processor = UniFlowImageProcessor.from_pretrained(input_dir)
    else:
        processor = UniFlowImageProcessor.from_image_size(model.config.image_size)
    processor.save_pretrained(output_dir)
    return output_dir


@torch.no_grad()
def verify(input_dir: str | Path, output_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Max abs differences between the official folder and the converted one (both run in float32)."""
    from uniflow_hf import UniFlowModel

    official = UniFlowModel.from_pretrained(input_dir, dtype=torch.float32).eval()
    converted = UniFlowModel.from_pretrained(output_dir, dtype=torch.float32).eval()
    config = official.config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, config.num_channels, config.image_size, config.image_size, generator=generator)
    noise = torch.randn(1, config.grid_size**2, config.patch_dim, generator=generator)
    differences = {}
    for name, run in {
        "latents": lambda m: m.encode(pixel_values),
        "reconstruction": lambda m: m.reconstruct(pixel_values, noise=noise),
    }.items():
        differences[name] = (run(official) - run(converted)).abs().max().item()
    return differences


def main(argv: list[str] | None = None) -> int:
    """`python conversion_scripts/convert_uniflow_original_to_hf.py ...`: the options of `uniflow-hf convert`."""
    from uniflow_hf.commands.convert import add_arguments, run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
