"""Folders travel: what the package saves (tokenizer, tower, converted official release, grafted LLaVA, a folder for
transformers' image-feature-extraction pipeline, the two diffusers pipelines and their `tokenizer/`) loads where `uniflow_hf` cannot be imported, through the Auto
classes and `trust_remote_code=True` (the code saved beside the weights), and gives the package's outputs; and
loads natively, without `trust_remote_code`, with the package imported.

One subprocess runs every remote-code check (this file, run as a script, with an import hook that makes
`import uniflow_hf` fail); the test builds the folders and the package's expected outputs (float32) first."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


IMAGE_SIZE = 32  # TINY_CONFIG's
PROMPT = "USER : <image> What colour is the image ?"


def blocked_package_import_hook():
    """A `sys.meta_path` finder under which `import uniflow_hf` (and its submodules) raises ImportError."""
    import importlib.abc

    class BlockUniFlowHF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "uniflow_hf" or name.startswith(("uniflow_hf.", "uniflow_hf_cli")):
                raise ImportError(f"{name} is blocked: this process checks loading without uniflow-hf.")
            return None

    return BlockUniFlowHF()


def remote_inputs():
    """The inputs every check uses (seeded, float32): pixel values, decoder noise and a PIL image."""
    import numpy as np
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    noise = torch.randn(2, (IMAGE_SIZE // 8) ** 2, 3 * 8 * 8, generator=generator)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return pixel_values, noise, image


def tokenizer_outputs(model, pixel_values, noise):
    with torch.no_grad():
        return {"latents": model.encode(pixel_values), "reconstruction": model.reconstruct(pixel_values, noise=noise)}


def llava_outputs(model, processor, image):
    inputs = processor(images=[image], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return {"image_features": torch.cat(list(features)), "generated": generated}


def diffusers_pipeline_outputs(generation, reconstruction, image):
    for pipeline in (generation, reconstruction):
        pipeline.set_progress_bar_config(disable=True)
    generated = generation(["stripes", 1], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                           output_type="pt")
    reconstructed = reconstruction([image, image], generator=torch.Generator().manual_seed(1), output_type="pt")
    return {"pipelines.generation": generated.images, "pipelines.reconstruction": reconstructed.images}


# ------------------------------------------------------------------------------ checks run without uniflow_hf
def check_tokenizer_and_tower(folders, expected):
    """The tokenizer (`AutoModelForImageToImage`), a tower folder and the tokenizer's encoder (`AutoModel`)."""
    from transformers import AutoModel, AutoModelForImageToImage

    pixel_values, noise, _ = remote_inputs()
    load = dict(trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoModelForImageToImage.from_pretrained(folders["tokenizer"], **load).eval()
    towers = {name: AutoModel.from_pretrained(folders[name], **load).eval() for name in ("tower", "tokenizer")}
    assert type(tokenizer).__name__ == "UniFlowModel"
    assert {type(tower).__name__ for tower in towers.values()} == {"UniFlowVisionModel"}
    with torch.no_grad():
        actual = tokenizer_outputs(tokenizer, pixel_values, noise)
        actual.update({f"{name}_tower": tower(pixel_values).last_hidden_state for name, tower in towers.items()})
    return {f"tokenizer.{name}": value for name, value in actual.items()}


def check_classifier(folders, expected):
    from transformers import AutoModelForImageClassification

    load = dict(trust_remote_code=True, dtype=torch.float32)
    model = AutoModelForImageClassification.from_pretrained(folders["classifier"], **load).eval()
    assert type(model).__name__ == "UniFlowForImageClassification"
    with torch.no_grad():
        return {"classifier.logits": model(remote_inputs()[0]).logits}


def check_converted_official(folders, expected):
    from transformers import AutoModelForImageToImage

    pixel_values, noise, _ = remote_inputs()
    load = dict(trust_remote_code=True, dtype=torch.float32)
    model = AutoModelForImageToImage.from_pretrained(folders["converted"], **load).eval()
    return {f"converted.{name}": value for name, value in tokenizer_outputs(model, pixel_values, noise).items()}


def check_grafted_llava(folders, expected):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folders["llava"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folders["llava"], trust_remote_code=True)
    assert type(model.model.vision_tower).__name__ == "UniFlowVisionModel"
    assert type(processor.image_processor).__name__ == "UniFlowImageProcessor"
    return {f"llava.{name}": value for name, value in llava_outputs(model, processor, remote_inputs()[2]).items()}


def check_image_feature_extraction_pipeline(folders, expected):
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=folders["tokenizer"], trust_remote_code=True)
    return {"feature_extraction": extractor(remote_inputs()[2], return_tensors=True)}


def check_diffusers_pipelines(folders, expected):
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` runs the code saved in the pipeline folders
    (diffusers' custom pipelines and components): the same images for the same generator; and the image-feature-
    extraction pipeline on a pipeline's `tokenizer/`."""
    from diffusers import DiffusionPipeline
    from transformers import pipeline

    generation = DiffusionPipeline.from_pretrained(folders["generation"], trust_remote_code=True)
    # saved without an image processor: the default one, before another folder's code joins `diffusers_modules.local`
    assert type(generation.processor).__name__ == "UniFlowImageProcessor"
    reconstruction = DiffusionPipeline.from_pretrained(folders["reconstruction"], trust_remote_code=True)
    assert type(generation).__module__ == "diffusers_modules.local.pipeline_uniflow_class_conditional"
    assert type(reconstruction.tokenizer).__module__ == "diffusers_modules.local.modeling_uniflow"
    outputs = diffusers_pipeline_outputs(generation, reconstruction, remote_inputs()[2])
    extractor = pipeline("image-feature-extraction", model=f"{folders['generation']}/tokenizer", trust_remote_code=True)
    outputs["feature_extraction"] = extractor(remote_inputs()[2], return_tensors=True)
    return outputs


# The checks the subprocess runs.
REMOTE_CODE_CHECKS = [
    check_tokenizer_and_tower,
    check_classifier,
    check_converted_official,
    check_grafted_llava,
    check_image_feature_extraction_pipeline,
    check_diffusers_pipelines,
]


def run_remote_code_checks(folders_file):
    """The subprocess: every check of `REMOTE_CODE_CHECKS`, compared with the package's outputs."""
    from safetensors.torch import load_file

    folders = json.loads(Path(folders_file).read_text())
    expected = load_file(folders["expected"])
    for check in REMOTE_CODE_CHECKS:
        for name, actual in check(folders, expected).items():
            if actual.dtype.is_floating_point:
                torch.testing.assert_close(actual, expected[name], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
            else:
                assert torch.equal(actual, expected[name]), f"{name}: {actual.tolist()} != {expected[name].tolist()}"
        print(f"{check.__name__}: ok")


# ----------------------------------------------------------------------------------- folders, with the package
@pytest.fixture(scope="module")
def remote_code_folders(tmp_path_factory):
    """The saved folders and the package's outputs on them (expected.safetensors)."""
    from safetensors.torch import save_file
    from test_llava import build_tokenizer, save_clip_llava
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from conftest import ID2LABEL, OFFICIAL_TINY, TINY_CONFIG, pretrained_tiny_model, tiny_transformer
    from uniflow_hf import (
        UniFlowClassConditionalPipeline,
        UniFlowConfig,
        UniFlowFlowMatchScheduler,
        UniFlowForImageClassification,
        UniFlowImageProcessor,
        UniFlowModel,
        UniFlowReconstructionPipeline,
        UniFlowVisionModel,
    )
    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import convert
    from uniflow_hf.conversion_scripts.graft_uniflow_into_llava import graft_uniflow_into_llava

    root = tmp_path_factory.mktemp("remote_code")
    folders = {
        name: root / name
        for name in ("tokenizer", "tower", "classifier", "converted", "llava", "generation", "reconstruction")
    }
    pixel_values, noise, image = remote_inputs()
    tokenizer = pretrained_tiny_model().eval()
    tokenizer.save_pretrained(folders["tokenizer"])
    processor = UniFlowImageProcessor.from_image_size(IMAGE_SIZE)
    processor.save_pretrained(folders["tokenizer"])
    torch.manual_seed(3)
    tower = UniFlowVisionModel(UniFlowConfig(**TINY_CONFIG)).eval()
    tower.save_pretrained(folders["tower"])
    processor.save_pretrained(folders["tower"])
    classifier = UniFlowForImageClassification(UniFlowConfig(**TINY_CONFIG, num_labels=3)).eval()
    classifier.save_pretrained(folders["classifier"])
    convert(OFFICIAL_TINY, folders["converted"])  # the official release's fixture
    converted = UniFlowModel.from_pretrained(folders["converted"]).eval()
    clip_llava = save_clip_llava(root / "clip_llava", build_tokenizer())
    graft_uniflow_into_llava(clip_llava, folders["tokenizer"], folders["llava"])
    llava = LlavaForConditionalGeneration.from_pretrained(folders["llava"]).eval()
    generation = UniFlowClassConditionalPipeline(
        transformer=tiny_transformer(tokenizer.config), scheduler=UniFlowFlowMatchScheduler(), tokenizer=tokenizer,
        id2label=ID2LABEL,  # no image processor, as train-generator saves it: the default one is used
    )
    generation.save_pretrained(folders["generation"])
    reconstruction = UniFlowReconstructionPipeline(tokenizer, image_processor=processor)
    reconstruction.save_pretrained(folders["reconstruction"])

    encoder = UniFlowVisionModel.from_pretrained(folders["tokenizer"]).eval()
    expected = {f"tokenizer.{name}": value for name, value in tokenizer_outputs(tokenizer, pixel_values, noise).items()}
    with torch.no_grad():
        expected["tokenizer.tower_tower"] = tower(pixel_values).last_hidden_state
        expected["tokenizer.tokenizer_tower"] = encoder(pixel_values).last_hidden_state
        expected["classifier.logits"] = classifier(pixel_values).logits
        processed = processor(image, return_tensors="pt")["pixel_values"]
        expected["feature_extraction"] = encoder(processed).last_hidden_state
    expected.update({f"converted.{k}": v for k, v in tokenizer_outputs(converted, pixel_values, noise).items()})
    llava_processor = AutoProcessor.from_pretrained(folders["llava"])
    expected.update({f"llava.{k}": v for k, v in llava_outputs(llava, llava_processor, image).items()})
    expected.update(diffusers_pipeline_outputs(generation, reconstruction, image))
    folders["expected"] = root / "expected.safetensors"
    save_file({name: value.contiguous() for name, value in expected.items()}, str(folders["expected"]))
    return {name: str(path) for name, path in folders.items()}


def test_folders_load_without_the_package(remote_code_folders, tmp_path):
    folders_file = tmp_path / "folders.json"
    folders_file.write_text(json.dumps(remote_code_folders))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, __file__, str(folders_file)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for check in REMOTE_CODE_CHECKS:
        assert f"{check.__name__}: ok" in result.stdout
    # Each folder holds the code it loads with, and that code imports nothing of the package.
    for name in ("tokenizer", "tower", "classifier", "converted", "llava"):
        code = {path.name: path.read_text() for path in Path(remote_code_folders[name]).glob("*.py")}
        assert {"configuration_uniflow.py", "modeling_uniflow.py"} <= set(code), name
        foreign = re.compile(r"^\s*(from|import)\s+(uniflow_hf|diffusers|peft|accelerate)\b", re.MULTILINE)
        assert not [file for file, text in code.items() if foreign.search(text)], name
    package = re.compile(r"^\s*(from|import)\s+uniflow_hf\b", re.MULTILINE)
    for name in ("generation", "reconstruction"):
        folder = Path(remote_code_folders[name])
        code = {path.relative_to(folder).as_posix(): path.read_text() for path in folder.rglob("*.py")}
        assert {"tokenizer/configuration_uniflow.py", "tokenizer/modeling_uniflow.py"} <= set(code), name
        assert any(path.startswith("pipeline_uniflow_") and "/" not in path for path in code), name
        assert not [path for path, text in code.items() if package.search(text)], name


def test_folders_load_natively_with_the_package(remote_code_folders):
    """The package's classes, through the same Auto classes, without `trust_remote_code`."""
    from safetensors.torch import load_file
    from transformers import (
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForImageToImage,
        AutoProcessor,
        LlavaForConditionalGeneration,
        pipeline,
    )

    import uniflow_hf

    for name in ("tower", "tokenizer"):
        assert type(AutoModel.from_pretrained(remote_code_folders[name])) is uniflow_hf.UniFlowVisionModel
    classifier = AutoModelForImageClassification.from_pretrained(remote_code_folders["classifier"])
    assert type(classifier) is uniflow_hf.UniFlowForImageClassification
    for name in ("tokenizer", "converted"):
        assert type(AutoModelForImageToImage.from_pretrained(remote_code_folders[name])) is uniflow_hf.UniFlowModel
    llava = LlavaForConditionalGeneration.from_pretrained(remote_code_folders["llava"])
    assert type(llava.model.vision_tower) is uniflow_hf.UniFlowVisionModel
    processor = AutoProcessor.from_pretrained(remote_code_folders["llava"])
    assert type(processor.image_processor) is uniflow_hf.UniFlowImageProcessor
    expected = load_file(remote_code_folders["expected"])
    for folder in (remote_code_folders["tokenizer"], f"{remote_code_folders['generation']}/tokenizer"):
        extractor = pipeline("image-feature-extraction", model=folder)
        features = extractor(remote_inputs()[2], return_tensors=True)
        torch.testing.assert_close(features, expected["feature_extraction"], rtol=0, atol=1e-6)
    from diffusers import DiffusionPipeline

    for name, pipeline_class in (("generation", uniflow_hf.UniFlowClassConditionalPipeline),
                                 ("reconstruction", uniflow_hf.UniFlowReconstructionPipeline)):
        loaded = DiffusionPipeline.from_pretrained(remote_code_folders[name])
        assert type(loaded) is pipeline_class and type(loaded.tokenizer) is uniflow_hf.UniFlowModel


if __name__ == "__main__":
    sys.meta_path.insert(0, blocked_package_import_hook())
    try:
        import uniflow_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("uniflow_hf could be imported: the import hook does not work.")
    run_remote_code_checks(sys.argv[1])
