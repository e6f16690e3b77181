"""The one dataset loader of the training and evaluation commands."""

from __future__ import annotations

import os


def load_image_dataset(path_or_name: str | os.PathLike, split: str = "train", streaming: bool = False):
    """The `split` of a `save_to_disk` folder, an image folder (`imagefolder`: a sub-folder per class gives a `label`
    column) or a `datasets.load_dataset` name, as a `datasets.Dataset` or with `streaming=True` an `IterableDataset`.
    """
    import datasets

    path = os.fspath(path_or_name)
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")):
            dataset = datasets.load_from_disk(path)
            if streaming:  # Arrow files on disk: stream them in one shard per file
                dataset = _select_split(dataset, path, split)
                return dataset.to_iterable_dataset(num_shards=max(1, len(dataset.cache_files)))
        else:
            dataset = datasets.load_dataset("imagefolder", data_dir=path, streaming=streaming)
    elif os.path.exists(path):
        raise ValueError(f"Dataset {path!r} is a file: pass a `save_to_disk` or image folder, or a dataset name.")
    elif os.path.isabs(path) or path.startswith((".", "~")):
        raise FileNotFoundError(f"Dataset folder {path!r} does not exist.")
    else:
        try:
            dataset = datasets.load_dataset(path, split=split, streaming=streaming)
        except Exception as error:  # offline, unknown name, unknown split...
            raise FileNotFoundError(
                f"Dataset {path!r} is not a folder (a `save_to_disk` folder or an image folder) and "
                f"`datasets.load_dataset` could not load it ({error})."
            ) from error
    return _select_split(dataset, path, split)


class UnreadableImagesError(ValueError):
    """Images of a training dataset that PIL cannot read, found before training starts."""


def _image_problem(value) -> str | None:
    """Why the undecoded image `value` (a `datasets.Image(decode=False)` dict) cannot be read, or None."""
    import io

    from PIL import Image

    if value is None:
        return "no image (None)"
    source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
    try:
        with Image.open(source) as image:
            image.verify()  # structure and checksums, without decoding
        if isinstance(source, io.BytesIO):
            source.seek(0)
        with Image.open(source) as image:
            image.load()  # the pixels (verify alone passes a truncated JPEG)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(error).__name__}: {error}"
    return None


def check_images(dataset, image_column: str = "image", skip_unreadable: bool = False, batch_size: int = 256):
    """`dataset` once every image of its `datasets.Image` column opens; else `UnreadableImagesError` naming each bad
    one, or with `skip_unreadable` the dataset without them. Streams and decoded columns are returned as they are."""
    import datasets
    from transformers.utils import logging

    if not isinstance(dataset, datasets.Dataset) or not isinstance(dataset.features.get(image_column), datasets.Image):
        return dataset
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
    problems = {}
    for start in range(0, len(raw), batch_size):
        for offset, value in enumerate(raw[start : start + batch_size][image_column]):
            problem = _image_problem(value)
            if problem is not None:
                name = (value or {}).get("path") or f"row {start + offset}"
                problems[start + offset] = f"{name} ({problem})"
    if not problems:
        return dataset
    more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
    listed = "; ".join(list(problems.values())[:20]) + more
    if not skip_unreadable:
        raise UnreadableImagesError(
            f"{len(problems)} of {len(dataset)} images cannot be read: {listed}. Fix or remove them, or pass "
            "--skip-unreadable to train without them."
        )
    logging.get_logger(__name__).warning(f"Skipping {len(problems)} unreadable image(s): {listed}.")
    return dataset.select([index for index in range(len(dataset)) if index not in problems])


def _select_split(dataset, path: str, split: str):
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise ValueError(f"Dataset {path!r} has no split {split!r}; it has {sorted(dataset)}.")
        dataset = dataset[split]
    return dataset

