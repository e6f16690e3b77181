# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Reconstruction quality of a UniFlow tokenizer: PSNR, SSIM and rFID over an image folder or a saved dataset.

    >>> from uniflow_hf.evaluation import evaluate_reconstruction, load_tokenizer, open_image_source
    >>> model, processor = load_tokenizer("path/to/uniflow")  # a UniFlowModel or pipeline folder
    >>> results = evaluate_reconstruction(model, open_image_source("path/to/images"), processor, max_images=1000)
    >>> results["psnr"], results["ssim"]

Images are streamed: read, preprocessed and reconstructed a batch at a time, the metrics accumulated as running sums
(Inception features as their mean and covariance sums), so memory does not grow with the dataset. Under
`torchrun` or `accelerate launch` the images are split between the processes of the default `torch.distributed`
group and the sums reduced across them (no `ACCELERATE_USE_CPU` needed on machines without GPUs). The decoder's
initial noise of the i-th image is drawn from a generator seeded with `seed + i`, so the results do not depend on
the batch size or the number of processes. The metrics compare the reconstruction with the preprocessed
(resized and centre-cropped) original, both mapped back to [0, 1] by `processor.postprocess` (data_range 1).
This module is also the `uniflow-hf evaluate` command.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from PIL import Image

from .metrics import FeatureStatistics, FIDInceptionV3, frechet_distance_of_statistics
from .modeling.loss_uniflow import process_rank_and_world_size, reduce_across_processes
from .metrics import peak_signal_noise_ratio, structural_similarity


class UnreadableImageError(ValueError):
    """An image of the evaluation set could not be read or preprocessed (truncated, empty, not an image, too big)."""


# ---------------------------------------------------------------------------------------------- image sources
class ImageFolderSource:
    """The image files under `root` (recursively, by the extensions PIL can open), in sorted order."""

    def __init__(self, root: str):
        extensions = {extension.lower() for extension in Image.registered_extensions()}
        self.root = root
        self.paths = sorted(
            os.path.join(folder, name)
            for folder, _, names in os.walk(root)
            for name in names
            if os.path.splitext(name)[1].lower() in extensions
        )
        if not self.paths:
            raise ValueError(f"No image files in {root!r} (looked for {', '.join(sorted(extensions)[:8])}, ...).")

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return os.path.relpath(self.paths[index], self.root)

    def load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            image.load()  # decode now: truncated files fail here, not later
            return image.copy()


class DatasetSource:
    """The image column of a `datasets` dataset (e.g. one saved with `save_to_disk`)."""

    def __init__(self, dataset, column: str | None = None):
        import datasets

        if column is None:
            columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
            if not columns:
                raise ValueError(
                    f"The dataset has no image column (a `datasets.Image` feature); its columns are "
                    f"{dict(dataset.features)}."
                )
            column = columns[0]
        elif column not in dataset.column_names:
            raise ValueError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}.")
        self.column = column
        self.dataset = dataset.select_columns([column])

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        return f"{self.column}[{index}]"

    def load(self, index: int) -> Image.Image:
        image = self.dataset[index][self.column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"Row {index} holds a {type(image).__name__}, not an image.")
        image.load()
        return image


def open_image_source(path: str, split: str | None = "test", column: str | None = None):
    """An image folder, or a dataset saved with `save_to_disk` (a `DatasetDict`: its `split`; a `Dataset`: all)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No folder at {path!r}: pass an image folder or a `save_to_disk` dataset folder.")
    if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json")):
        import datasets

        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"The dataset at {path!r} has no split {split!r}; its splits are {list(dataset)}.")
            dataset = dataset[split]
        return DatasetSource(dataset, column)
    return ImageFolderSource(path)


# ------------------------------------------------------------------------------------------------ the model
def load_tokenizer(path: str, **from_pretrained_kwargs):
    """(UniFlowModel, UniFlowImageProcessor) from a `UniFlowModel` folder (ours or the official release) or a
    pipeline folder (with `tokenizer/`, and optionally `image_processor/`). Without a saved image processor, the
    release preprocessing at the model's `image_size` is used. The decoder samples as the model's config says."""
    from .modeling import UniFlowImageProcessor, UniFlowModel

    if not os.path.isdir(path):
        raise FileNotFoundError(f"No model folder at {path!r}.")
    is_pipeline = os.path.isdir(os.path.join(path, "tokenizer"))
    model_folder = os.path.join(path, "tokenizer") if is_pipeline else path
    model = UniFlowModel.from_pretrained(model_folder, **from_pretrained_kwargs).eval()
    processor_folders = [os.path.join(path, "image_processor"), model_folder, path]
    processor_folder = next(
        (folder for folder in processor_folders if os.path.isfile(os.path.join(folder, "preprocessor_config.json"))),
        None,
    )
    if processor_folder is not None:
        processor = UniFlowImageProcessor.from_pretrained(processor_folder)
    else:
        processor = UniFlowImageProcessor.from_image_size(model.config.image_size)
    return model, processor


def quantize_dynamic_int8(model):
    """An int8 copy of `model` for CPU inference: `torch.ao.quantization.quantize_dynamic` of its `nn.Linear`s
    (int8 weights, activations quantised on the fly per call; attention and norms stay float32).

    At the release size (448 px) this runs a reconstruction ~3.6x faster than float32 on one CPU core, with the
    output within ~38 dB PSNR of the float32 one on random weights (benchmarks/README.md): measure it on your
    weights before relying on it. CPU only. The two small Linears whose `weight.dtype` the model reads to pick its
    working dtype (`flow_head.input_proj`, `flow_head.time_embed.linear_1`) stay float32."""
    import copy
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation is a CPU path: move the model to the CPU first.")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"Quantise a float32 model, got {next(model.parameters()).dtype}.")
    qconfig = {
        torch.nn.Linear: default_dynamic_qconfig,
        "flow_head.input_proj": None,
        "flow_head.time_embed.linear_1": None,
    }
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice (torchao is its successor)
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).eval(), qconfig, dtype=torch.qint8)


# ------------------------------------------------------------------------------------------------ evaluation
def _decoder_noise(indices: list[int], seed: int, shape: tuple[int, int]) -> torch.Tensor:
    """The initial noise of each image, from a CPU generator seeded by `seed + index`."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in indices])


def _read_batch(source, indices, processor, preprocess_kwargs, skip_unreadable, skipped) -> tuple[list[int], list]:
    """Preprocessed (1, 3, H, W) images of `indices`; unreadable ones raise or are recorded in `skipped`."""
    kept, pixel_values = [], []
    for index in indices:
        try:
            image = source.load(index)
            pixel_values.append(processor(image, return_tensors="pt", **preprocess_kwargs).pixel_values)
        except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as error:
            message = f"{source.name(index)}: {type(error).__name__}: {error}"
            if not skip_unreadable:
                raise UnreadableImageError(
                    f"Cannot read image {message}. Fix or remove it, or skip unreadable images "
                    "(`skip_unreadable=True`, `--skip-unreadable`): they are then listed in the results."
                ) from error
            skipped.append(message)
            continue
        kept.append(index)
    return kept, pixel_values


def _process_shard(num_images: int, rank: int, world_size: int) -> list[int]:
    """The contiguous block of image indices of process `rank` (the first `num_images % world_size` get one more)."""
    per_process, extra = divmod(num_images, world_size)
    start = rank * per_process + min(rank, extra)
    return list(range(start, start + per_process + (rank < extra)))


def _group_device(device: torch.device) -> torch.device:
    """Where the default group's backend reduces tensors: CUDA for NCCL, else the CPU."""
    if "nccl" in str(torch.distributed.get_backend()):
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate_reconstruction(
    model,
    source,
    processor,
    *,
    resolution: int | None = None,
    num_inference_steps: int | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    inception: FIDInceptionV3 | None = None,
    seed: int = 0,
    skip_unreadable: bool = False,
    accelerator=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Reconstruct the first `max_images` images of `source` (all by default) and score them.

    Args:
        model (`UniFlowModel`): the tokenizer, on the device to use.
        source: `ImageFolderSource`, `DatasetSource` or anything with `__len__`, `load(i) -> PIL image`, `name(i)`.
        processor (`UniFlowImageProcessor`): preprocessing; its `postprocess` maps both images back to [0, 1].
        resolution (`int`, *optional*): resize the short side to this and centre-crop it square (a multiple of the
            patch size); by default the processor's own square crop, else the model's `image_size`.
        num_inference_steps (`int`, *optional*): decoder steps; the model's `num_sampling_steps` otherwise.
        batch_size (`int`): images per forward, per process.
        inception (`FIDInceptionV3`, *optional*): with it, rFID too (on the model's device).
        seed (`int`): the decoder noise of image i is drawn with seed `seed + i`.
        skip_unreadable (`bool`): skip (and list) unreadable images instead of raising `UnreadableImageError` (in
            a multi-process run, a process that raises leaves the others waiting: check the data first, or skip).
        accelerator (`accelerate.Accelerator` or `PartialState`, *optional*): sets up the processes of `torchrun` /
            `accelerate launch` (`PartialState()` by default; one process without a launcher). The images are split
            between the processes of the default `torch.distributed` group (`process_rank_and_world_size`), the
            group the sums are reduced over, whatever accelerate counts. With an `Accelerator` whose mixed precision
            is bf16/fp16, the model runs under its autocast (GPU only).
        progress (`bool`): show a progress bar (main process).

    Returns:
        A dict, the same in every process: `psnr` and `ssim` (means over the images), `rfid` (with `inception`),
        `num_images`, `num_skipped`, `skipped` (names and errors), `resolution`, `num_inference_steps`, `seed`,
        `num_processes` (the images were split between), `process_index` (of this process; 0 writes the results).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = accelerator if accelerator is not None else PartialState()
    rank, world_size = process_rank_and_world_size()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"`max_images` must be a positive integer, got {max_images!r}.")
    patch_size = model.config.patch_size
    crop = processor.crop_size
    if resolution is None and processor.do_center_crop and crop["height"] == crop["width"]:
        resolution, preprocess_kwargs = crop["height"], {}  # the processor's own square crop
    else:
        resolution = resolution or model.config.image_size
        preprocess_kwargs = dict(
            do_resize=True,
            size={"shortest_edge": resolution},
            do_center_crop=True,
            crop_size={"height": resolution, "width": resolution},
        )
    if resolution % patch_size or resolution < patch_size:
        raise ValueError(
            f"`resolution` {resolution} must be a positive multiple of the patch size {patch_size} "
            f"(e.g. {max(patch_size, resolution // patch_size * patch_size)})."
        )
    if num_inference_steps is None:
        num_inference_steps = model.config.num_sampling_steps
    device = next(model.parameters()).device
    autocast = contextlib.nullcontext
    if getattr(state, "mixed_precision", "no") != "no":
        if device.type == "cpu":
            from transformers.utils import logging

            logging.get_logger(__name__).warning("Mixed precision is ignored on CPU: the evaluation runs in float32.")
        else:
            autocast = state.autocast
    if inception is not None:
        inception = inception.to(device).eval()

    num_images = len(source) if max_images is None else min(max_images, len(source))
    tokens = (resolution // patch_size) ** 2
    statistics = {
        "reconstructions": FeatureStatistics(FIDInceptionV3.num_features),
        "references": FeatureStatistics(FIDInceptionV3.num_features),
    }
    sums = torch.zeros(3, dtype=torch.float64)  # images, PSNR, SSIM
    skipped = []
    shard = _process_shard(num_images, rank, world_size)
    bar = tqdm(total=len(shard), desc="Reconstructing", disable=not progress or rank != 0)
    for start in range(0, len(shard), batch_size):
        indices = shard[start : start + batch_size]
        kept, pixel_values = _read_batch(source, indices, processor, preprocess_kwargs, skip_unreadable, skipped)
        bar.update(len(indices))
        if not kept:
            continue
        pixel_values = torch.cat(pixel_values).to(device=device, dtype=model.dtype)
        noise = _decoder_noise(kept, seed, (tokens, model.config.patch_dim)).to(device=device, dtype=model.dtype)
        with autocast():
            reconstruction = model.reconstruct(pixel_values, noise=noise, num_inference_steps=num_inference_steps)
        references = processor.postprocess(pixel_values, output_type="pt").to(device)
        reconstructions = processor.postprocess(reconstruction, output_type="pt").to(device)
        sums += torch.tensor(
            [
                len(kept),
                peak_signal_noise_ratio(reconstructions, references).sum().item(),
                structural_similarity(reconstructions, references).sum().item(),
            ],
            dtype=torch.float64,
        )
        if inception is not None:
            statistics["reconstructions"].update(inception(reconstructions))
            statistics["references"].update(inception(references))
    bar.close()

    def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
        if world_size == 1:
            return tensor
        return reduce_across_processes(tensor.to(_group_device(device)), reduction="sum").cpu()

    sums = sum_over_processes(sums)
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, skipped)
        skipped = [message for messages in gathered for message in messages]
    count = int(sums[0])
    if count == 0:
        raise ValueError(f"None of the {num_images} images could be evaluated: {skipped[:3]}")
    results = {
        "psnr": float(sums[1] / count),
        "ssim": float(sums[2] / count),
        "num_images": count,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "resolution": resolution,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "num_processes": world_size,
        "process_index": rank,
    }
    if inception is not None:
        if count < 2:
            raise ValueError("rFID needs at least 2 images (a covariance); evaluate more images.")
        reconstructions, references = (statistics[key].reduce(sum_over_processes) for key in statistics)
        results["rfid"] = frechet_distance_of_statistics(reconstructions, references)
    return results
