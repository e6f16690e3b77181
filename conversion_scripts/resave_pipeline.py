"""Re-save a UniFlow pipeline folder in place in the form the package writes today (diffusers' custom pipeline form:
`[module file, class]` entries in `model_index.json`, the code beside them, the image processor also in
`tokenizer/`), its weights unchanged and its model card kept.

    python conversion_scripts/resave_pipeline.py uniflow_hf/models/uniflow-fmnist

The folder is loaded by the package in float32 and saved to a sibling folder; every weight file must hold exactly the
tensors it held (names, dtypes, values), and then keeps its original bytes; the configs lose the load path diffusers
records (`_name_or_path`); only then does the new folder replace the old one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


MODEL_CARD_NAME = "README.md"


def weight_files(folder: Path) -> dict[Path, dict]:
    from safetensors.torch import load_file

    return {path.relative_to(folder): load_file(path) for path in sorted(folder.rglob("*.safetensors"))}


def check_same_tensors(before: dict[Path, dict], after: dict[Path, dict]) -> None:
    if set(before) != set(after):
        raise ValueError(f"The re-saved weight files {sorted(map(str, after))} differ from {sorted(map(str, before))}.")
    for path, tensors in before.items():
        resaved = after[path]
        if set(tensors) != set(resaved):
            raise ValueError(f"{path}: the re-saved tensors have other names ({sorted(set(tensors) ^ set(resaved))}).")
        changed = [name for name, tensor in tensors.items()
                   if tensor.dtype != resaved[name].dtype or not tensor.equal(resaved[name])]
        if changed:
            raise ValueError(f"{path}: re-saving changed {changed[:5]} ({len(changed)} tensors).")


def drop_load_paths(folder: Path) -> None:
    """Remove `_name_or_path` (where this machine loaded the folder from) from the saved configs."""
    for path in folder.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def resave_pipeline(folder: str | Path) -> None:
    import torch
    from diffusers import DiffusionPipeline

    import uniflow_hf  # noqa: F401  (the package's classes load the folder, whatever form it was saved in)

    folder = Path(folder).resolve()
    before = weight_files(folder)
    pipeline = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if (folder / MODEL_CARD_NAME).is_file():  # a save keeps a card the folder has
            shutil.copyfile(folder / MODEL_CARD_NAME, staging / MODEL_CARD_NAME)
        pipeline.save_pretrained(staging)
        check_same_tensors(before, weight_files(staging))
        drop_load_paths(staging)
        for path in before:
            shutil.copyfile(folder / path, staging / path)
        shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a UniFlow pipeline folder (model_index.json), re-saved in place")
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "model_index.json").is_file():
        print(f"error: {args.folder} has no model_index.json: expected a UniFlow pipeline folder.", file=sys.stderr)
        return 2
    try:
        resave_pipeline(args.folder)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Re-saved {args.folder}; its weights are unchanged.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
