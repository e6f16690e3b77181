"""`UniFlowModel.from_encoder` around UniFlow's own encoder and foreign transformers towers (CLIP, SigLIP, DINOv2 with
and without registers): patch-token slice, token grid, distillation layers, save / load without the original."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.modeling_outputs import BaseModelOutput

from uniflow_hf import UniFlowConfig, UniFlowModel, UniFlowVisionModel


TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
DECODER = dict(latent_channels=8, num_global_blocks=1, global_num_attention_heads=4, num_flow_head_blocks=1)


def build_uniflow():
    return UniFlowVisionModel(UniFlowConfig(**TINY_CONFIG)), lambda m: m.encoder.layers


# (builder -> (encoder, its transformer layers), number of non-patch tokens that lead the sequence)
ENCODERS = {
    "uniflow": (build_uniflow, 1),  # CLS
    "clip": (lambda: (CLIPVisionModel(CLIPVisionConfig(**TOWER)), lambda m: m.encoder.layers), 1),  # CLS
    "siglip": (lambda: (SiglipVisionModel(SiglipVisionConfig(**TOWER)), lambda m: m.encoder.layers), 0),
    "dinov2": (lambda: (Dinov2Model(Dinov2Config(**TOWER)), lambda m: m.encoder.layer), 1),  # CLS
    "dinov2_registers": (
        lambda: (
            Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TOWER, num_register_tokens=3)),
            lambda m: m.encoder.layer,
        ),
        1 + 3,  # CLS + registers
    ),
}


@pytest.fixture(params=list(ENCODERS))
def encoder_case(request):
    builder, num_prefix_tokens = ENCODERS[request.param]
    torch.manual_seed(0)
    encoder, layers = builder()
    return request.param, encoder.eval(), layers, num_prefix_tokens


def test_patch_tokens_and_grid(encoder_case):
    name, encoder, _, num_prefix_tokens = encoder_case
    model = UniFlowModel.from_encoder(encoder, **DECODER).eval()
    assert (model.config.image_size, model.config.patch_size) == (32, 8)
    assert model.config.grid_size == 4 and model.global_position_embedding.shape[1] == 16
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = encoder(pixel_values=pixel_values).last_hidden_state
        features, grid, _ = model.encoder_forward(pixel_values)
        latents = model.encode(pixel_values)
    assert reference.shape[1] == num_prefix_tokens + 16
    assert grid == (4, 4)
    torch.testing.assert_close(features, reference[:, num_prefix_tokens:])  # weights copied, right token slice
    assert latents.shape == (2, 16, 8)


def _layer_outputs(layers):
    outputs = []

    def record(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    return outputs, [layer.register_forward_hook(record) for layer in layers]


def test_distillation_uses_the_layer_outputs(encoder_case):
    name, encoder, layers_of, _ = encoder_case
    model = UniFlowModel.from_encoder(encoder, **DECODER).train()
    model.enable_distillation()
    with torch.no_grad():  # a student that has drifted from its teacher
        for parameter in model.vision_model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    student_outputs, student_hooks = _layer_outputs(layers_of(model.vision_model))
    teacher_outputs, teacher_hooks = _layer_outputs(layers_of(model.distillation_teacher))
    output = model(torch.randn(2, 3, 32, 32), return_loss=True)
    for hook in student_hooks + teacher_hooks:
        hook.remove()

    num_layers = encoder.config.num_hidden_layers
    assert len(student_outputs) == len(teacher_outputs) == num_layers
    expected = torch.stack([F.cosine_similarity(s, t, dim=-1).mean() for s, t in zip(student_outputs, teacher_outputs)])
    torch.testing.assert_close(output.distillation_cosine, expected.detach())
    assert output.distillation_weights.shape == (num_layers,)
    assert (output.distillation_cosine < 1 - 1e-4).all()
    output.loss.backward()
    assert model.distillation_teacher is not None and all(p.grad is None for p in model.distillation_teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision_model.parameters())


def test_saved_model_loads_without_the_original(encoder_case, tmp_path):
    name, encoder, _, _ = encoder_case
    model = UniFlowModel.from_encoder(encoder, **DECODER).eval()
    model.enable_distillation()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if name == "uniflow":
        assert config["encoder_config"] is None
    else:
        assert config["encoder_config"]["model_type"] == encoder.config.model_type
    del encoder

    loaded = UniFlowModel.from_pretrained(tmp_path).eval()
    assert type(loaded.vision_model) is type(model.vision_model)
    assert loaded.distillation_teacher is None
    pixel_values = torch.randn(1, 3, 32, 32)
    noise = torch.randn(1, 16, 192)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values, noise=noise).reconstruction, model(pixel_values, noise=noise).reconstruction)


# --------------------------------------------------------------------------------------------------- errors
class NoHiddenStatesConfig(PreTrainedConfig):
    model_type = "uniflow-test-no-hidden-states"

    def __init__(self, hidden_size=32, num_hidden_layers=1, image_size=32, patch_size=8, num_channels=3, **kwargs):
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        super().__init__(**kwargs)


class NoHiddenStatesEncoder(PreTrainedModel):
    """A patch embedding that ignores `output_hidden_states`."""

    config_class = NoHiddenStatesConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        return BaseModelOutput(last_hidden_state=self.patch_embedding(pixel_values).flatten(2).transpose(1, 2))


def test_encoder_without_hidden_states():
    AutoConfig.register(NoHiddenStatesConfig.model_type, NoHiddenStatesConfig, exist_ok=True)
    AutoModel.register(NoHiddenStatesConfig, NoHiddenStatesEncoder, exist_ok=True)
    model = UniFlowModel.from_encoder(NoHiddenStatesEncoder(NoHiddenStatesConfig()), **DECODER).train()
    pixel_values = torch.randn(1, 3, 32, 32)
    model.enable_distillation()
    with pytest.raises(ValueError, match="returned no hidden states.*output_hidden_states=True"):
        model(pixel_values, return_loss=True)
    model.config.distillation_mode = "none"  # without distillation it trains on the flow loss alone
    assert model(pixel_values, return_loss=True).distillation_loss is None


def test_from_encoder_bad_input():
    tower = CLIPVisionModel(CLIPVisionConfig(**TOWER))
    with pytest.raises(ValueError, match="vision tower itself"):
        UniFlowModel.from_encoder(CLIPModel(CLIPConfig(vision_config=TOWER, text_config=dict(hidden_size=32))))
    with pytest.raises(ValueError, match="contradicts the encoder"):
        UniFlowModel.from_encoder(tower, patch_size=16, **DECODER)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        UniFlowModel.from_encoder(nn.Linear(2, 2))
