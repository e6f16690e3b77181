"""Model cards (`uniflow_hf.model_card`): saved and converted folders get a README.md with Hugging Face YAML metadata
and the facts of the config saved when they have none, keep the one they have, and load as before; `push_to_hub`
uploads that card."""

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_CONFIG

from uniflow_hf.model_card import hub_repo_id


def read_card(path):
    """(YAML metadata, text) of a README.md, parsed independently of huggingface_hub."""
    text = path.read_text()
    assert text.startswith("---\n")
    metadata, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(metadata), body


def test_model_save_writes_a_card_and_round_trips(tiny_model, tmp_path):
    from huggingface_hub import ModelCard

    from uniflow_hf import UniFlowModel

    for folder in (tmp_path / "new", tmp_path / "existing"):  # renamed staging folder / files moved into a folder
        if folder.name == "existing":
            folder.mkdir()
            (folder / "notes.txt").write_text("kept")
        tiny_model.save_pretrained(folder)
        metadata, body = read_card(folder / "README.md")
        assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "transformers"
        assert metadata["pipeline_tag"] == "image-to-image"
        assert {"uniflow", "image-tokenizer"} <= set(metadata["tags"]) and "base_model" not in metadata
        assert body.startswith("\n# UniFlowModel\n") and "UniFlowModel.from_pretrained" in body
        assert ModelCard.load(folder / "README.md").data.library_name == "transformers"
        assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging left
    assert (tmp_path / "existing" / "notes.txt").read_text() == "kept"
    loaded = UniFlowModel.from_pretrained(tmp_path / "new").eval()
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(pixel_values), tiny_model.encode(pixel_values), rtol=0, atol=0)


def test_an_existing_card_is_kept(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("my own card\n")
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card\n"


def test_card_names_the_head_and_a_hub_base_model(tiny_config, tmp_path):
    from uniflow_hf import UniFlowForImageClassification

    model = UniFlowForImageClassification(tiny_config)
    model.name_or_path = "some-org/uniflow-base"
    model.save_pretrained(tmp_path)
    metadata, _ = read_card(tmp_path / "README.md")
    assert metadata["pipeline_tag"] == "image-classification" and metadata["base_model"] == "some-org/uniflow-base"


def test_card_states_the_saved_config(tmp_path):
    """A tokenizer with 8 latent channels is described with 8, and the card says how to load it without uniflow-hf."""
    from uniflow_hf import UniFlowConfig, UniFlowModel, UniFlowVisionModel

    config = UniFlowConfig(**{**TINY_CONFIG, "latent_channels": 8, "num_global_blocks": 1, "num_sampling_steps": 3})
    UniFlowModel(config).save_pretrained(tmp_path / "tokenizer")
    metadata, body = read_card(tmp_path / "tokenizer" / "README.md")
    assert "a latent of 8 channels per patch" in body and not re.search(r"64[ -]channel", body)
    assert "1 global blocks" in body and "`num_sampling_steps=3`" in body and "32x32 3-channel images in 8x8" in body
    assert 'AutoModelForImageToImage.from_pretrained("path/to/this/folder", trust_remote_code=True)' in body
    UniFlowVisionModel(config, add_latent_head=True).save_pretrained(tmp_path / "tower")
    metadata, body = read_card(tmp_path / "tower" / "README.md")
    assert metadata["pipeline_tag"] == "image-feature-extraction" and "latents (8 channels per patch)" in body


def test_push_to_hub_uploads_our_card(tiny_model, monkeypatch):
    """`push_to_hub` puts transformers' generic card into the folder it uploads; ours is what is sent."""
    from unittest import mock

    from huggingface_hub import ModelCard
    from huggingface_hub.errors import EntryNotFoundError
    from transformers.utils import hub

    sent = {}

    def upload(self, working_dir, repo_id, *args, **kwargs):
        sent["README.md"] = (Path(working_dir) / "README.md").read_text()

    def no_card_on_the_hub(*args, **kwargs):
        raise EntryNotFoundError("no README.md")

    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", upload)
    monkeypatch.setattr(ModelCard, "load", no_card_on_the_hub)
    api = mock.Mock()
    api.create_repo.return_value.repo_id = "someone/uniflow-tiny"
    monkeypatch.setattr(hub, "hf_api", lambda: api)
    tiny_model.push_to_hub("someone/uniflow-tiny")
    assert "This is the model card of a" not in sent["README.md"]
    assert "a latent of 8 channels per patch" in sent["README.md"]
    assert 'AutoModelForImageToImage.from_pretrained("someone/uniflow-tiny", trust_remote_code=True)' in sent["README.md"]


def test_hub_repo_id_accepts_only_hub_names(tmp_path):
    assert hub_repo_id("owner/name") == "owner/name"
    (tmp_path / "owner").mkdir()
    assert hub_repo_id(tmp_path / "owner") is None
    assert hub_repo_id("a/b/c") is None and hub_repo_id("") is None and hub_repo_id(None) is None


def test_pipeline_save_writes_one_card_and_round_trips(class_conditional_pipeline, tmp_path):
    from diffusers import DiffusionPipeline

    class_conditional_pipeline.save_pretrained(tmp_path)
    metadata, body = read_card(tmp_path / "README.md")
    assert metadata["library_name"] == "diffusers" and metadata["license"] == "apache-2.0"
    assert "pipeline_tag" not in metadata and "class-conditional" in metadata["tags"]  # not "unconditional"
    assert "DiffusionPipeline.from_pretrained" in body
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("README.md")) == ["README.md"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    expected = class_conditional_pipeline([0, 1], generator=torch.manual_seed(0), output_type="pt").images
    actual = loaded([0, 1], generator=torch.manual_seed(0), output_type="pt").images
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_reconstruction_pipeline_card(reconstruction_pipeline, tmp_path):
    reconstruction_pipeline.save_pretrained(tmp_path)
    metadata, _ = read_card(tmp_path / "README.md")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-to-image"


def test_shipped_model_card_survives_a_save_into_its_folder(tmp_path):
    import uniflow_hf
    from diffusers import DiffusionPipeline

    folder = tmp_path / "uniflow-fmnist"
    shutil.copytree(uniflow_hf.FMNIST_MODEL_PATH, folder)
    original = (folder / "README.md").read_text()
    DiffusionPipeline.from_pretrained(folder).save_pretrained(folder)
    assert (folder / "README.md").read_text() == original
    assert not (folder / "tokenizer" / "README.md").exists()


def test_converter_writes_a_card(official_tiny_dir, tmp_path):
    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import convert

    convert(official_tiny_dir, tmp_path / "converted")
    metadata, _ = read_card(tmp_path / "converted" / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-to-image"


@pytest.mark.parametrize("missing", ["title", "library_name"])
def test_card_from_arguments_needs_them(tmp_path, missing):
    from uniflow_hf.model_card import save_model_card

    arguments = dict(title="T", description="d", library_name="transformers", pipeline_tag="image-text-to-text")
    del arguments[missing]
    with pytest.raises(TypeError, match=missing):
        save_model_card(tmp_path, **arguments)
