"""Convert a UniFlow model folder (ours or an official release) into a diffusers pipeline folder, and back.

    # UniFlow folder (and a latent generator) -> UniFlowReconstructionPipeline (UniFlowClassConditionalPipeline)
    python conversion_scripts/convert_uniflow_to_diffusers.py --input UNIFLOW_DIR [--generator GENERATOR_DIR] \
        --output PIPELINE_DIR
    # pipeline folder -> plain UniFlow folder (and the generator folder, for a class-conditional pipeline)
    python conversion_scripts/convert_uniflow_to_diffusers.py --reverse --input PIPELINE_DIR --output UNIFLOW_DIR \
        [--generator GENERATOR_DIR]

A generator folder is a saved `DiTTransformer2DModel`, optionally with its `scheduler_config.json`, a
`guide_transformer/` folder and `uniflow_generator_config.json` (the pipeline's `settings`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


GENERATOR_CONFIG_NAME = "uniflow_generator_config.json"
GUIDE_FOLDER = "guide_transformer"


def convert_uniflow_to_diffusers(
    input_dir: str | Path, output_dir: str | Path, generator_dir: str | Path | None = None, dtype: str = "float32"
):
    """Write the pipeline folder of a UniFlow folder (and generator folder) in `dtype` (a `DTYPES` key); returns it."""
    from diffusers import DiTTransformer2DModel

    from uniflow_hf import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler, UniFlowReconstructionPipeline
    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import DTYPES
    from uniflow_hf.evaluation import load_tokenizer

    torch_dtype = DTYPES[dtype]
    tokenizer, image_processor = load_tokenizer(str(input_dir), dtype=torch_dtype)
    if generator_dir is None:
        pipeline = UniFlowReconstructionPipeline(tokenizer=tokenizer, image_processor=image_processor)
    else:
        generator_dir, guide_dir = Path(generator_dir), Path(generator_dir) / GUIDE_FOLDER
        transformer = DiTTransformer2DModel.from_pretrained(generator_dir, torch_dtype=torch_dtype)
        settings_path, expected = generator_dir / GENERATOR_CONFIG_NAME, UniFlowClassConditionalPipeline.setting_names()
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        unknown = set(settings) - set(expected)
        if unknown:
            raise ValueError(f"{settings_path} has unknown keys {sorted(unknown)}; expected {expected}.")
        if (guide_dir / "config.json").is_file():
            settings["guide_transformer"] = DiTTransformer2DModel.from_pretrained(guide_dir, torch_dtype=torch_dtype)
        scheduler = UniFlowFlowMatchScheduler()
        if (generator_dir / UniFlowFlowMatchScheduler.config_name).is_file():
            scheduler = UniFlowFlowMatchScheduler.from_pretrained(generator_dir)
        pipeline = UniFlowClassConditionalPipeline(
            transformer, scheduler, tokenizer, image_processor=image_processor, **settings
        )
    pipeline.save_pretrained(output_dir)
    return pipeline


def convert_diffusers_to_uniflow(
    input_dir: str | Path, output_dir: str | Path, generator_dir: str | Path | None = None
) -> None:
    """Write the plain UniFlow folder of a pipeline folder, and a class-conditional pipeline's generator folder."""
    from diffusers import DiffusionPipeline

    from uniflow_hf import UniFlowClassConditionalPipeline
    from uniflow_hf.pipelines.pipeline_uniflow_utils import UniFlowPipelineMixin

    input_dir = Path(input_dir)
    if not (input_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{input_dir} has no model_index.json: expected a UniFlow pipeline folder.")
    pipeline = DiffusionPipeline.from_pretrained(input_dir)
    if not isinstance(pipeline, UniFlowPipelineMixin):
        raise ValueError(f"{input_dir} holds a {type(pipeline).__name__}, not a UniFlow pipeline.")
    is_class_conditional = isinstance(pipeline, UniFlowClassConditionalPipeline)
    if generator_dir is not None and not is_class_conditional:
        raise ValueError(f"{input_dir} holds no generator (a reconstruction pipeline); drop --generator.")

    pipeline.tokenizer.save_pretrained(output_dir)
    pipeline.processor.save_pretrained(output_dir)
    if is_class_conditional and generator_dir is not None:
        generator_dir = Path(generator_dir)
        pipeline.transformer.save_pretrained(generator_dir)
        pipeline.scheduler.save_pretrained(generator_dir)
        if pipeline.guide_transformer is not None:
            pipeline.guide_transformer.save_pretrained(generator_dir / GUIDE_FOLDER)
        (generator_dir / GENERATOR_CONFIG_NAME).write_text(json.dumps(pipeline.settings, indent=2) + "\n")
    elif is_class_conditional:
        print(f"Note: {input_dir} also holds a latent generator; pass --generator DIR to write it out too.")


def main(argv: list[str] | None = None) -> int:
    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import DTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="UniFlow model folder (pipeline folder with --reverse)")
    parser.add_argument("--output", required=True, help="pipeline folder (UniFlow model folder with --reverse)")
    parser.add_argument("--generator", default=None, help="generator folder to read (to write with --reverse)")
    parser.add_argument("--reverse", action="store_true", help="pipeline folder -> plain UniFlow folder")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="not with --reverse")
    args = parser.parse_args(argv)
    try:
        if args.reverse:
            convert_diffusers_to_uniflow(args.input, args.output, args.generator)
        else:
            convert_uniflow_to_diffusers(args.input, args.output, args.generator, args.dtype)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.output}" + (f" and {args.generator}" if args.reverse and args.generator else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
