"""Accelerate placement for every entry point: `encode`, `decode`, `reconstruct` and `forward` of the tokenizer, both
pipelines and the LLaVA tower give the in-memory results under `device_map` CPU/disk offload, `accelerate.cpu_offload`
and the pipelines' `enable_model_cpu_offload` / `enable_sequential_cpu_offload`, and the offload hooks of the
tokenizer fire (the pipelines reach it through `encode`/`decode`, not `forward`)."""

import copy

import pytest
import torch
from accelerate import cpu_offload

from conftest import TINY_CONFIG, pretrained_tiny_model


# The tiny model holds ~1.3 MB of float32 weights: this budget keeps the position embeddings and the first
# encoder layers in memory and sends the rest to disk.
SMALL_MAX_MEMORY = {"cpu": "600KB"}


def tokenizer_outputs(model) -> dict[str, torch.Tensor]:
    """Every entry point of the tokenizer on fixed inputs and seeds, square and non-square."""
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = model.encode(pixel_values)
    return {
        "latents": latents,
        "decode": model.decode(latents, num_inference_steps=3, generator=torch.Generator().manual_seed(1)),
        "reconstruct": model.reconstruct(
            pixel_values, num_inference_steps=2, generator=torch.Generator().manual_seed(2)
        ),
        "reconstruct_24x32": model.reconstruct(pixel_values[..., 4:28, :], generator=torch.Generator().manual_seed(3)),
        "forward": model(pixel_values, generator=torch.Generator().manual_seed(4)).reconstruction,
    }


def assert_same_outputs(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].device == value.device, name
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    pretrained_tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def in_memory_outputs():
    return tokenizer_outputs(pretrained_tiny_model().eval())


# ------------------------------------------------------------------------------------------------ the tokenizer
@pytest.mark.parametrize(
    "device_map, max_memory, devices",
    [({"": "disk"}, None, {"disk"}), ("auto", SMALL_MAX_MEMORY, {"cpu", "disk"})],
    ids=["all-on-disk", "auto-cpu-and-disk"],
)
def test_device_map_offload_gives_the_in_memory_outputs(
    tokenizer_dir, in_memory_outputs, tmp_path, device_map, max_memory, devices
):
    from uniflow_hf import UniFlowModel

    model = UniFlowModel.from_pretrained(
        tokenizer_dir, device_map=device_map, max_memory=max_memory, offload_folder=tmp_path / "offload"
    )
    assert set(model.hf_device_map.values()) == devices
    # parameters offloaded to disk are held by the offload hooks; the module holds them on the meta device
    place = model.hf_device_map.get("global_position_embedding", model.hf_device_map.get(""))
    device_type = "meta" if place == "disk" else "cpu"
    assert model.global_position_embedding.device.type == device_type
    assert_same_outputs(tokenizer_outputs(model), in_memory_outputs)
    assert model.global_position_embedding.device.type == device_type  # offloaded again after use


def test_accelerate_cpu_offload_gives_the_in_memory_outputs(in_memory_outputs):
    model = pretrained_tiny_model().eval()
    cpu_offload(model, torch.device("cpu"))
    assert model.decoder_position_embedding.device.type == "meta"
    assert_same_outputs(tokenizer_outputs(model), in_memory_outputs)


# ------------------------------------------------------------------------------------------------- the pipelines
def count_calls(hook) -> list:
    """Record every `pre_forward` of an Accelerate hook (the hook that places the model before it runs)."""
    calls = []
    pre_forward = hook.pre_forward

    def counted(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return pre_forward(module, *args, **kwargs)

    hook.pre_forward = counted
    return calls


def generate(pipeline):
    return pipeline(
        ["circle", "stripes"], num_inference_steps=3, decoder_num_inference_steps=2, output_type="pt",
        generator=[torch.Generator().manual_seed(seed) for seed in (0, 1)],
    ).images  # fmt: skip


def reconstruct(pipeline):
    from conftest import random_images

    return pipeline(random_images(2), num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images


@pytest.mark.parametrize("pipeline_name", ["class_conditional_pipeline", "autoguided_pipeline"])
def test_model_cpu_offload_places_the_tokenizer_in_generation(request, pipeline_name):
    pipeline = request.getfixturevalue(pipeline_name)
    expected = generate(pipeline)
    pipeline.enable_model_cpu_offload(device="cpu")
    for _ in range(2):  # the pipeline re-arms the offload hooks (new ones) at the end of each call
        tokenizer_calls = count_calls(pipeline.tokenizer._hf_hook)
        transformer_calls = count_calls(pipeline.transformer._hf_hook)
        torch.testing.assert_close(generate(pipeline), expected, rtol=0, atol=0)
        assert tokenizer_calls == ["UniFlowModel"]  # the decode
        assert len(transformer_calls) == 3


def test_model_cpu_offload_places_the_tokenizer_in_reconstruction(reconstruction_pipeline):
    expected = reconstruct(reconstruction_pipeline)
    reconstruction_pipeline.enable_model_cpu_offload(device="cpu")
    calls = count_calls(reconstruction_pipeline.tokenizer._hf_hook)
    torch.testing.assert_close(reconstruct(reconstruction_pipeline), expected, rtol=0, atol=0)
    assert calls == ["UniFlowModel", "UniFlowModel"]  # encode, then decode


@pytest.mark.parametrize(
    "pipeline_name, run", [("class_conditional_pipeline", generate), ("reconstruction_pipeline", reconstruct)]
)
def test_sequential_cpu_offload_gives_the_in_memory_images(request, pipeline_name, run):
    pipeline = request.getfixturevalue(pipeline_name)
    expected = run(pipeline)
    pipeline.enable_sequential_cpu_offload(device="cpu")
    calls = count_calls(pipeline.tokenizer._hf_hook)
    torch.testing.assert_close(run(pipeline), expected, rtol=0, atol=0)
    assert calls  # the tokenizer's own parameters (the position embeddings) were placed by its hook
    assert pipeline.tokenizer.decoder_position_embedding.device.type == "meta"  # and offloaded again


# ------------------------------------------------------------------------------------------------ the LLaVA tower
IMAGE_TOKEN_ID = 39


def tiny_llava(vision_feature_source):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from uniflow_hf import UniFlowConfig

    text_config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    vision_config = UniFlowConfig(**TINY_CONFIG, vision_feature_source=vision_feature_source)
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=IMAGE_TOKEN_ID)
    return LlavaForConditionalGeneration(config).eval()


def llava_inputs():
    num_features = (TINY_CONFIG["image_size"] // TINY_CONFIG["patch_size"]) ** 2  # the CLS token is dropped
    input_ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * num_features + [6, 7]])
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {"input_ids": input_ids, "pixel_values": pixel_values}


@pytest.mark.parametrize("vision_feature_source", ["encoder", "latent"])
@pytest.mark.parametrize(
    "device_map, max_memory, devices",
    [({"": "disk"}, None, {"disk"}), ("auto", {"cpu": "400KB"}, {"cpu", "disk"})],  # the tower split over both
    ids=["all-on-disk", "auto-cpu-and-disk"],
)
def test_llava_with_the_tower_offloaded(tmp_path, vision_feature_source, device_map, max_memory, devices):
    from transformers import LlavaForConditionalGeneration

    model = tiny_llava(vision_feature_source)
    with torch.no_grad():
        expected = model(**llava_inputs()).logits
    model.save_pretrained(tmp_path / "llava")
    offloaded = LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "llava", device_map=device_map, max_memory=max_memory, offload_folder=tmp_path / "offload"
    )
    assert set(offloaded.hf_device_map.values()) == devices
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**llava_inputs()).logits, expected, rtol=0, atol=0)


def test_tower_encode_offloaded(tmp_path):
    from uniflow_hf import UniFlowVisionModel

    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tower = tiny_llava("latent").model.vision_tower
    expected_latents = tower.encode(pixel_values)
    expected_features = tower(pixel_values, output_hidden_states=True).hidden_states[-1]
    tower.save_pretrained(tmp_path / "tower")
    on_disk = UniFlowVisionModel.from_pretrained(
        tmp_path / "tower", device_map={"": "disk"}, offload_folder=tmp_path / "offload"
    )
    hooked = copy.deepcopy(tower)
    cpu_offload(hooked, torch.device("cpu"))
    for model in (on_disk, hooked):
        torch.testing.assert_close(model.encode(pixel_values), expected_latents, rtol=0, atol=0)
        features = model(pixel_values, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(features, expected_features, rtol=0, atol=0)
