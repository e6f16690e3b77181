"""Re-save a UniFlow pipeline folder in place in the form the package writes today; its weight files (checked to
hold the same tensors) keep their bytes and its model card is kept:

    python conversion_scripts/resave_pipeline.py uniflow_hf/models/uniflow-fmnist --link-code
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def weight_files(folder: Path) -> dict[Path, dict]:
    from safetensors.torch import load_file

    return {path.relative_to(folder): load_file(path) for path in sorted(folder.rglob("*.safetensors"))}


def link_package_code(folder: Path) -> list[Path]:
    """Replace each code file of `folder` that is an exact copy of a package source file by a relative link to it
    (for the shipped model: one copy of the code); return the linked files."""
    import uniflow_hf.modeling
    import uniflow_hf.pipelines

    sources = {
        path.name: path
        for package in (uniflow_hf.modeling, uniflow_hf.pipelines)
        for path in Path(package.__file__).resolve().parent.glob("*.py")
    }
    linked = [
        path for path in sorted(folder.rglob("*.py"))
        if path.name in sources and not path.is_symlink() and path.read_bytes() == sources[path.name].read_bytes()
    ]
    for path in linked:
        path.unlink()
        path.symlink_to(os.path.relpath(sources[path.name], path.parent))
    return linked


def resave_pipeline(folder: str | Path, link_code: bool = False) -> None:
    import torch
    from diffusers import DiffusionPipeline

    import uniflow_hf  # noqa: F401  (the package's classes load the folder, whatever form it was saved in)

    folder = Path(folder).resolve()
    before = weight_files(folder)
    pipeline = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if (folder / "README.md").is_file():  # a save keeps a card the folder has
            shutil.copyfile(folder / "README.md", staging / "README.md")
        pipeline.save_pretrained(staging)
        try:
            torch.testing.assert_close(weight_files(staging), before, rtol=0, atol=0)
        except AssertionError as error:
            raise ValueError(f"Re-saving changed the weights: {error}") from error
        for path in staging.rglob("*.json"):
            config = json.loads(path.read_text())
            if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for path in before:
            shutil.copyfile(folder / path, staging / path)
        shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if link_code:
        link_package_code(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a UniFlow pipeline folder (model_index.json), re-saved in place")
    parser.add_argument("--link-code", action="store_true", help="link the code files to the package's source")
    args = parser.parse_args(argv)
    try:
        if not (Path(args.folder) / "model_index.json").is_file():
            raise ValueError(f"{args.folder} has no model_index.json: expected a UniFlow pipeline folder.")
        resave_pipeline(args.folder, link_code=args.link_code)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Re-saved {args.folder}; its weights are unchanged.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
