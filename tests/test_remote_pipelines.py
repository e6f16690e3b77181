"""Saved pipelines load where `uniflow_hf` cannot be imported: `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` runs the code saved in the folder (diffusers' custom pipelines and components) and gives the
package's images for the same seed; the `image-feature-extraction` pipeline runs on a saved pipeline's `tokenizer/`."""

import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from transformers import pipeline as transformers_pipeline

from conftest import random_images


# Run in a fresh interpreter with an import hook that makes `uniflow_hf` unimportable.
REMOTE_SCRIPT = """
import json, sys

class BlockUniFlowHF:
    def find_spec(self, name, path=None, target=None):
        if name == "uniflow_hf" or name.startswith("uniflow_hf."):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, BlockUniFlowHF())
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from transformers import pipeline

folder, images_path, outputs_path = sys.argv[1:]
images = [Image.open(path) for path in json.loads(open(images_path).read())]
outputs, classes = {}, {}
generation = DiffusionPipeline.from_pretrained(f"{folder}/class_conditional", trust_remote_code=True)
generation.set_progress_bar_config(disable=True)
outputs["generation"] = generation(
    ["stripes", 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt"
).images
reconstruction = DiffusionPipeline.from_pretrained(f"{folder}/reconstruction", trust_remote_code=True)
reconstruction.set_progress_bar_config(disable=True)
outputs["reconstruction"] = reconstruction(images, generator=torch.manual_seed(0), output_type="pt").images
classes = {name: type(component).__module__ for name, component in generation.components.items()}
try:
    extractor = pipeline("image-feature-extraction", model=f"{folder}/class_conditional/tokenizer", trust_remote_code=True)
    outputs["features"] = extractor(images[0], return_tensors=True)
    feature_error = None
except Exception as error:
    feature_error = f"{type(error).__name__}: {error}"
torch.save(outputs, outputs_path)
blocked = sorted(name for name in sys.modules if name.startswith("uniflow_hf"))
print(json.dumps({"classes": classes, "feature_error": feature_error, "uniflow_hf_modules": blocked}))
"""


def test_saved_pipelines_load_without_the_package(class_conditional_pipeline, reconstruction_pipeline, tmp_path):
    for name, pipeline in (("class_conditional", class_conditional_pipeline), ("reconstruction", reconstruction_pipeline)):
        pipeline.image_processor = pipeline.processor
        pipeline.save_pretrained(tmp_path / name)
    image_paths = []
    for index, image in enumerate(random_images(2)):
        image_paths.append(str(tmp_path / f"image{index}.png"))
        Image.fromarray(image).save(image_paths[-1])
    (tmp_path / "images.json").write_text(json.dumps(image_paths))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path), str(tmp_path / "images.json"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = torch.load(tmp_path / "out.pt")
    assert report["uniflow_hf_modules"] == []
    assert report["classes"]["tokenizer"] == "diffusers_modules.local.modeling_uniflow"
    assert report["classes"]["scheduler"] == "diffusers_modules.local.scheduling_uniflow_flow_match"

    # the same folders loaded by the package (float32): the same images for the same seed
    generation = DiffusionPipeline.from_pretrained(tmp_path / "class_conditional", dtype=torch.float32)
    generation.set_progress_bar_config(disable=True)
    expected = generation(["stripes", 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt")
    torch.testing.assert_close(outputs["generation"], expected.images, atol=1e-6, rtol=0)
    reconstruction = DiffusionPipeline.from_pretrained(tmp_path / "reconstruction", dtype=torch.float32)
    reconstruction.set_progress_bar_config(disable=True)
    images = [Image.open(path) for path in image_paths]
    expected = reconstruction(images, generator=torch.manual_seed(0), output_type="pt").images
    torch.testing.assert_close(outputs["reconstruction"], expected, atol=1e-6, rtol=0)

    features = transformers_pipeline("image-feature-extraction", model=str(tmp_path / "class_conditional" / "tokenizer"))
    expected = features(images[0], return_tensors=True)
    if report["feature_error"] is not None:
        # The tokenizer's config.json gets its `auto_map` from the transformers side's registration (issue 44 item 1).
        assert "auto_map" not in json.loads((tmp_path / "class_conditional" / "tokenizer" / "config.json").read_text())
        pytest.xfail(f"image-feature-extraction without the package: {report['feature_error'][:300]}")
    torch.testing.assert_close(outputs["features"], expected, atol=1e-6, rtol=0)
