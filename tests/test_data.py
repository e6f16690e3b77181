"""`uniflow_hf.data.load_image_dataset`: the one loader of the training and evaluation commands."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from uniflow_hf.data import load_image_dataset


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(count)]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    dataset = datasets.Dataset.from_dict({"image": _images(3), "label": [0, 1, 0]})
    dataset.save_to_disk(tmp_path / "plain")
    assert load_image_dataset(tmp_path / "plain")["label"] == [0, 1, 0]

    datasets.DatasetDict({"train": dataset, "test": dataset.select([2])}).save_to_disk(tmp_path / "dict")
    assert len(load_image_dataset(tmp_path / "dict", "test")) == 1
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        load_image_dataset(tmp_path / "dict", "validation")


def test_image_folder_gives_labels_from_sub_folders(tmp_path):
    for name, image in zip(["cat", "dog", "dog"], _images(3)):
        (tmp_path / name).mkdir(exist_ok=True)
        image.save(tmp_path / name / f"{len(list((tmp_path / name).iterdir()))}.png")
    dataset = load_image_dataset(tmp_path)
    assert dataset.features["label"].names == ["cat", "dog"]
    assert sorted(dataset["label"]) == [0, 1, 1]


def test_bad_paths_are_named(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_image_dataset(tmp_path / "file.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a folder .* could not load it"):
        load_image_dataset("no-such-user/no-such-dataset-for-uniflow")


def test_streaming_yields_the_same_rows(tmp_path):
    dataset = datasets.Dataset.from_dict({"image": _images(3), "label": [0, 1, 0]})
    datasets.DatasetDict({"train": dataset}).save_to_disk(tmp_path / "dict")
    stream = load_image_dataset(tmp_path / "dict", "train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [row["label"] for row in stream] == [0, 1, 0]
    for name, image in zip(["cat", "dog"], _images(2)):
        (tmp_path / "folder" / name).mkdir(parents=True)
        image.save(tmp_path / "folder" / name / "0.png")
    stream = load_image_dataset(tmp_path / "folder", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert sorted(row["label"] for row in stream) == [0, 1]
