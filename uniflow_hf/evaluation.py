# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Reconstruction quality of a UniFlow tokenizer (PSNR, SSIM, rFID) over an image folder or a saved dataset, streamed
a batch at a time and split between the processes of a launch; the `uniflow-hf evaluate` command."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from PIL import Image

from .data import load_image_dataset
from .metrics import FeatureStatistics, FIDInceptionV3, frechet_distance, peak_signal_noise_ratio, structural_similarity
from .modeling.loss_uniflow import process_rank_and_world_size, reduce_across_processes


class UnreadableImageError(ValueError):
    """An image of the evaluation set could not be read or preprocessed."""


class ImageSource:
    """The images of a `datasets.Dataset` column (default: its first `datasets.Image` one), named in errors by
    `names` (default: `column[i]`)."""

    def __init__(self, dataset, column: str | None = None, names: list[str] | None = None):
        import datasets

        if column is None:
            columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
            if not columns:
                raise ValueError(f"The dataset has no image column (`datasets.Image`): {dict(dataset.features)}.")
            column = columns[0]
        self.column, self.dataset, self.names = column, dataset.select_columns([column]), names

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"{self.column}[{index}]"

    def load(self, index: int) -> Image.Image:
        return self.dataset[index][self.column]  # decoded (`image.load()`): truncated files fail here


def open_image_source(path: str, split: str | None = "test", column: str | None = None) -> ImageSource:
    """A dataset saved with `save_to_disk` (its `split` when it is a `DatasetDict`), or the image files under a folder
    (recursively, by the extensions PIL opens, sorted)."""
    import datasets

    if not os.path.isdir(path):
        raise FileNotFoundError(f"No folder at {path!r}: pass an image folder or a `save_to_disk` dataset folder.")
    if any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")):
        return ImageSource(load_image_dataset(path, split), column)
    extensions = {extension.lower() for extension in Image.registered_extensions()}
    names = sorted(
        os.path.relpath(os.path.join(folder, name), path)
        for folder, _, files in os.walk(path)
        for name in files
        if os.path.splitext(name)[1].lower() in extensions
    )
    if not names:
        raise ValueError(f"No image files in {path!r} (looked for {', '.join(sorted(extensions)[:8])}, ...).")
    paths = [os.path.join(path, name) for name in names]
    dataset = datasets.Dataset.from_dict({"image": paths}, features=datasets.Features({"image": datasets.Image()}))
    return ImageSource(dataset, "image", names)


def load_image_processor(folders, image_size: int):
    """The `UniFlowImageProcessor` saved in the first of `folders` that holds one, else the release preprocessing at
    `image_size`."""
    from .modeling import UniFlowImageProcessor

    for folder in folders:
        if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
            return UniFlowImageProcessor.from_pretrained(folder)
    return UniFlowImageProcessor.from_image_size(image_size)


def load_tokenizer(path: str, **from_pretrained_kwargs):
    """(UniFlowModel, UniFlowImageProcessor) of a `UniFlowModel` folder or a pipeline folder (with `tokenizer/`)."""
    from .modeling import UniFlowModel

    if not os.path.isdir(path):
        raise FileNotFoundError(f"No model folder at {path!r}.")
    model_folder = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
    model = UniFlowModel.from_pretrained(model_folder, **from_pretrained_kwargs).eval()
    processor_folders = (os.path.join(path, "image_processor"), model_folder, path)
    return model, load_image_processor(processor_folders, model.config.image_size)


def quantize_dynamic_int8(model):
    """An int8 copy of a float32 CPU `model` (`quantize_dynamic` of its `nn.Linear`s but the two whose `weight.dtype`
    the model reads to pick its working dtype)."""
    import copy
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError(f"int8 quantisation takes a float32 CPU model, got {parameter.dtype} on {parameter.device}.")
    kept_float = ("flow_head.input_proj", "flow_head.time_embed.linear_1")
    qconfig = {torch.nn.Linear: default_dynamic_qconfig, **dict.fromkeys(kept_float)}
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice (torchao is its successor)
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).eval(), qconfig, dtype=torch.qint8)


def _read_batch(source, indices, processor, preprocess_kwargs, skip_unreadable, skipped) -> tuple[list[int], list]:
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
    """Reconstruct the first `max_images` images of `source` (an `ImageSource`) and score them against the
    preprocessed originals, both mapped to [0, 1] by `processor.postprocess`; rFID too with `inception`.

    `resolution` defaults to the processor's square crop, else the model's `image_size`; the decoder noise of image i
    is seeded by `seed + i`, whatever the batches and processes of the default `torch.distributed` group that share
    the images. Returns the same dict in every process (`psnr`, `ssim`, `rfid`, `num_images`, `skipped`, ...).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = accelerator if accelerator is not None else PartialState()
    rank, world_size = process_rank_and_world_size()
    for name, value in (("batch_size", batch_size), ("max_images", 1 if max_images is None else max_images)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    patch_size = model.config.patch_size
    crop = processor.crop_size
    if resolution is None and processor.do_center_crop and crop["height"] == crop["width"]:
        resolution, preprocess_kwargs = crop["height"], {}  # the processor's own square crop
    else:
        resolution = resolution or model.config.image_size
        preprocess_kwargs = dict(do_resize=True, size={"shortest_edge": resolution}, do_center_crop=True)
        preprocess_kwargs["crop_size"] = {"height": resolution, "width": resolution}
    if resolution % patch_size or resolution < patch_size:
        raise ValueError(
            f"`resolution` {resolution} must be a positive multiple of the patch size {patch_size} "
            f"(e.g. {max(patch_size, resolution // patch_size * patch_size)})."
        )
    if num_inference_steps is None:
        num_inference_steps = model.config.num_sampling_steps
    device = next(model.parameters()).device
    autocast = contextlib.nullcontext
    if getattr(state, "mixed_precision", "no") != "no" and device.type != "cpu":
        autocast = state.autocast  # an Accelerator's mixed precision, on GPUs only
    if inception is not None:
        inception = inception.to(device).eval()

    num_images = len(source) if max_images is None else min(max_images, len(source))
    noise_shape = ((resolution // patch_size) ** 2, model.config.patch_dim)  # image i's noise: seed + i
    statistics = {key: FeatureStatistics(FIDInceptionV3.num_features) for key in ("reconstructions", "references")}
    sums = torch.zeros(3, dtype=torch.float64)  # images, PSNR, SSIM
    skipped = []
    per_process, extra = divmod(num_images, world_size)
    first = rank * per_process + min(rank, extra)
    shard = range(first, first + per_process + (rank < extra))  # a contiguous block of images per process
    bar = tqdm(total=len(shard), desc="Reconstructing", disable=not progress or rank != 0)
    for start in range(0, len(shard), batch_size):
        indices = shard[start : start + batch_size]
        kept, pixel_values = _read_batch(source, indices, processor, preprocess_kwargs, skip_unreadable, skipped)
        bar.update(len(indices))
        if not kept:
            continue
        pixel_values = torch.cat(pixel_values).to(device=device, dtype=model.dtype)
        noise = torch.stack([torch.randn(noise_shape, generator=torch.Generator().manual_seed(seed + i)) for i in kept])
        noise = noise.to(device=device, dtype=model.dtype)
        with autocast():
            reconstruction = model.reconstruct(pixel_values, noise=noise, num_inference_steps=num_inference_steps)
        references = processor.postprocess(pixel_values, output_type="pt").to(device)
        reconstructions = processor.postprocess(reconstruction, output_type="pt").to(device)
        metrics = (peak_signal_noise_ratio, structural_similarity)
        scores = [metric(reconstructions, references).sum().item() for metric in metrics]
        sums += torch.tensor([len(kept), *scores], dtype=torch.float64)
        if inception is not None:
            statistics["reconstructions"].update(inception(reconstructions))
            statistics["references"].update(inception(references))
    bar.close()

    def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
        on_gpus = world_size > 1 and "nccl" in str(torch.distributed.get_backend())  # NCCL reduces CUDA tensors
        return reduce_across_processes(tensor.to(device if on_gpus else "cpu"), "sum").cpu()

    sums = sum_over_processes(sums)
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, skipped)
        skipped = [message for messages in gathered for message in messages]
    count = int(sums[0])
    if count == 0:
        raise ValueError(f"None of the {num_images} images could be evaluated: {skipped[:3]}")
    results = dict(
        psnr=float(sums[1] / count), ssim=float(sums[2] / count), num_images=count, num_skipped=len(skipped),
        skipped=skipped, resolution=resolution, num_inference_steps=num_inference_steps, seed=seed,
        num_processes=world_size, process_index=rank,
    )
    if inception is not None:
        if count < 2:
            raise ValueError("rFID needs at least 2 images (a covariance); evaluate more images.")
        reconstructions, references = (statistics[key].reduce(sum_over_processes) for key in statistics)
        results["rfid"] = frechet_distance(
            reconstructions.mean, reconstructions.covariance, references.mean, references.covariance
        )
    return results
