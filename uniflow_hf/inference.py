"""Loading our pipelines from a folder, reconstructing a set of images with their PSNR / SSIM, and image grids: the
library side of `uniflow-hf generate`, `reconstruct`, `attach-guide` and `set-defaults`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from .evaluation import load_tokenizer
from .metrics import peak_signal_noise_ratio, structural_similarity
from .pipelines import UniFlowClassConditionalPipeline, UniFlowReconstructionPipeline


def check_model_folder(model_dir: str | os.PathLike) -> None:
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"The model folder {model_dir} does not exist.")


def load_class_conditional_pipeline(
    model_dir: str | os.PathLike, dtype: torch.dtype | None = None
) -> UniFlowClassConditionalPipeline:
    """The `UniFlowClassConditionalPipeline` saved in `model_dir` (e.g. `uniflow_hf.FMNIST_MODEL_PATH`), its models
    in `dtype` when given (else each folder's own dtype)."""
    check_model_folder(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "model_index.json")):
        raise FileNotFoundError(f"{model_dir} has no model_index.json: it is not a class-conditional pipeline folder.")
    pipeline = DiffusionPipeline.from_pretrained(model_dir, **({} if dtype is None else {"dtype": dtype}))
    if not isinstance(pipeline, UniFlowClassConditionalPipeline):
        raise ValueError(f"{model_dir} holds a {type(pipeline).__name__}, not a UniFlowClassConditionalPipeline.")
    return pipeline


def load_reconstruction_pipeline(
    model_dir: str | os.PathLike, dtype: torch.dtype | None = None
) -> UniFlowReconstructionPipeline:
    """A `UniFlowReconstructionPipeline` of the tokenizer and image processor of a pipeline folder or a UniFlow
    model folder (ours or an official release), as `evaluation.load_tokenizer` finds them."""
    check_model_folder(model_dir)
    tokenizer, image_processor = load_tokenizer(str(model_dir), **({} if dtype is None else {"dtype": dtype}))
    return UniFlowReconstructionPipeline(tokenizer=tokenizer, image_processor=image_processor)


@dataclass
class ReconstructionResult:
    """The processed inputs and their reconstructions, `(N, 3, H, W)` in [0, 1], and per-image PSNR (dB, data
    range 1) and SSIM."""

    inputs: torch.Tensor
    reconstructions: torch.Tensor
    psnr: list[float]
    ssim: list[float]


def reconstruct_images(
    pipeline: UniFlowReconstructionPipeline,
    images: Sequence[str | os.PathLike | Image.Image],
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> ReconstructionResult:
    """Reconstruct `images` (files or PIL images) `batch_size` at a time under one progress bar, image `i` decoding
    with the noise of seed `seed + i` (so the batch size does not change the results); the result holds float32 CPU
    tensors."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    processor = pipeline.processor
    inputs, reconstructions = [], []
    with tqdm(total=len(images), unit="image", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = [
                (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")
                for image in images[start : start + batch_size]
            ]
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
            decoded = pipeline(batch, num_inference_steps=num_inference_steps, generator=generators, output_type="pt")
            reconstructions.append(decoded.images.to("cpu", torch.float32))
            inputs.append(processor.postprocess(processor(batch, return_tensors="pt").pixel_values, output_type="pt"))
            bar.update(len(batch))
    inputs, reconstructions = torch.cat(inputs), torch.cat(reconstructions)
    return ReconstructionResult(
        inputs=inputs,
        reconstructions=reconstructions,
        psnr=peak_signal_noise_ratio(reconstructions, inputs).tolist(),
        ssim=structural_similarity(reconstructions, inputs).tolist(),
    )


def image_grid(images: Sequence[Image.Image], max_columns: int = 8) -> Image.Image:
    """`images` in rows of at most `max_columns`, the last row filled with black."""
    columns = min(len(images), max_columns)
    rows = -(-len(images) // columns)
    blank = Image.new(images[0].mode, images[0].size)
    return make_image_grid(list(images) + [blank] * (rows * columns - len(images)), rows=rows, cols=columns)


__all__ = [
    "ReconstructionResult",
    "image_grid",
    "load_class_conditional_pipeline",
    "load_reconstruction_pipeline",
    "reconstruct_images",
]
