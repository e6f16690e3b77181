# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Image processor for UniFlow: the preprocessing of the official UniFlow release on transformers' PIL backend."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack


INPUT_TYPES = "a PIL.Image.Image, a numpy.ndarray, a torch.Tensor, or a (non-empty) list of those"
ARRAY_DTYPES = "uint8 (values in [0, 255]), uint16 (values in [0, 65535]), bool, or float (values in [0, 1])"
NUM_CHANNELS = (1, 3, 4)
INT32_MAX = 2**31 - 1


def _default_max_pixels() -> int:
    """PIL's own decompression-bomb *error* threshold (`2 * Image.MAX_IMAGE_PIXELS`), or `2**28` if PIL's is off."""
    return 2 * int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else 2**28


class UniFlowImageProcessorKwargs(ImagesKwargs, total=False):
    """
    max_pixels (`int`, *optional*, defaults to `self.max_pixels`):
        Largest accepted number of pixels (height * width) of an input image; larger ones raise a `ValueError`
        before any conversion or resizing (decompression-bomb guard).
    """

    max_pixels: int | None


def _flatten(images: Any) -> Iterator[Any]:
    """The single images in `images` (an image, a 4D batch, or nested lists/tuples of those)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"Got an empty list of images; expected {INPUT_TYPES}.")
        for image in images:
            yield from _flatten(image)
    elif isinstance(images, Image.Image):
        yield images
    elif isinstance(images, (np.ndarray, torch.Tensor)):
        kind = "numpy array" if isinstance(images, np.ndarray) else "torch tensor"
        if images.ndim == 4 and len(images) == 0:
            raise ValueError(f"Got an empty batch ({kind} of shape {tuple(images.shape)}).")
        if images.ndim not in (2, 3, 4):
            raise ValueError(
                f"Got a {kind} with {images.ndim} dimensions (shape {tuple(images.shape)}); expected 2 "
                "(height, width), 3 (channels first or last) or 4 (a batch of those) dimensions."
            )
        yield from (images if images.ndim == 4 else [images])
    elif isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
        raise TypeError(
            f"Got {type(images).__name__} {images!r}, but file paths and URLs are not loaded by UniFlowImageProcessor; "
            f"open the image first (e.g. `PIL.Image.open(path)`) and pass {INPUT_TYPES}."
        )
    else:
        raise TypeError(f"Unsupported image type {type(images).__name__}; expected {INPUT_TYPES}.")


def _channels_last(array: np.ndarray, channels_first: bool, input_data_format: str | None) -> np.ndarray:
    """A 2D or 3D array as `(height, width, channels)`; `channels_first` decides when both axes could be channels."""
    if array.ndim == 2:
        return array[..., None]
    if input_data_format is not None:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    else:
        first, last = array.shape[0] in NUM_CHANNELS, array.shape[-1] in NUM_CHANNELS
        channels_first = first and (channels_first or not last)
    if array.shape[0 if channels_first else -1] not in NUM_CHANNELS:
        raise ValueError(
            f"Got an image of shape {tuple(array.shape)} without a channel axis of 1, 3 or 4 channels "
            f"(input_data_format={input_data_format}); expected (channels, height, width) or (height, width, "
            "channels), or a 2D (height, width) grayscale image."
        )
    return np.moveaxis(array, 0, -1) if channels_first else array


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values; only finite pixel values are supported.")


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """8-bit values of an array: uint16 divided by 257, bool as 0/255, floats in [0, 1] times 255 (rounded)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"Unsupported {what} dtype {array.dtype}; expected {ARRAY_DTYPES}.")
    _check_finite(array, what=f"The {what}")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Float images must have values in [0, 1], but the {what} has values in [{low}, {high}]. "
            "Pass uint8 arrays for values in [0, 255], or rescale the values to [0, 1]."
        )
    return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """
    An 8-bit "RGB" copy of a PIL image of any mode. 16-bit integer modes (and "I" holding 16-bit data, as PIL opens
    16-bit TIFFs and PNGs) are divided by 257, other "I" images scaled by `255 / (2**31 - 1)` after clipping negatives;
    every other mode goes through PIL's `convert("RGB")`, which drops an alpha channel without compositing.
    """
    if image.mode == "I" and np.asarray(image).max(initial=0) > 65535:
        gray = np.round(np.clip(np.asarray(image), 0, INT32_MAX) * (255.0 / INT32_MAX)).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        gray = _to_uint8(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), what="16-bit image")
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        _check_finite(np.asarray(image), what=f"The PIL image (mode {image.mode!r})")
    try:
        with warnings.catch_warnings():  # "P" images with byte transparency suggest RGBA; RGB drops alpha either way
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error


def _check_num_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"Got an empty image of size {height}x{width} (height x width); images must be non-empty.")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"The image has {height * width} pixels ({height}x{width}, height x width), more than "
            f"max_pixels={max_pixels}. This guards against decompression bombs; downscale the image first or pass a "
            "larger `max_pixels` if the image is trusted."
        )


class UniFlowImageProcessor(PilBackend):
    r"""
    Constructs a UniFlow image processor: the official release's preprocessing on transformers' PIL backend.

    Each image is converted to 8-bit RGB, halved with `Image.BOX` while its short side is at least twice
    `size["shortest_edge"]`, resized with `resample` so that its short side equals `size["shortest_edge"]`,
    center-cropped to `crop_size` with rounded offsets, rescaled by `rescale_factor` and normalized with
    `image_mean` / `image_std`; the result is bit-identical to the release's.

    Accepted inputs: PIL images of any mode; NumPy arrays and torch tensors of shape `(H, W)`, `(H, W, C)` or
    `(C, H, W)` with `C` in 1, 3, 4 and dtype uint8, uint16, bool or float in [0, 1]; 4D batches of those; lists of
    all of them. When the channel axis is ambiguous, arrays are read as channels-last and tensors as channels-first
    unless `input_data_format` says otherwise. Alpha channels are dropped, as PIL's `convert("RGB")` does.

    Args:
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"shortest_edge": 448}`):
            Target short side of the resize (only `shortest_edge` is supported).
        crop_size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 448, "width": 448}`):
            Size of the center crop; smaller images are zero-padded first.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter of the final short-side resize (the halving steps always use `Image.BOX`).
        max_pixels (`int`, *optional*, defaults to `2 * PIL.Image.MAX_IMAGE_PIXELS`, or `2**28` when that is `None`):
            Largest accepted input, in pixels; checked before any conversion or resizing.
        **kwargs: the other settings of [`~image_processing_utils.BaseImageProcessor`] (`do_resize`, `do_center_crop`,
            `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`; ImageNet mean and std).
    """

    valid_kwargs = UniFlowImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 448}
    default_to_square = False
    crop_size = {"height": 448, "width": 448}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    max_pixels = _default_max_pixels()

    def __init__(self, **kwargs: Unpack[UniFlowImageProcessorKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def from_image_size(cls, image_size: int, **kwargs) -> "UniFlowImageProcessor":
        """The processor of a model taking `image_size`² inputs (`config.image_size`): short side resized to
        `image_size`, center crop `image_size`², the release's normalization. Other arguments as in `__init__`."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int (a model's `config.image_size`), got {image_size!r}.")
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs)

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        """The single images in `images`; unlike the base class, file paths and URLs are refused, not loaded."""
        return list(_flatten(images))

    def process_image(
        self,
        image: Image.Image | np.ndarray | torch.Tensor,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One input image as a `(3, height, width)` uint8 RGB array; its size is checked against `max_pixels` first."""
        if do_convert_rgb is False:
            raise ValueError("UniFlow models need 3-channel RGB input: `do_convert_rgb=False` is not supported.")
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        if isinstance(image, Image.Image):
            _check_num_pixels(image.height, image.width, max_pixels)
        else:
            what = "numpy array" if isinstance(image, np.ndarray) else "torch tensor"
            if isinstance(image, torch.Tensor):
                image = image.detach().cpu()
                if image.is_floating_point() and image.dtype != torch.float64:
                    image = image.float()  # float16/bfloat16 have no (or no exact) NumPy counterpart
                image = image.numpy()
            image = _channels_last(image, channels_first=what == "torch tensor", input_data_format=input_data_format)
            _check_num_pixels(image.shape[0], image.shape[1], max_pixels)
            image = _to_uint8(image, what)
            image = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))
        return np.asarray(_to_rgb(image)).transpose(2, 0, 1)

    def resize(self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | None = None, **kwargs) -> np.ndarray:
        """
        Resize a `(3, H, W)` uint8 image as the release does: halve it with `Image.BOX` to `(W // 2, H // 2)` while
        its short side is at least `2 * S` (`S = size["shortest_edge"]`), then resize it with `resample` to short
        side `S` and long side `int(round(long * S / short))`.
        """
        target = size.shortest_edge
        if not target or any(key != "shortest_edge" for key, _ in size):
            raise ValueError(
                f"UniFlowImageProcessor resizes the short side of images: `size` must be {{'shortest_edge': int}}, "
                f"got {dict(size)}."
            )
        pil_image = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        while min(pil_image.size) >= 2 * target:
            pil_image = pil_image.resize((pil_image.width // 2, pil_image.height // 2), Image.BOX)
        width, height = pil_image.size
        if width <= height:
            new_size = (target, int(round(height * target / width)))
        else:
            new_size = (int(round(width * target / height)), target)
        resample = PILImageResampling.BICUBIC if resample is None else resample
        return np.asarray(pil_image.resize(new_size, resample=int(resample))).transpose(2, 0, 1)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """
        Center-crop a `(C, H, W)` image to `(size["height"], size["width"])` at offsets `int(round((H - height) / 2))`
        and `int(round((W - width) / 2))`, as the release (torchvision's `center_crop`) does, zero-padding first an
        image smaller than the crop.
        """
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must have keys 'height' and 'width', got {dict(size)}.")
        pad_height, pad_width = max(size.height - image.shape[1], 0), max(size.width - image.shape[2], 0)
        if pad_height or pad_width:
            padding = ((0, 0), (pad_height // 2, (pad_height + 1) // 2), (pad_width // 2, (pad_width + 1) // 2))
            image = np.pad(image, padding)
        top = int(round((image.shape[1] - size.height) / 2.0))
        left = int(round((image.shape[2] - size.width) / 2.0))
        return image[:, top : top + size.height, left : left + size.width]

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray, output_type: str = "pil"):
        """
        Map model outputs in this processor's normalized pixel space back to images.

        Args:
            pixel_values (`torch.Tensor` or `np.ndarray` of shape `(batch_size, 3, height, width)`):
                Images as this processor produces them (a `(3, height, width)` image is a batch of one). They are
                denormalized (`x * std + mean`, when `do_normalize` is set) and clamped to [0, 1].
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`: a list of RGB PIL images (8-bit, `round(x * 255)`); `"np"`: a float32 array of shape
                `(batch_size, height, width, 3)`; `"pt"`: a float32 `torch.Tensor` of shape `(batch_size, 3, height,
                width)`.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of ('pil', 'np', 'pt').")
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().to(device="cpu", dtype=torch.float32).numpy()
        elif not isinstance(pixel_values, np.ndarray):
            raise TypeError(
                f"`pixel_values` must be a torch.Tensor or a numpy.ndarray, got {type(pixel_values).__name__}."
            )
        images = pixel_values.astype(np.float32)
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                "`pixel_values` must have shape (batch_size, 3, height, width) or (3, height, width), got "
                f"{tuple(images.shape)}."
            )
        if self.do_normalize:
            std = np.asarray(self.image_std, dtype=np.float32).reshape(-1, 1, 1)
            images = images * std + np.asarray(self.image_mean, dtype=np.float32).reshape(-1, 1, 1)
        images = np.clip(images, 0.0, 1.0)
        if output_type == "pt":
            return torch.from_numpy(images)
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        if output_type == "np":
            return images
        return [Image.fromarray(np.round(image * 255.0).astype(np.uint8)) for image in images]


__all__ = ["UniFlowImageProcessor"]
