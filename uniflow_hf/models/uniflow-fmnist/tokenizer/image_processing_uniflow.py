# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Image processor for UniFlow (PIL backend).

The preprocessing reproduces the official UniFlow release bit for bit:

1. convert the image to 8-bit RGB,
2. while its short side is at least twice the target size `S`, halve it with `Image.BOX`
   (`img.resize((w // 2, h // 2), Image.BOX)`),
3. resize it with `Image.BICUBIC` so that its short side is exactly `S` (long side `int(round(long * S / short))`),
4. center-crop it to `S x S` (offsets `int(round((h - S) / 2.0))` and `int(round((w - S) / 2.0))`),
5. divide by 255 and normalise with the ImageNet mean and standard deviation (in float32).

Every input (PIL image, NumPy array, torch tensor) is first turned into an 8-bit PIL image so that all of them go
through exactly the same PIL code path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, is_torch_available


if is_torch_available():
    import torch


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POSTPROCESS_OUTPUT_TYPES = ("pil", "np", "pt")
SUPPORTED_INPUT_TYPES = "a PIL.Image.Image, a numpy.ndarray, a torch.Tensor, or a (non-empty) list of those"
SUPPORTED_ARRAY_DTYPES = "uint8 (values in [0, 255]), uint16 (values in [0, 65535]), bool, or float (values in [0, 1])"
_SUPPORTED_NUM_CHANNELS = (1, 3, 4)
# 16-bit integer PIL modes: 65535 / 257 == 255, so dividing by 257 maps their full range onto [0, 255].
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# PIL's "I" mode holds signed 32-bit integers; its non-negative range [0, 2**31 - 1] is mapped onto [0, 255].
_PIL_INT32_MAX = 2**31 - 1


def _default_max_pixels() -> int:
    """PIL's own decompression-bomb *error* threshold (`2 * Image.MAX_IMAGE_PIXELS`), or `2**28` if PIL's is off."""
    if Image.MAX_IMAGE_PIXELS:
        return 2 * int(Image.MAX_IMAGE_PIXELS)
    return 2**28


class UniFlowImageProcessorKwargs(ImagesKwargs, total=False):
    """
    max_pixels (`int`, *optional*, defaults to `self.max_pixels`):
        Largest accepted number of pixels (height * width) of an input image. Larger images raise a `ValueError`
        before any conversion or resizing (decompression-bomb guard).
    """

    max_pixels: int | None


def _convert_pil_to_rgb(image: Image.Image) -> Image.Image:
    """
    Convert a PIL image of any mode to 8-bit "RGB".

    - "RGB" is returned unchanged.
    - 16-bit integer modes ("I;16", "I;16B", ...) are scaled by their range (`round(v / 257)`); so is "I" (signed
      32-bit) when its values fit in 16 bits (how PIL opens 16-bit TIFFs and PNGs), else by its non-negative range
      (`round(clip(v, 0, 2**31 - 1) * 255 / (2**31 - 1))`), instead of PIL's `convert`, which clips them to [0, 255].
    - "F" (32-bit float) follows PIL's `convert("RGB")` (values on the 0-255 scale, clipped); NaN/inf are rejected.
    - Every other mode ("1", "L", "P" with or without transparency, "RGBA", "LA", "PA", "CMYK", "YCbCr", ...) uses
      PIL's `convert("RGB")`. For modes with an alpha channel this *drops* the alpha channel (the colour values are
      kept as they are, there is no compositing onto a background).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _PIL_16BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.float64)
        if mode == "I" and values.max(initial=0) > 65535:
            values = np.clip(values, 0, _PIL_INT32_MAX) * (255.0 / _PIL_INT32_MAX)
        elif mode == "I":  # 16-bit data (PIL opens 16-bit TIFFs and some PNGs as "I"): its 16-bit range
            values = np.clip(values, 0, 65535) / 257.0
        else:
            values = values / 257.0
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        _check_finite(np.asarray(image), what=f"The PIL image (mode {mode!r})")
    try:
        with warnings.catch_warnings():
            # "P" images with byte transparency warn that they should be converted to RGBA first; the alpha channel
            # is dropped by the conversion to RGB either way.
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot convert a PIL image of mode {mode!r} to RGB: {error}") from error


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values; only finite pixel values are supported.")


def _check_num_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"Got an empty image of size {height}x{width} (height x width); images must be non-empty.")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"The image has {height * width} pixels ({height}x{width}, height x width), more than "
            f"max_pixels={max_pixels}. This guards against decompression bombs; downscale the image first or pass a "
            f"larger `max_pixels` if the image is trusted."
        )


def _channel_layout(
    shape: tuple[int, ...], prefer_channels_first: bool, input_data_format: str | ChannelDimension | None
) -> ChannelDimension:
    """Return where the channel axis of a 3D array of shape `shape` is (it must hold 1, 3 or 4 channels)."""
    if input_data_format is not None:
        layout = ChannelDimension(input_data_format)
        if layout not in (ChannelDimension.FIRST, ChannelDimension.LAST):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format}."
            )
        num_channels = shape[0] if layout == ChannelDimension.FIRST else shape[-1]
        if num_channels not in _SUPPORTED_NUM_CHANNELS:
            raise ValueError(
                f"Got an image of shape {tuple(shape)} with {num_channels} channels ({layout.value}); only 1, 3 or 4 "
                "channels are supported."
            )
        return layout
    first, last = shape[0] in _SUPPORTED_NUM_CHANNELS, shape[-1] in _SUPPORTED_NUM_CHANNELS
    if first and (prefer_channels_first or not last):
        return ChannelDimension.FIRST
    if last:
        return ChannelDimension.LAST
    raise ValueError(
        f"Could not find a channel dimension in an image of shape {tuple(shape)}: expected (channels, height, width) "
        "or (height, width, channels) with 1, 3 or 4 channels, or a 2D (height, width) grayscale image."
    )


def _array_to_pil(
    array: np.ndarray, prefer_channels_first: bool, input_data_format: str | ChannelDimension | None, kind: str
) -> Image.Image:
    """Turn a 2D or 3D NumPy array (uint8, uint16, bool or float in [0, 1]) into an 8-bit PIL image."""
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        if _channel_layout(array.shape, prefer_channels_first, input_data_format) == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"Got a {kind} with {array.ndim} dimensions (shape {tuple(array.shape)}); expected 2 (height, width), "
            "3 (channels first or last) or 4 (a batch of those) dimensions."
        )
    height, width, num_channels = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"Got an empty {kind} of shape {tuple(array.shape)}; images must be non-empty.")

    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        # Same scaling as PIL's 16-bit "I;16" images.
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        _check_finite(array, what=f"The {kind}")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"Float images must have values in [0, 1], but the {kind} has values in [{low}, {high}]. Pass uint8 "
                "arrays for values in [0, 255], or rescale the values to [0, 1]."
            )
        array = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"Unsupported {kind} dtype {array.dtype}; expected {SUPPORTED_ARRAY_DTYPES}.")

    # uint8 (H, W), (H, W, 3) and (H, W, 4) arrays become "L", "RGB" and "RGBA" images.
    return Image.fromarray(np.ascontiguousarray(array[..., 0] if num_channels == 1 else array))


class UniFlowImageProcessor(PilBackend):
    r"""
    Constructs a UniFlow image processor (PIL backend) reproducing the official UniFlow release preprocessing.

    Each image is converted to 8-bit RGB, halved with `Image.BOX` while its short side is at least twice
    `size["shortest_edge"]`, resized with `resample` (bicubic) so that its short side equals `size["shortest_edge"]`,
    center-cropped to `crop_size`, divided by 255 and normalised with `image_mean` / `image_std`.

    Inputs can be PIL images (any mode, see below), NumPy arrays (`(H, W)`, `(H, W, C)` or `(C, H, W)`, uint8 in
    [0, 255], uint16 in [0, 65535], bool, or float in [0, 1]), torch tensors (`(C, H, W)` preferred, same dtypes),
    4D batches of arrays/tensors, and lists of all of those. `C` must be 1, 3 or 4. Arrays and tensors are first
    turned into 8-bit PIL images so that every input takes the same PIL path. When the channel axis is ambiguous
    (e.g. shape `(3, 8, 3)`) NumPy arrays are read as channels-last and torch tensors as channels-first, unless
    `input_data_format` says otherwise.

    Conversion to RGB: 16-bit integer modes (`"I;16"`, `"I;16B"`, ...) are scaled by 1/257, `"I"` (signed 32-bit) by
    `255 / (2**31 - 1)` after clipping negatives; all other modes use PIL's `convert("RGB")`, which for alpha modes
    (`"RGBA"`, `"LA"`, `"PA"`, `"P"` with transparency) drops the alpha channel instead of compositing onto a
    background. 4-channel arrays/tensors are read as RGBA and lose their alpha the same way.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to BOX-halve and then resize the short side of the image to `size["shortest_edge"]`.
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"shortest_edge": 448}`):
            Target short side. An `int` is read as `{"shortest_edge": size}`.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter of the final short-side resize (the halving steps always use `Image.BOX`).
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Whether to center-crop the image to `crop_size`.
        crop_size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 448, "width": 448}`):
            Size of the crop. An `int` is read as `{"height": crop_size, "width": crop_size}`.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to rescale the 8-bit values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Rescaling factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`tuple[float, float, float]`, *optional*, defaults to `(0.485, 0.456, 0.406)`):
            Per-channel mean.
        image_std (`tuple[float, float, float]`, *optional*, defaults to `(0.229, 0.224, 0.225)`):
            Per-channel standard deviation.
        max_pixels (`int`, *optional*, defaults to `2 * PIL.Image.MAX_IMAGE_PIXELS`):
            178956970 with PIL's default limit (PIL's own decompression-bomb error threshold), or `2**28` when
            `PIL.Image.MAX_IMAGE_PIXELS` is `None`. Images with more pixels raise a `ValueError` before any
            conversion or resizing (decompression-bomb guard).

    With `do_resize=False` and `do_center_crop=False` images keep their native size; a batch of images of different
    sizes can then only be returned as a list (`return_tensors=None`).
    """

    valid_kwargs = UniFlowImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    size = {"shortest_edge": 448}
    default_to_square = False
    crop_size = {"height": 448, "width": 448}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    max_pixels = _default_max_pixels()

    def __init__(self, **kwargs: Unpack[UniFlowImageProcessorKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def from_image_size(cls, image_size: int, **kwargs) -> "UniFlowImageProcessor":
        """The processor of a model taking `image_size`² inputs (`config.image_size`): short side resized to
        `image_size`, centre crop `image_size`², the release's normalisation. Other arguments as in `__init__`."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`image_size` must be a positive int (a model's `config.image_size`), got {image_size!r}.")
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs)

    # ------------------------------------------------------------------ inputs

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        """
        Flatten `images` (an image, a 4D batch, or nested lists/tuples of those) into a list of single images, with
        clear errors for anything else. Unlike the transformers default, strings (paths/URLs) are not loaded.
        """
        flat = []
        self._flatten_images(images, flat)
        return flat

    def _flatten_images(self, images: Any, flat: list[Any]) -> None:
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError(f"Got an empty list of images; expected {SUPPORTED_INPUT_TYPES}.")
            for image in images:
                self._flatten_images(image, flat)
            return
        if isinstance(images, Image.Image):
            flat.append(images)
            return
        is_tensor = is_torch_available() and isinstance(images, torch.Tensor)
        if isinstance(images, np.ndarray) or is_tensor:
            kind = "torch tensor" if is_tensor else "numpy array"
            if images.ndim == 4:
                if images.shape[0] == 0:
                    raise ValueError(f"Got an empty batch ({kind} of shape {tuple(images.shape)}).")
                flat.extend(images[i] for i in range(images.shape[0]))
                return
            if images.ndim not in (2, 3):
                raise ValueError(
                    f"Got a {kind} with {images.ndim} dimensions (shape {tuple(images.shape)}); expected 2 "
                    "(height, width), 3 (channels first or last) or 4 (a batch of those) dimensions."
                )
            flat.append(images)
            return
        if isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
            raise TypeError(
                f"Got {type(images).__name__} {images!r}, but file paths and URLs are not loaded by "
                "UniFlowImageProcessor; open the image first (e.g. `PIL.Image.open(path)`) and pass "
                f"{SUPPORTED_INPUT_TYPES}."
            )
        raise TypeError(f"Unsupported image type {type(images).__name__}; expected {SUPPORTED_INPUT_TYPES}.")

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """
        Turn one image (PIL, NumPy array or torch tensor) into an 8-bit RGB PIL image, then into a `(3, H, W)` uint8
        array (the working format of the PIL backend).

        The pixel count is checked against `max_pixels` before any conversion.
        """
        if do_convert_rgb is False:
            raise ValueError("UniFlow models need 3-channel RGB input: `do_convert_rgb=False` is not supported.")
        max_pixels = self.max_pixels if max_pixels is None else max_pixels

        if isinstance(image, Image.Image):
            _check_num_pixels(image.height, image.width, max_pixels)
            pil_image = image
        else:
            prefer_channels_first = not isinstance(image, np.ndarray)
            kind = "numpy array" if isinstance(image, np.ndarray) else "torch tensor"
            if not isinstance(image, np.ndarray):
                image = image.detach().cpu()
                if image.is_floating_point() and image.dtype != torch.float64:
                    image = image.to(torch.float32)  # float16/bfloat16 have no (or no exact) NumPy counterpart
                image = image.numpy()
            height, width = self._spatial_size(image, prefer_channels_first, input_data_format)
            _check_num_pixels(height, width, max_pixels)
            pil_image = _array_to_pil(image, prefer_channels_first, input_data_format, kind)

        rgb = _convert_pil_to_rgb(pil_image)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()

    @staticmethod
    def _spatial_size(
        array: np.ndarray, prefer_channels_first: bool, input_data_format: str | ChannelDimension | None
    ) -> tuple[int, int]:
        """(height, width) of a 2D or 3D array, without converting it."""
        if array.ndim == 2:
            return array.shape[0], array.shape[1]
        if array.ndim == 3:
            if _channel_layout(array.shape, prefer_channels_first, input_data_format) == ChannelDimension.FIRST:
                return array.shape[1], array.shape[2]
            return array.shape[0], array.shape[1]
        raise ValueError(
            f"Got an array with {array.ndim} dimensions (shape {tuple(array.shape)}); expected 2 (height, width) or "
            "3 (channels first or last) dimensions."
        )

    # ---------------------------------------------------------- transforms

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """
        Resize a `(3, H, W)` uint8 image like the official release: halve it with `Image.BOX`
        (`(w // 2, h // 2)`) while its short side is at least `2 * size["shortest_edge"]`, then resize it with
        `resample` so that the short side equals `size["shortest_edge"]` and the long side is
        `int(round(long * S / short))`.
        """
        target = size.get("shortest_edge")
        if not target or any(key != "shortest_edge" for key, _ in size):
            raise ValueError(
                f"UniFlowImageProcessor resizes the short side of images: `size` must be {{'shortest_edge': int}}, "
                f"got {dict(size)}."
            )
        resample = PILImageResampling.BICUBIC if resample is None else resample

        pil_image = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        while min(pil_image.size) >= 2 * target:
            width, height = pil_image.size
            pil_image = pil_image.resize((width // 2, height // 2), Image.BOX)

        width, height = pil_image.size
        if width <= height:
            new_size = (target, int(round(height * target / width)))
        else:
            new_size = (int(round(width * target / height)), target)
        pil_image = pil_image.resize(new_size, resample=int(resample))
        return np.asarray(pil_image, dtype=np.uint8).transpose(2, 0, 1).copy()

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """
        Center-crop a `(C, H, W)` image to `(size["height"], size["width"])` with the offsets
        `int(round((H - height) / 2.0))` and `int(round((W - width) / 2.0))` (as the official release /
        torchvision's `center_crop`). Images smaller than the crop are first zero-padded (as torchvision does).
        """
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must have keys 'height' and 'width', got {dict(size)}.")
        crop_height, crop_width = size.height, size.width
        _, height, width = image.shape
        if crop_height > height or crop_width > width:
            pad_top = (crop_height - height) // 2 if crop_height > height else 0
            pad_left = (crop_width - width) // 2 if crop_width > width else 0
            pad_bottom = (crop_height - height + 1) // 2 if crop_height > height else 0
            pad_right = (crop_width - width + 1) // 2 if crop_width > width else 0
            image = np.pad(image, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right)))
            _, height, width = image.shape
        top = int(round((height - crop_height) / 2.0))
        left = int(round((width - crop_width) / 2.0))
        return image[:, top : top + crop_height, left : left + crop_width]

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """
        Rescale to float32. A factor of the form `1 / n` (e.g. the default `1 / 255`) divides by `n`, as the official
        `ToTensor` does, so that the result is bit-identical to it.
        """
        image = image.astype(np.float32)
        inverse = 1.0 / scale
        if inverse == round(inverse):
            return image / np.float32(inverse)
        return image * np.float32(scale)

    def normalize(
        self, image: np.ndarray, mean: float | Iterable[float], std: float | Iterable[float], **kwargs
    ) -> np.ndarray:
        """Normalise a `(C, H, W)` image in float32: `(image - mean) / std`, as torchvision's `Normalize`."""
        num_channels = image.shape[0]
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float32), (num_channels,)).reshape(-1, 1, 1)
        std = np.broadcast_to(np.asarray(std, dtype=np.float32), (num_channels,)).reshape(-1, 1, 1)
        return (image.astype(np.float32) - mean) / std

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...] | None,
        image_std: float | tuple[float, ...] | None,
        do_pad: bool | None,
        pad_size: SizeDict | None,
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, crop, rescale and normalise `(3, H, W)` uint8 images into float32 `pixel_values`."""
        processed_images = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed_images.append(image.astype(np.float32, copy=False))

        if do_pad:
            processed_images = self.pad(processed_images, pad_size=pad_size)

        if return_tensors is not None:
            shapes = {image.shape for image in processed_images}
            if len(shapes) > 1:
                raise ValueError(
                    f"Cannot stack images of different sizes {sorted(shapes)} into one tensor: resize/crop them "
                    "(`do_resize=True`, `do_center_crop=True`) or pass `return_tensors=None` to get a list."
                )
            processed_images = np.stack(processed_images)
        return BatchFeature(data={"pixel_values": processed_images}, tensor_type=return_tensors)

    # -------------------------------------------------------------- outputs

    def postprocess(self, pixel_values: Any, output_type: str = "pil") -> list[Image.Image] | np.ndarray | Any:
        """
        Map model outputs in the normalised pixel space back to images.

        Args:
            pixel_values (`torch.Tensor` or `np.ndarray` of shape `(batch_size, 3, height, width)`):
                Images in the space produced by this processor (a `(3, height, width)` image is read as a batch of
                one). They are denormalised (`x * std + mean`, when `do_normalize` is set) and clamped to [0, 1].
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`: a list of RGB PIL images (8-bit, `round(x * 255)`); `"np"`: a float32 array of shape
                `(batch_size, height, width, 3)` in [0, 1]; `"pt"`: a float32 `torch.Tensor` of shape
                `(batch_size, 3, height, width)` in [0, 1].
        """
        if output_type not in POSTPROCESS_OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; expected one of {POSTPROCESS_OUTPUT_TYPES}.")
        if is_torch_available() and isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().to(device="cpu", dtype=torch.float32).numpy()
        elif isinstance(pixel_values, np.ndarray):
            pixel_values = pixel_values.astype(np.float32)
        else:
            raise TypeError(
                f"`pixel_values` must be a torch.Tensor or a numpy.ndarray, got {type(pixel_values).__name__}."
            )
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, 3, height, width) or (3, height, width), got "
                f"{tuple(pixel_values.shape)}."
            )

        images = pixel_values
        if self.do_normalize:
            std = np.asarray(self.image_std, dtype=np.float32).reshape(-1, 1, 1)
            mean = np.asarray(self.image_mean, dtype=np.float32).reshape(-1, 1, 1)
            images = images * std + mean
        images = np.clip(images, 0.0, 1.0).astype(np.float32)

        if output_type == "pt":
            if not is_torch_available():
                raise ImportError("output_type='pt' requires PyTorch.")
            return torch.from_numpy(np.ascontiguousarray(images))
        images = images.transpose(0, 2, 3, 1)
        if output_type == "np":
            return np.ascontiguousarray(images)
        return [Image.fromarray(np.round(image * 255.0).astype(np.uint8)) for image in images]


__all__ = ["UniFlowImageProcessor"]
