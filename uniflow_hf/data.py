"""The one dataset loader of the training and evaluation commands."""

from __future__ import annotations

import os


def load_image_dataset(path_or_name: str | os.PathLike, split: str = "train", streaming: bool = False):
    """A `datasets.Dataset` of images (and whatever columns come with them), or with `streaming=True` a
    `datasets.IterableDataset` read as it goes (web-scale data; `train_tokenizer` splits it between processes).

    `path_or_name` is a folder written by `save_to_disk` (a `Dataset`, or a `DatasetDict` from which `split` is
    taken), an image folder (`imagefolder`: one sub-folder per class gives a `label` column), or the name of a
    dataset `datasets.load_dataset` can load (a Hub name works only online or from the local cache).
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
        raise ValueError(f"Dataset {path!r} is a file: pass a `save_to_disk` folder, an image folder or a dataset name.")
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


def _select_split(dataset, path: str, split: str):
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise ValueError(f"Dataset {path!r} has no split {split!r}; it has {sorted(dataset)}.")
        dataset = dataset[split]
    return dataset


__all__ = ["load_image_dataset"]
