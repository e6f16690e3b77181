# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Tests of `UniFlowImageProcessor` (the preprocessing of the official UniFlow release)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES
from uniflow_hf.modeling.image_processing_uniflow import UniFlowImageProcessor, _default_max_pixels


OFFICIAL_PREPROCESSOR_CONFIG = FIXTURES / "official_release_preprocessor_config.json"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def reference_preprocess(image: Image.Image, target: int) -> np.ndarray:
    """Straightforward re-implementation of the official release preprocessing, returns (3, S, S) float32."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * target:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), Image.BOX)
    width, height = image.size
    if width < height:
        image = image.resize((target, int(round(height * target / width))), Image.BICUBIC)
    else:
        image = image.resize((int(round(width * target / height)), target), Image.BICUBIC)
    width, height = image.size
    top = int(round((height - target) / 2.0))
    left = int(round((width - target) / 2.0))
    image = image.crop((left, top, left + target, top + target))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def native(processor: UniFlowImageProcessor, images, **kwargs):
    """Preprocess at native size, without normalisation: returns values in [0, 1]."""
    return processor(images, do_resize=False, do_center_crop=False, do_normalize=False, **kwargs).pixel_values


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    "width, height, target",
    [
        (1000, 700, 448),  # no halving (700 < 896), downscale, crop along the width
        (700, 1000, 448),  # portrait
        (1900, 1000, 448),  # one BOX halving to 950x500
        (300, 200, 32),  # two BOX halvings (150x100, then the floor-halving 75x50)
        (90, 64, 32),  # one halving to 45x32, crop offset round(6.5) == 6 (round-half-to-even)
        (94, 64, 32),  # one halving to 47x32, crop offset round(7.5) == 8
        (64, 94, 32),  # portrait: vertical crop offset round(7.5) == 8
        (333, 250, 32),  # halvings to 83x62, long side round(42.84) == 43
        (250, 333, 32),  # portrait of the above
        (20, 30, 32),  # upscaling
    ],
)
def test_matches_reference_implementation(width, height, target):
    image = random_rgb(width, height, seed=width + height)
    processor = UniFlowImageProcessor(size=target, crop_size=target)
    pixel_values = processor(image, return_tensors="np").pixel_values
    assert pixel_values.shape == (1, 3, target, target)
    np.testing.assert_array_equal(pixel_values[0], reference_preprocess(image, target))


def test_box_halving_is_applied():
    image = random_rgb(1900, 1000, seed=1)
    pixel_values = UniFlowImageProcessor()(image, return_tensors="np").pixel_values[0]
    # A single bicubic resize (no halving) gives a different result.
    direct = image.resize((851, 448), Image.BICUBIC).crop((202, 0, 650, 448))
    direct = ((np.asarray(direct, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(pixel_values - direct).max() > 1e-3


def test_crop_offset_rounds_half_to_even():
    image = random_rgb(90, 64, seed=3)
    halved = np.asarray(image.resize((45, 32), Image.BOX))
    processor = UniFlowImageProcessor(size=32, crop_size=32, do_normalize=False)
    out = processor(image, return_tensors="np").pixel_values[0]
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), halved[:, 6:38].transpose(2, 0, 1))


def test_rescale_is_the_release_to_tensor_for_every_8bit_level():
    # The release's ToTensor divides uint8 values by 255 in float32: every level must give exactly those bits.
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = native(UniFlowImageProcessor(), levels, return_tensors="np")[0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.broadcast_to(levels.astype(np.float32) / np.float32(255), (3, 16, 16)))


def test_defaults():
    processor = UniFlowImageProcessor()
    assert dict(processor.size) == {"shortest_edge": 448}
    assert dict(processor.crop_size) == {"height": 448, "width": 448}
    assert processor.resample == Image.BICUBIC
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert processor.model_input_names == ["pixel_values"]
    assert processor.max_pixels == _default_max_pixels()


def test_from_image_size_resizes_and_crops_to_the_model_input():
    processor = UniFlowImageProcessor.from_image_size(28, do_normalize=False)
    assert dict(processor.size) == {"shortest_edge": 28}
    assert dict(processor.crop_size) == {"height": 28, "width": 28}
    assert processor.do_normalize is False
    out = processor(Image.new("RGB", (70, 40)), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 28, 28)
    for bad in (0, -3, 2.5, True, "28"):
        with pytest.raises(ValueError, match="positive int"):
            UniFlowImageProcessor.from_image_size(bad)


def test_default_max_pixels_follows_pil(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    assert _default_max_pixels() == 178956970
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _default_max_pixels() == 2**28


# ---------------------------------------------------------------------- shapes, modes, inputs


def test_output_shape_dtype_and_range():
    processor = UniFlowImageProcessor(size=24, crop_size=24)
    images = [random_rgb(50, 30, seed=0), random_rgb(31, 77, seed=1), random_rgb(24, 24, seed=2)]

    pt = processor(images, return_tensors="pt").pixel_values
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32 and pt.shape == (3, 3, 24, 24)
    low, high = torch.from_numpy((0 - MEAN) / STD), torch.from_numpy((1 - MEAN) / STD)
    assert (pt >= low[:, None, None] - 1e-6).all() and (pt <= high[:, None, None] + 1e-6).all()

    np_values = processor(images, return_tensors="np").pixel_values
    assert isinstance(np_values, np.ndarray) and np_values.dtype == np.float32
    np.testing.assert_array_equal(np_values, pt.numpy())

    as_list = processor(images).pixel_values
    assert isinstance(as_list, list) and len(as_list) == 3
    np.testing.assert_array_equal(np.stack(as_list), np_values)


def _mode_image(mode: str) -> Image.Image:
    rgb = random_rgb(40, 30, seed=7)
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        return image
    if mode == "P+transparency-bytes":
        image = rgb.convert("P")
        image.info["transparency"] = bytes(range(256))
        return image
    if mode in ("I;16", "I;16B"):
        values = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        return Image.frombytes(mode, rgb.size, values.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    if mode == "F":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32))
    return rgb.convert(mode)


@pytest.mark.parametrize(
    "mode",
    ["RGB", "1", "L", "LA", "P", "P+transparency", "P+transparency-bytes", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"],
)
def test_every_pil_mode_becomes_rgb(mode):
    image = _mode_image(mode)
    processor = UniFlowImageProcessor(size=16, crop_size=16)
    assert processor(image, return_tensors="pt").pixel_values.shape == (1, 3, 16, 16)
    values = native(processor, image, return_tensors="np")
    assert values.shape == (1, 3, 30, 40)
    if mode in ("I;16", "I;16B", "F"):
        # 16-bit values are scaled by 1/257, float values follow PIL (0-255 scale): both give back the 8-bit gray.
        gray = np.asarray(random_rgb(40, 30, seed=7).convert("L"))
        np.testing.assert_array_equal(np.round(values[0] * 255).astype(np.uint8), np.stack([gray] * 3))


def test_alpha_is_dropped_like_pil_convert():
    rgba = np.random.default_rng(0).integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
    processor = UniFlowImageProcessor()
    expected = rgba[..., :3].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(native(processor, Image.fromarray(rgba), return_tensors="np")[0], expected, atol=1e-6)
    np.testing.assert_allclose(native(processor, rgba, return_tensors="np")[0], expected, atol=1e-6)


def test_integer_mode_scaling():
    processor = UniFlowImageProcessor()
    values16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)  # -> 0, 1, 255, 128
    image16 = Image.frombytes("I;16", (4, 1), values16.astype("<u2").tobytes())
    out = native(processor, image16, return_tensors="np")[0] * 255
    np.testing.assert_allclose(out, np.broadcast_to([[0, 1, 255, 128]], (3, 1, 4)), atol=1e-4)
    # The same values as a uint16 array.
    np.testing.assert_allclose(native(processor, values16, return_tensors="np")[0] * 255, out, atol=1e-4)

    values32 = np.array([[-5, 0, 2**31 - 1, 2**30]], dtype=np.int32)  # -> 0, 0, 255, 128
    image32 = Image.fromarray(values32)
    assert image32.mode == "I"
    out = native(processor, image32, return_tensors="np")[0] * 255
    np.testing.assert_allclose(out, np.broadcast_to([[0, 0, 255, 128]], (3, 1, 4)), atol=1e-4)


def test_numpy_and_torch_inputs_match_pil():
    image = random_rgb(70, 50, seed=11)
    hwc = np.asarray(image)
    chw = hwc.transpose(2, 0, 1)
    processor = UniFlowImageProcessor(size=32, crop_size=32)
    expected = processor(image, return_tensors="np").pixel_values

    variants = {
        "np HWC uint8": hwc,
        "np CHW uint8": chw,
        "np HWC float32": hwc.astype(np.float32) / 255,
        "np CHW float64": chw / 255.0,
        "torch CHW uint8": torch.from_numpy(chw.copy()),
        "torch CHW float32": torch.from_numpy(chw.copy()).float() / 255,
        "torch CHW float16": (torch.from_numpy(chw.copy()).float() / 255).half(),
        "torch CHW float32 requires_grad": (torch.from_numpy(chw.copy()).float() / 255).requires_grad_(),
        "torch HWC uint8": torch.from_numpy(hwc.copy()),
    }
    for name, value in variants.items():
        np.testing.assert_array_equal(processor(value, return_tensors="np").pixel_values, expected, err_msg=name)

    # 4D batches and lists.
    batch = processor([image, image], return_tensors="np").pixel_values
    np.testing.assert_array_equal(processor(np.stack([hwc, hwc]), return_tensors="np").pixel_values, batch)
    np.testing.assert_array_equal(
        processor(torch.from_numpy(np.stack([chw, chw])).float() / 255, return_tensors="np").pixel_values, batch
    )
    mixed = processor([hwc, torch.from_numpy(chw.copy())], return_tensors="np").pixel_values
    np.testing.assert_array_equal(mixed, batch)

    # Grayscale: 2D arrays, (H, W, 1), (1, H, W) tensors and bool masks match the PIL "L" / "1" images.
    gray = np.asarray(image.convert("L"))
    expected_gray = processor(image.convert("L"), return_tensors="np").pixel_values
    for value in (gray, gray[..., None], torch.from_numpy(gray.copy())[None], gray / 255.0):
        np.testing.assert_array_equal(processor(value, return_tensors="np").pixel_values, expected_gray)
    mask = gray > 128
    np.testing.assert_array_equal(
        processor(mask, return_tensors="np").pixel_values,
        processor(Image.fromarray(mask), return_tensors="np").pixel_values,
    )


def test_input_data_format_disambiguates():
    # (3, 5, 3) is ambiguous: numpy arrays default to channels-last, `input_data_format` overrides that.
    array = np.random.default_rng(0).integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    processor = UniFlowImageProcessor()
    assert native(processor, array, return_tensors="np").shape == (1, 3, 3, 5)
    out = native(processor, array, input_data_format="channels_first", return_tensors="np")
    assert out.shape == (1, 3, 5, 3)
    np.testing.assert_allclose(out[0], array / 255.0, atol=1e-6)


# ---------------------------------------------------------------------------- postprocess


def test_postprocess_round_trip():
    original = np.random.default_rng(5).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    processor = UniFlowImageProcessor()
    pixel_values = processor(original, do_resize=False, do_center_crop=False, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 37, 53)

    as_np = processor.postprocess(pixel_values, output_type="np")
    assert as_np.shape == (1, 37, 53, 3) and as_np.dtype == np.float32
    assert np.abs(as_np[0] - original / 255.0).max() <= 1 / 255
    np.testing.assert_allclose(as_np[0], original / 255.0, atol=1e-5)

    as_pil = processor.postprocess(pixel_values, output_type="pil")
    assert isinstance(as_pil, list) and len(as_pil) == 1 and as_pil[0].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(as_pil[0]), original)
    assert processor.postprocess(pixel_values)[0].size == (53, 37)  # "pil" is the default

    as_pt = processor.postprocess(pixel_values, output_type="pt")
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (1, 3, 37, 53) and as_pt.dtype == torch.float32
    np.testing.assert_allclose(as_pt[0].permute(1, 2, 0).numpy(), as_np[0], atol=1e-7)


def test_postprocess_clamps():
    processor = UniFlowImageProcessor()
    pixel_values = torch.full((2, 3, 4, 4), 100.0)
    pixel_values[:, :, :2] = -100.0
    out = processor.postprocess(pixel_values, output_type="pt")
    assert out.shape == (2, 3, 4, 4)
    assert (out[:, :, :2] == 0.0).all() and (out[:, :, 2:] == 1.0).all()


# --------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    processor = UniFlowImageProcessor(size=32, crop_size=24, max_pixels=10**6)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 32} and saved["crop_size"] == {"height": 24, "width": 24}
    assert saved["image_processor_type"] == "UniFlowImageProcessor" and saved["max_pixels"] == 10**6

    loaded = UniFlowImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = random_rgb(80, 60, seed=2)
    np.testing.assert_array_equal(
        loaded(image, return_tensors="np").pixel_values, processor(image, return_tensors="np").pixel_values
    )


def test_loads_official_release_preprocessor_config(tmp_path):
    shutil.copy(OFFICIAL_PREPROCESSOR_CONFIG, tmp_path / "preprocessor_config.json")
    processor = UniFlowImageProcessor.from_pretrained(tmp_path)
    assert dict(processor.size) == {"shortest_edge": 448}
    assert dict(processor.crop_size) == {"height": 448, "width": 448}
    assert processor.resample == Image.BICUBIC
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert "feature_extractor_type" not in processor.to_dict()

    image = random_rgb(1000, 700, seed=4)
    np.testing.assert_array_equal(
        processor(image, return_tensors="np").pixel_values[0], reference_preprocess(image, 448)
    )


# -------------------------------------------------------------------------------- errors


def _nan_array():
    array = np.full((8, 8, 3), 0.5, dtype=np.float32)
    array[2, 3, 1] = np.nan
    return array


def _nan_float_image():
    return Image.fromarray(np.array([[1.0, np.nan]], dtype=np.float32))


@pytest.mark.parametrize(
    "images, error, match",
    [
        ("cat.png", TypeError, "file paths and URLs are not loaded"),
        (pathlib.Path("cat.png"), TypeError, "file paths and URLs are not loaded"),
        (42, TypeError, "Unsupported image type int; expected a PIL.Image.Image, a numpy.ndarray"),
        ([np.zeros((8, 8, 3), np.uint8), None], TypeError, "Unsupported image type NoneType"),
        ([], ValueError, "empty list of images"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, r"shape \(0, 8, 8, 3\).*non-empty batch"),
        (np.zeros(10, np.uint8), ValueError, "1 dimensions .*expected 2"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, "5 dimensions .*expected 2"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "1, 3 or 4 channels"),
        (torch.zeros(5, 8, 8), ValueError, "1, 3 or 4 channels"),
        (_nan_array(), ValueError, "NaN or infinite"),
        (np.full((8, 8), np.inf), ValueError, "NaN or infinite"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN or infinite"),
        (_nan_float_image(), ValueError, "NaN or infinite"),
        (np.full((8, 8, 3), 255.0, np.float32), ValueError, r"values in \[0, 1\].*Pass uint8"),
        (np.zeros((8, 8, 3), np.int64), TypeError, "dtype int64; expected uint8"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty image"),
        (Image.new("RGB", (0, 8)), ValueError, "empty image"),
    ],
)
def test_bad_inputs_raise_helpful_errors(images, error, match):
    with pytest.raises(error, match=match):
        UniFlowImageProcessor(size=16, crop_size=16)(images, return_tensors="pt")


def test_max_pixels_guard_runs_before_resizing(monkeypatch):
    processor = UniFlowImageProcessor(max_pixels=100)

    def fail(*args, **kwargs):
        raise AssertionError("resize must not be reached")

    monkeypatch.setattr(processor, "resize", fail)
    for image in (random_rgb(11, 10), np.zeros((3, 10, 11), np.float32), torch.zeros(3, 10, 11)):
        with pytest.raises(ValueError, match=r"110 pixels .*max_pixels=100.*decompression bomb"):
            processor(image)
    # At the limit is fine; the limit can also be given per call.
    assert processor(random_rgb(10, 10), do_resize=False, do_center_crop=False).pixel_values[0].shape == (3, 10, 10)
    with pytest.raises(ValueError, match="max_pixels=50"):
        UniFlowImageProcessor()(random_rgb(10, 10), max_pixels=50)


def test_bad_settings_raise_helpful_errors():
    image = random_rgb(20, 20)
    with pytest.raises(ValueError, match="shortest_edge"):
        UniFlowImageProcessor(size={"height": 16, "width": 16})(image)
    with pytest.raises(ValueError, match="return_tensors=None"):  # transformers' BatchFeature says so
        UniFlowImageProcessor()(
            [image, random_rgb(10, 20)], do_resize=False, do_center_crop=False, return_tensors="pt"
        )
    with pytest.raises(ValueError, match="do_convert_rgb=False"):
        UniFlowImageProcessor()(image, do_convert_rgb=False)


def test_postprocess_errors():
    processor = UniFlowImageProcessor()
    with pytest.raises(ValueError, match=r"Unknown output_type 'latent'; expected one of \('pil', 'np', 'pt'\)"):
        processor.postprocess(torch.zeros(1, 3, 4, 4), output_type="latent")
    with pytest.raises(ValueError, match=r"\(batch_size, 3, height, width\)"):
        processor.postprocess(torch.zeros(1, 4, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor or a numpy.ndarray"):
        processor.postprocess([[0.0]])
