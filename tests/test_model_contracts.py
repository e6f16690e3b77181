"""The contracts transformers and diffusers state for their models (issue 40), held against UniFlow's: variant saves,
attention maps, selected hidden states, tuple outputs, input embeddings, growing a model, and killed saves."""

import copy
import logging
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_CONFIG, pretrained_tiny_model

from uniflow_hf import UniFlowConfig, UniFlowModel, UniFlowVisionModel
from uniflow_hf.modeling import UniFlowForImageClassification


NUM_LAYERS = TINY_CONFIG["num_hidden_layers"]


def pixel_values(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def reconstruction_pipeline(tokenizer):
    """The reconstruction pipeline around `tokenizer` (the one place that builds it here)."""
    from uniflow_hf.pipelines import UniFlowReconstructionPipeline

    pipeline = UniFlowReconstructionPipeline(tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_tower(attn_implementation=None, **config):
    torch.manual_seed(0)
    tower = UniFlowVisionModel(UniFlowConfig(**{**TINY_CONFIG, **config})).eval()
    if attn_implementation is not None:
        tower.set_attn_implementation(attn_implementation)
    return tower


def assert_same_weights(model, expected, dtype):
    state = model.state_dict()
    assert model.dtype == dtype and state.keys() == expected.keys()
    for name, value in expected.items():
        assert state[name].dtype == dtype and torch.equal(state[name], value.to(dtype)), name


def settings(component):
    """The public settings of a component without weights (a scheduler's config, an image processor's); not the
    `auto_map` that saving adds (where its code lies)."""
    values = component.to_dict() if hasattr(component, "to_dict") else dict(component.config)
    return {key: value for key, value in values.items() if not key.startswith("_") and key != "auto_map"}


# ----------------------------------------------------------------------------------------------- variant saves
@pytest.mark.parametrize("default_first", [True, False], ids=["default-then-fp16", "fp16-then-default"])
def test_fp16_variant_saved_beside_the_default_weights(tmp_path, default_first):
    """`save_pretrained(d, variant="fp16")` writes `model.fp16.safetensors` beside `model.safetensors`; a plain
    `from_pretrained(d)` loads the fp32 weights in fp32, `from_pretrained(d, variant="fp16")` the fp16 ones in fp16."""
    model = pretrained_tiny_model()
    fp32 = {name: value.clone() for name, value in model.state_dict().items()}
    half = copy.deepcopy(model).half()
    saves = [lambda: model.save_pretrained(tmp_path), lambda: half.save_pretrained(tmp_path, variant="fp16")]
    for save in saves if default_first else saves[::-1]:
        save()

    assert {"model.safetensors", "model.fp16.safetensors"} <= {path.name for path in tmp_path.iterdir()}
    assert_same_weights(UniFlowModel.from_pretrained(tmp_path), fp32, torch.float32)
    assert_same_weights(UniFlowModel.from_pretrained(tmp_path, variant="fp16"), fp32, torch.float16)


def test_pipeline_fp16_variant_saved_beside_the_default_pipeline(tmp_path):
    """`pipe.to(torch.float16).save_pretrained(d, variant="fp16")` into the folder of the fp32 pipeline: every
    component loads back from `DiffusionPipeline.from_pretrained(d)` as the fp32 original, and with `variant="fp16"`
    as its fp16 copy."""
    from diffusers import DiffusionPipeline

    pipeline = reconstruction_pipeline(pretrained_tiny_model())
    originals = {
        name: {key: value.clone() for key, value in component.state_dict().items()}
        if isinstance(component, torch.nn.Module)
        else settings(component)
        for name, component in pipeline.components.items()
        if component is not None
    }
    assert any(isinstance(component, torch.nn.Module) for component in pipeline.components.values())
    pipeline.save_pretrained(tmp_path)
    pipeline.to(torch.float16).save_pretrained(tmp_path, variant="fp16")

    for variant, dtype in ((None, torch.float32), ("fp16", torch.float16)):
        loaded = DiffusionPipeline.from_pretrained(tmp_path, variant=variant)
        assert type(loaded) is type(pipeline) and loaded.components.keys() >= originals.keys()
        for name, original in originals.items():
            component = loaded.components[name]
            if isinstance(component, torch.nn.Module):
                assert_same_weights(component, original, dtype)
            else:
                assert settings(component) == original


# --------------------------------------------------------------------------------------------- attention maps
def test_attentions_are_the_softmax_of_scaled_query_key_products():
    """`output_attentions=True` returns one (batch, heads, tokens, tokens) map per encoder layer: softmax(q·kᵀ/√d)
    of that layer's queries and keys."""
    tower = tiny_tower("eager")
    images = pixel_values()
    with torch.no_grad():
        outputs = tower(images, output_attentions=True, output_hidden_states=True)
        assert len(outputs.attentions) == NUM_LAYERS
        for layer, layer_input, attentions in zip(tower.encoder.layers, outputs.hidden_states, outputs.attentions):
            attention = layer.attn
            query, key, _ = attention.qkv(layer.norm1(layer_input)).chunk(3, dim=-1)
            heads = lambda x: x.reshape(*x.shape[:2], attention.num_heads, attention.head_dim).transpose(1, 2)
            scores = heads(query) @ heads(key).transpose(-1, -2) / attention.head_dim**0.5
            torch.testing.assert_close(attentions, scores.softmax(dim=-1))
    assert attentions.shape == (2, TINY_CONFIG["num_attention_heads"], 17, 17)
    assert tower(images).attentions is None


def test_sdpa_asked_for_attentions_returns_the_eager_maps():
    """SDPA computes no weights: asked for them, the tower falls back to eager attention and returns the same maps
    and outputs as an eager model; without them it stays on SDPA."""
    sdpa = tiny_tower("sdpa")
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    images = pixel_values()
    with torch.no_grad():
        expected = eager(images, output_attentions=True)
        outputs = sdpa(images, output_attentions=True)
    assert sdpa.config._attn_implementation == "sdpa"
    assert len(outputs.attentions) == NUM_LAYERS
    for got, want in zip(outputs.attentions, expected.attentions):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(outputs.last_hidden_state, expected.last_hidden_state)


def test_output_attentions_from_the_config_and_through_the_classifier():
    tower = tiny_tower("eager", output_attentions=True)
    assert len(tower(pixel_values()).attentions) == NUM_LAYERS
    classifier = UniFlowForImageClassification(UniFlowConfig(**TINY_CONFIG, num_labels=3)).eval()
    assert len(classifier(pixel_values(), output_attentions=True).attentions) == NUM_LAYERS
    assert classifier(pixel_values()).attentions is None


# ------------------------------------------------------------------------------------- selected hidden states
@pytest.mark.parametrize("latent_head", [False, True], ids=["encoder", "latent-head"])
@pytest.mark.parametrize("selection", [0, -1, -2, [0, -1], [1, 2]], ids=str)
def test_hidden_states_selected_by_index(selection, latent_head):
    """`output_hidden_states` given as indices (an int or a list, as LLaVA passes its `vision_feature_layer`) returns
    only those hidden states, at the indices that select them from all of them; the others are None."""
    tower = tiny_tower(vision_feature_source="latent" if latent_head else "encoder")
    images = pixel_values()
    with torch.no_grad():
        everything = tower(images, output_hidden_states=True).hidden_states
        selected = tower(images, output_hidden_states=selection).hidden_states
    assert len(everything) == len(selected) == NUM_LAYERS + 1 + latent_head
    wanted = {index % len(everything) for index in ([selection] if isinstance(selection, int) else selection)}
    for index, (state, expected) in enumerate(zip(selected, everything)):
        if index in wanted:
            torch.testing.assert_close(state, expected)
        else:
            assert state is None


@pytest.mark.parametrize("selection", [NUM_LAYERS + 1, -(NUM_LAYERS + 2), [], "all", [0.5]], ids=repr)
def test_hidden_state_indices_out_of_range_are_refused(selection):
    with pytest.raises(ValueError, match=r"`output_hidden_states` must be a bool, or a hidden state index"):
        tiny_tower()(pixel_values(), output_hidden_states=selection)


# ---------------------------------------------------------------------------------------------- the classifier
def test_classifier_tuple_and_dict_outputs_agree():
    """`loss, logits = model(x, labels=y, return_dict=False)` unpacks the loss and the logits; with
    `output_hidden_states` and `output_attentions` the tuple carries them too, equal to the dict's fields."""
    torch.manual_seed(0)
    model = UniFlowForImageClassification(UniFlowConfig(**TINY_CONFIG, num_labels=3)).eval()
    model.set_attn_implementation("eager")
    images, labels = pixel_values(), torch.tensor([0, 2])
    with torch.no_grad():
        loss, logits = model(images, labels=labels, return_dict=False)
        output = model(images, labels=labels, output_hidden_states=True, output_attentions=True)
        as_tuple = model(images, labels=labels, output_hidden_states=True, output_attentions=True, return_dict=False)
        (no_label_logits,) = model(images, return_dict=False)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and logits.shape == (2, 3)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    assert torch.equal(logits, output.logits) and torch.equal(loss, output.loss) and torch.equal(no_label_logits, logits)
    assert len(as_tuple) == 4 and len(output.hidden_states) == NUM_LAYERS + 1 and len(output.attentions) == NUM_LAYERS
    for got, want in zip(as_tuple, output.to_tuple()):
        torch.testing.assert_close(got, want)


# -------------------------------------------------------------------------------------------- input embeddings
def test_get_input_embeddings_returns_the_patch_embedding():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = UniFlowConfig(**TINY_CONFIG, num_labels=3)
    for model in (UniFlowVisionModel(config), UniFlowModel(config), UniFlowForImageClassification(config)):
        tower = getattr(model, "vision_model", model)
        assert model.get_input_embeddings() is tower.embeddings.patch_embedding
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
        )
    )
    foreign = UniFlowModel.from_encoder(clip, latent_channels=8, num_global_blocks=1, global_num_attention_heads=4)
    assert foreign.get_input_embeddings() is foreign.vision_model.embeddings.patch_embedding


# ---------------------------------------------------------------------------------------------- missing weights
def test_missing_weights_are_refused_by_default(tmp_path):
    model = pretrained_tiny_model()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not hold weights for 12 parameters.*initialize_missing_weights=True"):
        UniFlowModel.from_pretrained(tmp_path, num_global_blocks=3)
    partial = {key: value for key, value in model.state_dict().items() if not key.startswith("flow_head.")}
    with pytest.raises(ValueError, match=r"state_dict does not hold weights.*flow_head\."):
        UniFlowModel.from_pretrained(None, config=model.config, state_dict=partial)


def test_growing_a_model_initialises_and_reports_the_missing_weights(tmp_path, caplog):
    """`initialize_missing_weights=True`: a checkpoint loads into a config with one more global block and one more
    flow-head block; its weights load unchanged, the new ones are initialised as in a new model (the new flow-head
    block's adaLN gate is zero, so the decoder is unchanged) and reported."""
    model = pretrained_tiny_model().eval()
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        grown, info = UniFlowModel.from_pretrained(
            tmp_path, num_global_blocks=3, num_flow_head_blocks=3, initialize_missing_weights=True, output_loading_info=True
        )
    new_keys = {key for key in grown.state_dict() if key.startswith(("global_blocks.2.", "flow_head.res_blocks.2."))}
    assert len(new_keys) == 12 + 8 and set(info["missing_keys"]) == new_keys
    assert "initialize_missing_weights=True" in caplog.text and "global_blocks.2.attn.qkv.weight" in caplog.text
    for key, value in model.state_dict().items():
        assert torch.equal(grown.state_dict()[key], value), key
    block = grown.global_blocks[2]
    assert torch.equal(block.norm1.weight, torch.ones_like(block.norm1.weight)) and not block.attn.qkv.bias.any()
    assert 0.015 < block.attn.qkv.weight.std() < 0.025  # truncated normal, std initializer_range = 0.02
    assert not grown.flow_head.res_blocks[2].modulation.weight.any()

    # The new flow-head block is the identity: with the global blocks of the original, reconstructions are equal.
    grown.global_blocks = grown.global_blocks[:2]
    images = pixel_values()
    torch.testing.assert_close(
        grown.eval().reconstruct(images, generator=torch.manual_seed(0)),
        model.reconstruct(images, generator=torch.manual_seed(0)),
    )


def test_missing_weights_from_a_state_dict_without_a_folder():
    """`from_pretrained(None, config=..., state_dict=...)` with part of the weights, opted in."""
    model = pretrained_tiny_model()
    partial = {key: value for key, value in model.state_dict().items() if not key.startswith("flow_head.")}
    loaded, info = UniFlowModel.from_pretrained(
        None, config=model.config, state_dict=partial, initialize_missing_weights=True, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {key for key in model.state_dict() if key.startswith("flow_head.")}
    for key, value in partial.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.flow_head.final_layer.linear.weight.any()  # zero-initialised, as in a new model


# ------------------------------------------------------------------------------------------------ killed saves
SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    import torch
    from transformers import PreTrainedModel
    from uniflow_hf import UniFlowConfig, UniFlowModel

    write = PreTrainedModel.save_pretrained

    def write_then_hang(self, *args, **kwargs):  # the weights are written, the save is not finished
        write(self, *args, **kwargs)
        print("writing", flush=True)
        time.sleep(600)

    PreTrainedModel.save_pretrained = write_then_hang
    torch.manual_seed(1)
    UniFlowModel(UniFlowConfig(**eval(sys.argv[2]))).save_pretrained(sys.argv[1])
    """
)


def test_later_save_removes_the_staging_folder_of_a_killed_save(tmp_path):
    """A save killed midway (SIGKILL) leaves the previous model and a hidden `.NAME.saving-*` folder; a later save
    into the same folder removes it, but not the staging folder of a save still running in another process."""
    target = tmp_path / "model"
    model = pretrained_tiny_model()
    model.save_pretrained(target)
    staging_folders = lambda: sorted(tmp_path.glob(".model.saving-*")) + sorted(target.glob(".saving-*"))

    saver = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(target), repr(TINY_CONFIG)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = saver.stdout.readline()
        assert line.strip() == "writing", saver.stderr.read() if saver.poll() is not None else line
        (running,) = staging_folders()
        model.save_pretrained(target)  # another save while that one runs: its staging folder stays
        assert staging_folders() == [running]
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        saver.stdout.close()
        saver.stderr.close()

    assert staging_folders() == [running] and running.is_dir()
    assert_same_weights(UniFlowModel.from_pretrained(target), model.state_dict(), torch.float32)  # left intact
    model.save_pretrained(target)
    assert staging_folders() == []
    assert_same_weights(UniFlowModel.from_pretrained(target), model.state_dict(), torch.float32)


def test_auto_model_for_image_classification_builds_and_loads_the_classifier(tmp_path):
    """`import uniflow_hf` registers the classifier with `AutoModelForImageClassification`, as transformers'
    own vision models are."""
    from transformers import AutoModelForImageClassification

    import uniflow_hf

    config = uniflow_hf.UniFlowConfig(**TINY_CONFIG, num_labels=3)
    model = AutoModelForImageClassification.from_config(config)
    assert type(model) is uniflow_hf.UniFlowForImageClassification
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(pixel_values).logits, model.eval()(pixel_values).logits)


@pytest.mark.parametrize("model_class", ["UniFlowVisionModel", "UniFlowModel"])
def test_adapter_folder_loads_like_clip_adapters(tmp_path, model_class):
    """peft >= 0.22: `load_adapter(dir)` on the base, and `from_pretrained(adapter_dir)` (the base named in
    adapter_config.json, then the adapter), give the outputs of the adapted model that was saved."""
    from peft import LoraConfig, get_peft_model

    import uniflow_hf

    cls = getattr(uniflow_hf, model_class)
    torch.manual_seed(0)
    cls(uniflow_hf.UniFlowConfig(**TINY_CONFIG)).save_pretrained(tmp_path / "base")
    adapted = get_peft_model(
        cls.from_pretrained(tmp_path / "base"), LoraConfig(r=4, target_modules=["qkv"], init_lora_weights=False)
    ).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run(model):
        return model(pixel_values).last_hidden_state if model_class == "UniFlowVisionModel" else model.encode(pixel_values)

    with torch.no_grad():
        expected = run(adapted)
        base = cls.from_pretrained(tmp_path / "base").eval()
        assert (run(base) - expected).abs().max() > 1e-4  # the adapter changes the outputs
        base.load_adapter(tmp_path / "adapter")
        torch.testing.assert_close(run(base), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(run(cls.from_pretrained(tmp_path / "adapter").eval()), expected, rtol=0, atol=1e-6)
