"""Core: the official release loads natively and computes exactly what the official code computes."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from uniflow_hf import UniFlowConfig, UniFlowModel, UniFlowVisionModel
from uniflow_hf.modeling import OFFICIAL_TO_HF_KEY_MAPPING, patchify, unpatchify

from conftest import FIXTURES, SHARED_FIXTURES, TINY_CONFIG


TOL = 1e-4
DECODE_CASES = {
    "reconstruction.steps1.linear": (1, "linear"),
    "reconstruction.steps4.linear": (4, "linear"),
    "reconstruction.steps4.pow_0.25": (4, "pow_0.25"),
}


def test_fixtures_match_the_shared_ones():
    """The ground truth in tests/fixtures/official is, file for file and byte for byte, the project's shared fixtures
    (compared where those lie beside the repository, as in CI)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"no shared fixtures at {SHARED_FIXTURES} to compare the copy with")

    def files(root):
        return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}

    copy, shared = files(FIXTURES), files(SHARED_FIXTURES)
    assert sorted(copy) == sorted(shared)
    assert [name for name in shared if copy[name] != shared[name]] == []


@pytest.fixture(scope="module")
def fixture_tensors():
    inputs = load_file(FIXTURES / "official_uniflow_tiny" / "inputs.safetensors")
    expected = load_file(FIXTURES / "official_uniflow_tiny" / "expected.safetensors")
    inputs["noise"] = inputs["noise"].reshape(2, 16, -1)
    return inputs, expected


def assert_close(actual, expected, name):
    error = (actual - expected).abs().max().item()
    assert error <= TOL, f"{name}: max abs error {error:.2e} > {TOL}"


def check_against_official(model, tower, inputs, expected):
    pixel_values, noise = inputs["pixel_values"], inputs["noise"]
    with torch.no_grad():
        hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
        assert len(hidden_states) == 4
        for i, state in enumerate(hidden_states):
            assert_close(state, expected[f"encoder_hidden_states.{i}"], f"hidden state {i}")
        latents = model.encode(pixel_values)
        assert_close(latents, expected["latent_tokens"], "latents")
        condition = model.decoder_condition(latents, (4, 4))
        assert_close(condition, expected["decoder_condition"], "decoder condition")
        flat_noise, flat_condition = noise.reshape(32, -1), condition.reshape(32, -1)
        for t in ("0", "0.5"):
            velocity = model.flow_head(flat_noise, torch.full((32,), 1000 * float(t)), flat_condition)
            assert_close(velocity, expected[f"velocity_t{t}"], f"velocity at t={t}")
        for name, (steps, schedule) in DECODE_CASES.items():
            model.config.sampling_schedule = schedule  # the decoder's schedule has one owner: the config
            image = model.decode(latents, noise=noise, num_inference_steps=steps)
            assert_close(image, expected[name], name)
        model.config.sampling_schedule = "linear"
        assert_close(model.reconstruct(pixel_values, noise=noise), expected["forward"], "forward")
        assert_close(model.eval()(pixel_values, noise=noise).reconstruction, expected["forward"], "forward()")


def test_official_folder_loads_with_exact_parity(official_tiny_dir, fixture_tensors):
    model = UniFlowModel.from_pretrained(official_tiny_dir).eval()
    tower = UniFlowVisionModel.from_pretrained(official_tiny_dir).eval()
    assert model.config.latent_channels == 8 and model.config.num_sampling_steps == 1
    check_against_official(model, tower, *fixture_tensors)


def test_saved_folder_uses_our_names_and_keeps_parity(official_tiny_dir, fixture_tensors, tmp_path):
    UniFlowModel.from_pretrained(official_tiny_dir).save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "latent_proj.fc1.weight" in keys and "flow_head.res_blocks.0.modulation.weight" in keys
    assert not any(k.startswith(("chal_", "flow_head.net.")) or "pos_embed" in k for k in keys)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "uniflow"
    # The official release's auto_map (its remote code) is replaced by ours, to the code saved beside the weights.
    assert config["auto_map"] == {
        "AutoConfig": "configuration_uniflow.UniFlowConfig",
        "AutoModel": "modeling_uniflow.UniFlowVisionModel",
        "AutoModelForImageToImage": "modeling_uniflow.UniFlowModel",
    }
    model = UniFlowModel.from_pretrained(tmp_path).eval()
    tower = UniFlowVisionModel.from_pretrained(tmp_path).eval()  # the tower reads a full-model folder too
    check_against_official(model, tower, *fixture_tensors)


def test_converter_script_with_verify(official_tiny_dir, fixture_tensors, tmp_path, capsys):
    # A bf16, sharded official folder, as the release ships it.
    source = tmp_path / "official"
    source.mkdir()
    (source / "config.json").write_text((official_tiny_dir / "config.json").read_text())
    state = load_file(official_tiny_dir / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({k: state[k].to(torch.bfloat16) for k in shard_names}, source / shard)
        weight_map.update({k: shard for k in shard_names})
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    output = tmp_path / "converted"
    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import main as convert_main

    # in this process (the script's `main`; a fresh interpreter would cost ~10 s of imports)
    assert convert_main(["--input", str(source), "--output", str(output), "--dtype", "float32", "--verify"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    model = UniFlowModel.from_pretrained(output)
    assert model.dtype == torch.float32
    # bf16 weights: compare against the official fp32 numbers with a bf16-sized tolerance
    with torch.no_grad():
        latents = model.encode(fixture_tensors[0]["pixel_values"])
    assert (latents - fixture_tensors[1]["latent_tokens"]).abs().max() < 0.1

    # fp32 official folder through the converter: exact parity
    exact = tmp_path / "exact"
    result = subprocess.run(
        [sys.executable, "-m", "uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf",
         "--input", str(official_tiny_dir), "--output", str(exact), "--verify"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    check_against_official(UniFlowModel.from_pretrained(exact).eval(), UniFlowVisionModel.from_pretrained(exact).eval(), *fixture_tensors)


def test_release_config_has_exactly_the_official_parameters():
    config = UniFlowConfig.from_json_file(FIXTURES / "official_release_config.json")
    official = json.loads((FIXTURES / "official_release_keys.json").read_text())
    with torch.device("meta"):
        model = UniFlowModel(config)
    ours = {name: list(p.shape) for name, p in model.named_parameters()}
    import re

    mapped = {}
    for name, shape in official.items():
        for pattern, replacement in OFFICIAL_TO_HF_KEY_MAPPING.items():
            name = re.sub(pattern, replacement, name)
        mapped[name] = shape
    assert len(official) == 530
    assert set(ours) == set(mapped), (set(ours) ^ set(mapped))
    assert all(ours[name] == mapped[name] for name in ours)
    assert sum(p.numel() for p in model.parameters()) == 452_586_124
    assert sum(p.numel() for p in model.vision_model.parameters()) == 304_012_288


def test_config_reads_official_json_unchanged():
    config = UniFlowConfig.from_json_file(FIXTURES / "official_release_config.json")
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (448, 14, 1024, 24)
    assert (config.latent_channels, config.num_global_blocks, config.num_flow_head_blocks) == (64, 6, 12)
    assert config.num_sampling_steps == 1 and isinstance(config.num_sampling_steps, int)
    assert not hasattr(config, "auto_map") or not config.auto_map
    roundtrip = UniFlowConfig.from_dict(config.to_dict())
    assert roundtrip.to_dict() == config.to_dict()


def test_auto_classes_after_import(official_tiny_dir):
    from transformers import AutoConfig, AutoModel

    assert isinstance(AutoConfig.from_pretrained(official_tiny_dir), UniFlowConfig)
    assert isinstance(AutoModel.from_pretrained(official_tiny_dir), UniFlowVisionModel)


def test_installed_namespace_imports(tmp_path):
    code = (
        "import uniflow_hf.modeling as m, uniflow_hf.pipelines as p, uniflow_hf.conversion_scripts as c\n"
        "from uniflow_hf.modeling import UniFlowModel\n"
        "from uniflow_hf.pipelines import UniFlowFlowMatchScheduler\n"
        "assert m.__name__ == 'uniflow_hf.modeling' and p.__name__ == 'uniflow_hf.pipelines'\n"
        "assert UniFlowModel.__module__ == 'uniflow_hf.modeling.modeling_uniflow'\n"
        "print(m.__file__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("__init__.py")


@pytest.mark.parametrize("height,width", [(32, 32), (48, 32), (24, 40), (64, 64)])
def test_any_resolution(tiny_model, height, width):
    pixel_values = torch.randn(2, 3, height, width)
    latents = tiny_model.encode(pixel_values)
    assert latents.shape == (2, (height // 8) * (width // 8), 8)
    image = tiny_model.reconstruct(pixel_values, generator=torch.Generator().manual_seed(0))
    assert image.shape == pixel_values.shape and torch.isfinite(image).all()
    hidden = tiny_model.vision_model(pixel_values, output_hidden_states=True).hidden_states
    assert hidden[0].shape == (2, 1 + (height // 8) * (width // 8), 64)


def test_decoder_position_embeddings_are_interpolated_not_truncated(tiny_model):
    """The release slices its 32x32 decoder position table; we resize it to the actual grid."""
    from uniflow_hf.modeling.modeling_uniflow import resize_position_embedding

    global_pos = resize_position_embedding(tiny_model.global_position_embedding, (8, 8))
    assert global_pos.shape == (1, 64, 64)
    native_global = resize_position_embedding(tiny_model.global_position_embedding, (4, 4))
    assert native_global is tiny_model.global_position_embedding
    # an upsampled grid of a smooth sin-cos table stays close to the table at the corners
    assert torch.allclose(global_pos[0, 0], native_global[0, 0], atol=0.5)


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 24)
    patches = patchify(x, 8)
    assert patches.shape == (2, 6, 192)
    assert torch.equal(patches[0, 1], x[0, :, 0:8, 8:16].reshape(-1))  # (channel, row, col) order, row-major tokens
    assert torch.equal(unpatchify(patches, 8, (2, 3)), x)


def test_generator_seeding_and_noise(tiny_model):
    pixel_values = torch.randn(1, 3, 32, 32)
    a = tiny_model.reconstruct(pixel_values, generator=torch.Generator().manual_seed(1), num_inference_steps=2)
    b = tiny_model.reconstruct(pixel_values, generator=torch.Generator().manual_seed(1), num_inference_steps=2)
    c = tiny_model.reconstruct(pixel_values, generator=torch.Generator().manual_seed(2), num_inference_steps=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeds_exact_timesteps(tiny_model, dtype):
    """bf16 holds 1000·t only to a multiple of 4 near t = 1 (666.67 -> 668): the flow head's timestep embedding
    must get the float32 times, in decoding and in the training loss, whatever the model's dtype."""
    from uniflow_hf import UniFlowFlowMatchScheduler

    model = tiny_model.to(dtype)
    seen = []
    model.flow_head.time_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.decode(torch.randn(1, 16, 8, dtype=dtype), num_inference_steps=3, generator=torch.manual_seed(0))
    scheduler = UniFlowFlowMatchScheduler(schedule=model.config.sampling_schedule)
    scheduler.set_timesteps(3)
    assert {t.dtype for t in seen} == {torch.float32}
    assert torch.equal(torch.cat(seen), scheduler.timesteps)

    seen.clear()
    timesteps = torch.tensor([937.5, 666.7])
    model(torch.randn(2, 3, 32, 32), timesteps=timesteps, return_loss=True)
    assert seen[0].dtype == torch.float32
    assert torch.equal(seen[0], timesteps.repeat_interleave(16))


def test_init_weights_match_official_initialisation(tiny_config):
    torch.manual_seed(0)
    model = UniFlowModel(tiny_config)
    head = model.flow_head
    for block in head.res_blocks:
        assert torch.count_nonzero(block.modulation.weight) == 0 and torch.count_nonzero(block.modulation.bias) == 0
    assert torch.count_nonzero(head.final_layer.linear.weight) == 0
    assert torch.count_nonzero(head.final_layer.modulation.weight) == 0
    # zero-initialised output: the untrained flow head predicts zero velocity
    assert torch.count_nonzero(head(torch.randn(4, 192), torch.zeros(4), torch.randn(4, 64))) == 0
    from uniflow_hf.modeling.modeling_uniflow import sincos_position_embedding

    assert torch.equal(model.decoder_position_embedding[0], sincos_position_embedding(64, 4))
    assert torch.all(model.vision_model.encoder.layers[0].ls1 == tiny_config.initializer_factor)
    assert model.latent_proj.fc1.weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_attention_implementations_agree(tiny_config):
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32)
    eager = UniFlowModel._from_config(tiny_config, attn_implementation="eager").eval()
    sdpa = UniFlowModel._from_config(tiny_config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        assert torch.allclose(eager.encode(pixel_values), sdpa.encode(pixel_values), atol=1e-5)


def test_gradient_checkpointing_same_gradients(tiny_config):
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32)
    noise = torch.randn(32, 192)
    timesteps = torch.rand(32) * 1000
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = UniFlowModel(tiny_config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(pixel_values, noise=noise, timesteps=timesteps).loss.backward()
        grads.append(model.vision_model.encoder.layers[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rms_norm_and_qk_norm_variant():
    config = UniFlowConfig(**{**TINY_CONFIG, "norm_type": "rms_norm", "qk_normalization": True})
    model = UniFlowModel(config).eval()
    assert hasattr(model.vision_model.encoder.layers[0].attn, "q_norm")
    assert model.encode(torch.randn(1, 3, 32, 32)).shape == (1, 16, 8)


# ------------------------------------------------------------------------------------------------- bad input
def test_wrong_channel_count(tiny_model):
    with pytest.raises(ValueError, match="has 1 channels but the model expects 3"):
        tiny_model.encode(torch.randn(1, 1, 32, 32))


def test_side_not_divisible_by_patch(tiny_model):
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        tiny_model.encode(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels(tiny_model, bad):
    pixel_values = torch.randn(1, 3, 32, 32)
    pixel_values[0, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny_model.encode(pixel_values)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny_model.vision_model(pixel_values)


def test_wrong_latent_shape(tiny_model):
    with pytest.raises(ValueError, match=r"latents` must have shape \(batch, tokens, 8\)"):
        tiny_model.decode(torch.randn(1, 16, 5))
    with pytest.raises(ValueError, match="not a square grid"):
        tiny_model.decode(torch.randn(1, 12, 8))
    assert tiny_model.decode(torch.randn(1, 12, 8), height=24, width=32).shape == (1, 3, 24, 32)


def test_folder_whose_weights_do_not_match_its_config(official_tiny_dir, tmp_path):
    config = json.loads((official_tiny_dir / "config.json").read_text())
    config["num_hidden_layers"] = 4  # one more layer than the weights hold
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(official_tiny_dir / "model.safetensors")
    with pytest.raises(ValueError, match="does not hold weights for .* parameters"):
        UniFlowModel.from_pretrained(tmp_path)
    config["num_hidden_layers"] = 3
    config["hidden_size"] = config["vit_hidden_size"] = 32  # wrong shapes everywhere
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="(?i)size|shape"):
        UniFlowModel.from_pretrained(tmp_path)


def test_bad_config_values():
    with pytest.raises(ValueError, match="Unknown sampling schedule"):
        UniFlowConfig(sampling_schedule="cosine")
    with pytest.raises(ValueError, match="must equal `hidden_size`"):
        UniFlowConfig(hidden_size=64, vit_hidden_size=128, num_attention_heads=4, global_num_attention_heads=4)
    with pytest.raises(ValueError, match="use_chal_proj"):
        UniFlowConfig(use_chal_proj=False)
