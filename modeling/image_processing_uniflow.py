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
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension, SizeDict
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs


INPUT_TYPES = "a PIL.Image.Image, a numpy.ndarray, a torch.Tensor, or a (non-empty) list of those"
ARRAY_DTYPES = "uint8 (values in [0, 255]), uint16 (values in [0, 65535]), bool, or float (values in [0, 1])"
NUM_CHANNELS = (1, 3, 4)
INT32_MAX = 2**31 - 1


def _default_max_pixels() -> int:
    """PIL's decompression-bomb *error* threshold (`2 * Image.MAX_IMAGE_PIXELS`), or `2**28` if PIL's is off."""
    return 2 * int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else 2**28


class UniFlowImageProcessorKwargs(ImagesKwargs, total=False):
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
        if images.ndim not in (2, 3, 4) or images.ndim == 4 and len(images) == 0:
            raise ValueError(
                f"Got an image array with {images.ndim} dimensions (shape {tuple(images.shape)}); expected 2 (height, "
                "width), 3 (channels first or last) or 4 (a non-empty batch of those) dimensions."
            )
        yield from (images if images.ndim == 4 else [images])
    elif isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
        raise TypeError(
            f"Got {type(images).__name__} {images!r}, but file paths and URLs are not loaded by "
            f"UniFlowImageProcessor; open the image first (e.g. `PIL.Image.open(path)`) and pass {INPUT_TYPES}."
        )
    else:
        raise TypeError(f"Unsupported image type {type(images).__name__}; expected {INPUT_TYPES}.")


def _check_num_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"Got an empty image of size {height}x{width} (height x width); images must be non-empty.")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"The image has {height * width} pixels ({height}x{width}, height x width), more than "
            f"max_pixels={max_pixels}. This guards against decompression bombs; downscale the image first or pass a "
            "larger `max_pixels` if the image is trusted."
        )


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values; only finite pixel values are supported.")


def _array_to_image(
    array: np.ndarray, channels_first: bool, input_data_format: str | None, max_pixels: int | None, what: str
) -> Image.Image:
    """A 2D or 3D array as an 8-bit PIL image: uint16 / 257, bool as 0/255, floats in [0, 1] · 255 (rounded).
    `channels_first` decides when both end axes could hold the channels."""
    if array.ndim == 3:
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
        array = np.moveaxis(array, 0, -1) if channels_first else array
        array = array[..., 0] if array.shape[-1] == 1 else array
    _check_num_pixels(array.shape[0], array.shape[1], max_pixels)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = np.round(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        _check_finite(array, what=f"The {what}")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"Float images must have values in [0, 1], but the {what} has values in [{low}, {high}]. "
                "Pass uint8 arrays for values in [0, 255], or rescale the values to [0, 1]."
            )
        array = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"Unsupported {what} dtype {array.dtype}; expected {ARRAY_DTYPES}.")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any mode in 8-bit RGB: 16-bit data / 257, other "I" data · 255 / (2**31 - 1) (negatives
    clipped), other modes through PIL's `convert("RGB")` (alpha dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        values = np.asarray(image).astype(np.float64)
        if values.max(initial=0) > 65535:
            values = np.clip(values, 0, INT32_MAX) * (255.0 / INT32_MAX)
        else:
            values = np.clip(values, 0, 65535) / 257.0
        image = Image.fromarray(np.round(values).astype(np.uint8))
    elif image.mode == "F":
        _check_finite(np.asarray(image), what=f"The PIL image (mode {image.mode!r})")
    try:
        with warnings.catch_warnings():  # "P" images with byte transparency suggest RGBA; RGB drops alpha either way
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error


class UniFlowImageProcessor(PilBackend):
    r"""
    The official release's preprocessing, bit for bit: 8-bit RGB, halved with `Image.BOX` while the short side is at
    least twice `size["shortest_edge"]`, resized with `resample` to it, center-cropped to `crop_size` (zero-padded if
    smaller), rescaled and normalized (ImageNet mean and std).

    Inputs: PIL images of any mode; arrays and tensors `(H, W)`, `(H, W, C)` or `(C, H, W)` with C in 1, 3, 4 and
    dtype uint8, uint16, bool or float in [0, 1]; batches and lists of those. An ambiguous channel axis is the last
    for arrays, the first for tensors, unless `input_data_format` says. `max_pixels` (default: PIL's
    decompression-bomb error threshold) bounds the input size, checked before any conversion.
    """

    valid_kwargs = UniFlowImageProcessorKwargs
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

    @classmethod
    def from_image_size(cls, image_size: int, **kwargs) -> "UniFlowImageProcessor":
        """The processor of a model taking `image_size`² inputs (`config.image_size`)."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(
                f"`image_size` must be a positive int (a model's `config.image_size`), got {image_size!r}."
            )
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
        """One input image as a `(3, height, width)` uint8 RGB array."""
        if do_convert_rgb is False:
            raise ValueError("UniFlow models need 3-channel RGB input: `do_convert_rgb=False` is not supported.")
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        if isinstance(image, Image.Image):
            _check_num_pixels(image.height, image.width, max_pixels)
        elif isinstance(image, np.ndarray):
            image = _array_to_image(image, False, input_data_format, max_pixels, what="numpy array")
        else:
            image = image.detach().cpu()
            if image.is_floating_point() and image.dtype != torch.float64:
                image = image.float()  # float16/bfloat16 have no (or no exact) NumPy counterpart
            image = _array_to_image(image.numpy(), True, input_data_format, max_pixels, what="torch tensor")
        return np.asarray(_to_rgb(image)).transpose(2, 0, 1)

    def resize(self, image: np.ndarray, size: SizeDict, resample: int | None = None, **kwargs) -> np.ndarray:
        """As the release: BOX-halve while the short side is >= 2·S, then resize it to S = `size["shortest_edge"]`."""
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
        """As the release (torchvision's `center_crop`): rounded offsets, a smaller image zero-padded first."""
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must have keys 'height' and 'width', got {dict(size)}.")
        pad_height, pad_width = max(size.height - image.shape[1], 0), max(size.width - image.shape[2], 0)
        if pad_height or pad_width:
            padding = ((0, 0), (pad_height // 2, (pad_height + 1) // 2), (pad_width // 2, (pad_width + 1) // 2))
            image = np.pad(image, padding)
        top = int(round((image.shape[1] - size.height) / 2.0))
        left = int(round((image.shape[2] - size.width) / 2.0))
        return image[:, top : top + size.height, left : left + size.width]

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """`image * scale` in float32, as the release's `ToTensor`: a division by `1 / scale` (255)."""
        return image.astype(np.float32) / np.float32(1 / scale)

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray, output_type: str = "pil"):
        """Images from `pixel_values` (B, 3, H, W) or (3, H, W) in this processor's space, denormalized and clamped
        to [0, 1]: PIL images (`"pil"`), a float32 (B, H, W, 3) array (`"np"`) or (B, 3, H, W) tensor (`"pt"`)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of ('pil', 'np', 'pt').")
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().to(device="cpu", dtype=torch.float32).numpy()
        elif not isinstance(pixel_values, np.ndarray):
            raise TypeError(f"`pixel_values` must be a torch.Tensor or a numpy.ndarray, got {type(pixel_values)}.")
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

UniFlowImageProcessor.register_for_auto_class()  # saves write `auto_map` and this file (trust_remote_code)
