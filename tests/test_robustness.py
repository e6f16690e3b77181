"""Bad inputs across the image processor, the model, model loading / saving, the rFID weights and the CLI.

Every case has an id listed in tests/ROBUSTNESS.md (checked by the last test), with where it is caught and the
error expected. The image processor is tested as a black box.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from uniflow_hf import UniFlowConfig, UniFlowImageProcessor, UniFlowModel, UniFlowVisionModel
from uniflow_hf.evaluation import UnreadableImageError, evaluate_reconstruction, load_tokenizer, open_image_source
from uniflow_hf.metrics import FIDInceptionV3

from conftest import TINY_CONFIG


ROBUSTNESS_DOC = Path(__file__).with_name("ROBUSTNESS.md")
SIZE = 16


@pytest.fixture(scope="module")
def processor():
    return UniFlowImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = UniFlowModel(UniFlowConfig(**TINY_CONFIG)).eval()
    folder = tmp_path_factory.mktemp("model") / "uniflow"
    model.save_pretrained(folder)
    return model, folder


def photo_rgb(height=20, width=24, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# ----------------------------------------------------------------------------------------- image processor
PROCESSOR_REJECTS = {
    "processor-nan-array": (lambda: np.full((8, 8, 3), np.nan, dtype=np.float32), {}, ValueError, "NaN"),
    "processor-inf-tensor": (lambda: torch.full((3, 8, 8), float("inf")), {}, ValueError, "infinite"),
    "processor-float-above-1": (lambda: np.full((8, 8, 3), 2.0), {}, ValueError, r"\[0, 1\]"),
    "processor-negative-float": (lambda: -np.ones((8, 8, 3)), {}, ValueError, r"\[0, 1\]"),
    "processor-int32-array": (lambda: np.ones((8, 8, 3), dtype=np.int32), {}, TypeError, "dtype int32"),
    "processor-int64-tensor": (lambda: torch.ones(3, 8, 8, dtype=torch.int64), {}, TypeError, "dtype int64"),
    "processor-complex-array": (lambda: np.ones((8, 8, 3), dtype=np.complex64), {}, TypeError, "complex64"),
    "processor-empty-list": (lambda: [], {}, ValueError, "empty list"),
    "processor-path-string": (lambda: "image.png", {}, TypeError, "open the image"),
    "processor-none": (lambda: None, {}, TypeError, "NoneType"),
    "processor-5d-array": (lambda: np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), {}, ValueError, "5 dimensions"),
    "processor-two-channels": (lambda: np.zeros((8, 8, 2), dtype=np.uint8), {}, ValueError, "channel"),
    "processor-zero-height": (lambda: np.zeros((0, 8, 3), dtype=np.uint8), {}, ValueError, "empty"),
    "processor-over-max-pixels-pil": (lambda: photo_rgb(64, 64), {"max_pixels": 1000}, ValueError, "max_pixels"),
    "processor-over-max-pixels-array": (
        lambda: np.zeros((100, 100, 3), dtype=np.uint8), {"max_pixels": 1000}, ValueError, "max_pixels"
    ),
    "processor-mode-La": (lambda: photo_rgb().convert("RGBA").convert("La"), {}, ValueError, "mode 'La'"),
}


@pytest.mark.parametrize("case", sorted(PROCESSOR_REJECTS))
def test_processor_rejects_bad_images_clearly(processor, case):
    make, kwargs, error, match = PROCESSOR_REJECTS[case]
    with pytest.raises(error, match=match):
        processor(make(), return_tensors="pt", **kwargs)


PIL_MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "I;16")
PROCESSOR_ACCEPTS = {
    "processor-float64-tensor": lambda: torch.rand(3, 8, 8, dtype=torch.float64),
    "processor-float16-tensor": lambda: torch.rand(3, 8, 8, dtype=torch.float16),
    "processor-bfloat16-tensor": lambda: torch.rand(3, 8, 8, dtype=torch.bfloat16),
    "processor-uint16-array": lambda: np.full((8, 8), 65535, dtype=np.uint16),
    "processor-bool-array": lambda: np.ones((8, 8), dtype=bool),
    "processor-rgba-tensor": lambda: torch.rand(4, 8, 8),
    "processor-1x1-image": lambda: Image.new("RGB", (1, 1), (255, 0, 0)),
    "processor-1x300-image": lambda: Image.new("RGB", (300, 1), (0, 255, 0)),
    "processor-3000x2000-image": lambda: photo_rgb(2000, 3000),
    "processor-tensor-requiring-grad": lambda: torch.rand(3, 8, 8, requires_grad=True),
    **{f"processor-pil-mode-{mode}": (lambda mode=mode: photo_rgb().convert(mode)) for mode in PIL_MODES},
}


@pytest.mark.parametrize("case", sorted(PROCESSOR_ACCEPTS))
def test_processor_accepts_odd_but_valid_images(processor, case):
    pixel_values = processor(PROCESSOR_ACCEPTS[case](), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, SIZE, SIZE) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


def test_processor_keeps_16_bit_data_opened_as_mode_I(processor, tmp_path):
    gradient = np.linspace(0, 65535, 20 * 24).reshape(20, 24).astype(np.int32)
    Image.fromarray(gradient).save(tmp_path / "gray16.tif")
    image = Image.open(tmp_path / "gray16.tif")
    assert image.mode == "I"
    unnormalised = UniFlowImageProcessor(size={"shortest_edge": SIZE}, crop_size=SIZE, do_normalize=False)
    assert unnormalised(image, return_tensors="pt").pixel_values.max() > 0.5


# ------------------------------------------------------------------------------------------- image files
def write_bad_file(folder: Path, case: str) -> str:
    if case == "file-truncated-png":
        path = folder / "truncated.png"
        photo_rgb(64, 64).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif case == "file-zero-bytes":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif case == "file-text-named-png":
        path = folder / "notes.png"
        path.write_text("this is not an image")
    elif case == "file-decompression-bomb":
        path = folder / "bomb.png"
        photo_rgb(64, 64).save(path)  # with Image.MAX_IMAGE_PIXELS lowered to 1000 below
    return path.name


BAD_FILES = ("file-truncated-png", "file-zero-bytes", "file-text-named-png", "file-decompression-bomb")


@pytest.mark.parametrize("case", BAD_FILES)
def test_unreadable_files_are_named_or_skipped(official_tiny_dir, tmp_path, monkeypatch, case):
    if case == "file-decompression-bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 64x64 file has more than 2x this: a "bomb"
    photo_rgb(20, 24, seed=1).save(tmp_path / "good.png")
    bad_name = write_bad_file(tmp_path, case)
    model, processor = load_tokenizer(str(official_tiny_dir))
    source = open_image_source(str(tmp_path))
    with pytest.raises(UnreadableImageError, match=re.escape(bad_name)):
        evaluate_reconstruction(model, source, processor, progress=False)
    results = evaluate_reconstruction(model, source, processor, skip_unreadable=True, progress=False)
    assert results["num_images"] == 1 and results["num_skipped"] == 1 and bad_name in results["skipped"][0]


def test_decompression_bomb_is_stopped_by_pil_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    photo_rgb(64, 64).save(tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "bomb.png")


# ---------------------------------------------------------------------------------------------- the model
MODEL_REJECTS = {
    "model-nan-pixels": (lambda x: x.masked_fill(x > 1, float("nan")), ValueError, "NaN or infinite"),
    "model-inf-pixels": (lambda x: x.masked_fill(x > 1, float("inf")), ValueError, "NaN or infinite"),
    "model-int-pixels": (lambda x: x.to(torch.int64), TypeError, "floating-point"),
    "model-numpy-pixels": (lambda x: x.numpy(), TypeError, "torch.Tensor"),
    "model-3d-pixels": (lambda x: x[0], ValueError, r"\(batch, channels, height, width\)"),
    "model-one-channel": (lambda x: x[:, :1], ValueError, "1 channels but the model expects 3"),
    "model-size-not-multiple-of-patch": (lambda x: x[..., :30, :], ValueError, "multiple of the patch size 8"),
    "model-empty-batch": (lambda x: x[:0], ValueError, "empty batch"),
}


@pytest.mark.parametrize("case", sorted(MODEL_REJECTS))
def test_model_rejects_bad_pixel_values(saved_model, case):
    model, _ = saved_model
    make, error, match = MODEL_REJECTS[case]
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for call in (model.encode, model.reconstruct, model.vision_model):
        with pytest.raises(error, match=match):
            call(make(pixel_values))


def test_model_casts_other_float_dtypes(saved_model):
    """Documented cast: float64 / float16 pixel values are cast to the model's float32."""
    model, _ = saved_model
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.encode(pixel_values)
        assert torch.equal(model.encode(pixel_values.double()), reference)
        half = model.encode(pixel_values.half())
    assert half.dtype == torch.float32 and torch.allclose(half, model.encode(pixel_values.half().float()))


DECODE_REJECTS = {
    "decode-latents-wrong-width": (dict(latents=torch.zeros(1, 16, 5)), "latents"),
    "decode-latents-not-square": (dict(latents=torch.zeros(1, 15, 8)), "square grid"),
    "decode-noise-wrong-size": (dict(latents=torch.zeros(1, 16, 8), noise=torch.zeros(1, 16, 10)), "noise"),
    "decode-zero-steps": (dict(latents=torch.zeros(1, 16, 8), num_inference_steps=0), "positive integer"),
}


@pytest.mark.parametrize("case", sorted(DECODE_REJECTS))
def test_decode_rejects_bad_arguments(saved_model, case):
    model, _ = saved_model
    kwargs, match = DECODE_REJECTS[case]
    with pytest.raises(ValueError, match=match):
        model.decode(**kwargs)


def test_outputs_are_deterministic_per_seed(saved_model):
    model, _ = saved_model
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = lambda seed: model.reconstruct(pixel_values, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# --------------------------------------------------------------------------------------- loading and saving
def test_pickled_only_folder_is_refused_unless_explicitly_allowed(saved_model, tmp_path):
    model, folder = saved_model
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(load_file(folder / "model.safetensors"), pickled / "pytorch_model.bin")
    for cls in (UniFlowModel, UniFlowVisionModel):
        with pytest.raises(OSError, match="use_safetensors=False"):
            cls.from_pretrained(pickled)
    loaded = UniFlowModel.from_pretrained(pickled, use_safetensors=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def edited_weights(folder: Path, target: Path, edit) -> Path:
    copy_folder(folder, target)
    weights = load_file(target / "model.safetensors")
    edit(weights)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_missing_weights_are_an_error(saved_model, tmp_path):
    _, folder = saved_model
    broken = edited_weights(folder, tmp_path / "missing", lambda w: w.pop("flow_head.final_layer.linear.weight"))
    with pytest.raises(ValueError, match="final_layer.linear.weight"):
        UniFlowModel.from_pretrained(broken)


def test_classifier_takes_the_encoder_of_any_uniflow_folder_and_refuses_a_partial_one(saved_model, tmp_path):
    """UniFlowForImageClassification: from a tower folder, a UniFlowModel folder or its own, the encoder loads exactly
    (only a missing classification head is new); a folder missing encoder weights is an error, not a random init."""
    from uniflow_hf.modeling import UniFlowForImageClassification

    model, folder = saved_model
    model.vision_model.save_pretrained(tmp_path / "tower")
    for source in (folder, tmp_path / "tower"):
        classifier = UniFlowForImageClassification.from_pretrained(source)
        for name, value in model.vision_model.state_dict().items():
            assert torch.equal(classifier.vision_model.state_dict()[name], value), (source, name)
    classifier.save_pretrained(tmp_path / "classifier")
    reloaded = UniFlowForImageClassification.from_pretrained(tmp_path / "classifier")
    assert torch.equal(reloaded.classifier.weight, classifier.classifier.weight)
    broken = edited_weights(
        tmp_path / "classifier", tmp_path / "no_layer", lambda w: w.pop("vision_model.encoder.layers.1.mlp.fc1.weight")
    )
    with pytest.raises(ValueError, match="does not hold weights .*layers.1.mlp.fc1.weight"):
        UniFlowForImageClassification.from_pretrained(broken)


def test_unexpected_weights_are_an_error_for_the_full_model(saved_model, tmp_path):
    _, folder = saved_model
    extra_block = lambda w: w.update({"flow_head.res_blocks.7.fc1.weight": torch.zeros(4, 4)})  # noqa: E731
    extra_decoder = edited_weights(folder, tmp_path / "extra_block", extra_block)
    with pytest.raises(ValueError, match="res_blocks.7.fc1.weight"):
        UniFlowModel.from_pretrained(extra_decoder)
    assert isinstance(UniFlowVisionModel.from_pretrained(extra_decoder), UniFlowVisionModel)  # decoder keys ignored
    stray = edited_weights(folder, tmp_path / "stray", lambda w: w.update({"vision_model.stray": torch.zeros(2)}))
    with pytest.raises(ValueError, match="stray"):
        UniFlowModel.from_pretrained(stray)
    # The tower takes its part of larger folders (a UniFlowModel's, a classifier's) and leaves the rest.
    assert isinstance(UniFlowVisionModel.from_pretrained(stray), UniFlowVisionModel)


def test_broken_folders_fail_clearly(saved_model, tmp_path):
    _, folder = saved_model
    mismatched = copy_folder(folder, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "latent_channels": 4}))
    with pytest.raises(RuntimeError, match="mismatched"):
        UniFlowModel.from_pretrained(mismatched)
    truncated = copy_folder(folder, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="deserializing header"):
        UniFlowModel.from_pretrained(truncated)
    no_config = copy_folder(folder, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(OSError, match="no config.json"):
        UniFlowModel.from_pretrained(no_config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="no config.json"):
        UniFlowModel.from_pretrained(tmp_path / "empty")


def test_a_save_killed_midway_leaves_the_previous_model_intact(saved_model, tmp_path, monkeypatch):
    import transformers.modeling_utils

    model, folder = saved_model
    target = copy_folder(folder, tmp_path / "parent" / "model")
    (target / "preprocessor_config.json").write_text("{}")  # not ours: must survive every save
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    real_writer = transformers.modeling_utils.safe_save_file

    def killed_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 1000)  # part of a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", killed_writer)
    changed = UniFlowModel(UniFlowConfig(**TINY_CONFIG))
    with pytest.raises(KeyboardInterrupt):
        changed.save_pretrained(target)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert os.listdir(target.parent) == ["model"]  # no staging folder left behind
    assert all(torch.equal(a, b) for a, b in zip(UniFlowModel.from_pretrained(target).state_dict().values(),
                                                  model.state_dict().values()))  # fmt: skip

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real_writer)
    changed.save_pretrained(target, max_shard_size="100KB")
    sharded = sorted(path.name for path in target.iterdir())
    assert "model.safetensors" not in sharded and "model.safetensors.index.json" in sharded
    changed.save_pretrained(target)  # back to one file: the shards and their index go
    expected_files = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert sorted(path.name for path in target.iterdir() if path.suffix != ".py") == expected_files  # + its code
    reloaded = UniFlowModel.from_pretrained(target)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), changed.state_dict().values()))
    with pytest.raises(ValueError, match="is a file"):
        changed.save_pretrained(target / "config.json")


# ----------------------------------------------------------------------------------------- rFID weights
def inception_weights_case(tmp_path: Path, case: str) -> Path:
    state_dict = FIDInceptionV3().state_dict()
    path = tmp_path / f"{case}.pth"
    if case == "inception-missing-file":
        return tmp_path / "nowhere.pth"
    if case == "inception-pickled-object":
        torch.save({"model": FIDInceptionV3()}, path)  # a whole module: needs unpickling code
    elif case == "inception-torchvision-keys":
        state_dict["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
        state_dict["fc.weight"] = torch.zeros(1000, 2048)
        torch.save(state_dict, path)
    elif case == "inception-wrong-shape":
        state_dict["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(1, 1, 1, 1)
        torch.save(state_dict, path)
    elif case == "inception-missing-keys":
        torch.save({k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c")}, path)
    elif case == "inception-garbage-bytes":
        path.write_bytes(os.urandom(256))
    return path


INCEPTION_REJECTS = {
    "inception-missing-file": (FileNotFoundError, "pytorch-fid/releases"),
    "inception-pickled-object": (ValueError, "weights_only"),
    "inception-torchvision-keys": (ValueError, "torchvision"),
    "inception-wrong-shape": (ValueError, "1 of the wrong shape"),
    "inception-missing-keys": (ValueError, "missing weights"),
    "inception-garbage-bytes": (ValueError, "Could not read"),
}


@pytest.mark.parametrize("case", sorted(INCEPTION_REJECTS))
def test_inception_weights_are_checked(tmp_path, case):
    error, match = INCEPTION_REJECTS[case]
    with pytest.raises(error, match=match):
        FIDInceptionV3.from_weights_file(inception_weights_case(tmp_path, case))


def test_inception_weights_load_in_every_accepted_form(tmp_path):
    from safetensors.torch import save_file as save_safetensors

    torch.manual_seed(0)
    reference = FIDInceptionV3()
    state_dict = reference.state_dict()
    trimmed = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    with_classifier = {**state_dict, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(trimmed, tmp_path / "trimmed.pth")
    torch.save(with_classifier, tmp_path / "with_fc.pth")
    save_safetensors(trimmed, tmp_path / "weights.safetensors")
    images = torch.rand(1, 3, 40, 40)
    for name in ("trimmed.pth", "with_fc.pth", "weights.safetensors"):
        loaded = FIDInceptionV3.from_weights_file(tmp_path / name)
        assert torch.equal(loaded(images), reference(images))


# -------------------------------------------------------------------------------------------------- the CLI
def cli_case(case: str, official_tiny_dir: Path, tmp_path: Path) -> tuple[list[str], str]:
    images = tmp_path / "images"
    images.mkdir()
    photo_rgb(20, 24).save(images / "good.png")
    model, dataset = str(official_tiny_dir), str(images)
    if case == "cli-missing-model":
        return ["--model", str(tmp_path / "nope"), "--dataset", dataset], "No model folder"
    if case == "cli-missing-dataset":
        return ["--model", model, "--dataset", str(tmp_path / "nope")], "No folder"
    if case == "cli-truncated-image":
        write_bad_file(images, "file-truncated-png")
        return ["--model", model, "--dataset", dataset], "truncated.png"
    if case == "cli-resolution-not-multiple":
        return ["--model", model, "--dataset", dataset, "--resolution", "36"], "multiple of the patch size"
    if case == "cli-zero-batch-size":
        return ["--model", model, "--dataset", dataset, "--batch-size", "0"], "batch_size"
    if case == "cli-zero-max-images":
        return ["--model", model, "--dataset", dataset, "--max-images", "0"], "max_images"
    if case == "cli-pickled-model":
        pickled = tmp_path / "pickled"
        pickled.mkdir()
        (pickled / "config.json").write_bytes((official_tiny_dir / "config.json").read_bytes())
        torch.save(load_file(official_tiny_dir / "model.safetensors"), pickled / "pytorch_model.bin")
        return ["--model", str(pickled), "--dataset", dataset], "only pickled weights"
    if case == "cli-bad-inception-weights":
        (tmp_path / "inception.pth").write_bytes(b"not a checkpoint")
        return ["--model", model, "--dataset", dataset, "--inception-weights", str(tmp_path / "inception.pth")], (
            "Could not read Inception weights"
        )
    raise AssertionError(case)


CLI_CASES = (
    "cli-missing-model", "cli-missing-dataset", "cli-truncated-image", "cli-resolution-not-multiple",
    "cli-zero-batch-size", "cli-zero-max-images", "cli-pickled-model", "cli-bad-inception-weights",
)  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_reports_bad_inputs_without_a_traceback(official_tiny_dir, tmp_path, capsys, case):
    from uniflow_hf.cli import main

    arguments, message = cli_case(case, official_tiny_dir, tmp_path)
    assert main(["evaluate", "--no-progress", *arguments]) == 2
    error = capsys.readouterr().err
    assert "uniflow-hf evaluate: error:" in error and message in error and "Traceback" not in error


# ---------------------------------------------------------------------------------------------- the record
def all_case_ids() -> list[str]:
    return [
        *PROCESSOR_REJECTS, *PROCESSOR_ACCEPTS, "processor-16-bit-mode-I", *BAD_FILES, "file-bomb-at-open",
        *MODEL_REJECTS, "model-float64-float16-pixels", *DECODE_REJECTS,
        "load-pickled-only-folder", "load-missing-weights", "load-unexpected-weights", "load-shape-mismatch",
        "load-truncated-safetensors", "load-no-config", "save-killed-midway", "save-stale-shards",
        "save-onto-a-file", *INCEPTION_REJECTS, "inception-accepted-forms", *CLI_CASES,
    ]  # fmt: skip


def test_robustness_record_lists_every_case():
    """tests/ROBUSTNESS.md has one table row per case id above, and its stated count is right."""
    text = ROBUSTNESS_DOC.read_text()
    listed = re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(all_case_ids())
    assert f"**{len(all_case_ids())} bad or odd inputs**" in text
