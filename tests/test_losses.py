"""The two training losses of UniFlow against hand computations: the layer-wise adaptive self-distillation loss and
the patch flow-matching loss of `UniFlowModel.forward`, and the ablations of the paper."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG

from uniflow_hf import UniFlowConfig, UniFlowModel, adaptive_distillation_loss


def random_states(num_layers=4, shape=(2, 5, 6), seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    states = [torch.randn(shape, generator=generator) for _ in range(num_layers)]
    return [s.requires_grad_() for s in states] if requires_grad else states


def hand_distillation(student, teacher, beta, mode="adaptive"):
    """The paper's formulas with explicit loops: alpha_l = 1 - mean_tokens cos, w_l ∝ (l/L) exp(beta alpha_l)."""
    num_layers = len(student)
    alphas = []
    for s, t in zip(student, teacher):
        cosines = []
        for b in range(s.shape[0]):
            for n in range(s.shape[1]):
                u, v = s[b, n], t[b, n]
                cosines.append(float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v))))
        alphas.append(1 - sum(cosines) / len(cosines))
    if mode == "uniform":
        weights = [1 / num_layers] * num_layers
    else:
        raw = [(l / num_layers) * math.exp(beta * alphas[l - 1]) for l in range(1, num_layers + 1)]
        weights = [r / sum(raw) for r in raw]
    return sum(w * a for w, a in zip(weights, alphas)), weights, alphas


@pytest.mark.parametrize("beta", [2.0, 5.0])
def test_adaptive_loss_matches_hand_computation(beta):
    student, teacher = random_states(seed=1), random_states(seed=2)
    loss, weights = adaptive_distillation_loss(student, teacher, beta=beta)
    expected_loss, expected_weights, alphas = hand_distillation(student, teacher, beta)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(weights, torch.tensor(expected_weights), rtol=1e-5, atol=1e-7)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    # the depth prior and the discrepancy both raise a layer's weight
    assert weights[-1] > weights[0]
    assert max(alphas) > min(alphas)


def test_adaptive_weights_carry_no_gradient():
    student, teacher = random_states(seed=3, requires_grad=True), random_states(seed=4)
    loss, weights = adaptive_distillation_loss(student, teacher, beta=2.0)
    assert not weights.requires_grad
    grads = torch.autograd.grad(loss, student)

    # Σ_l w_l ∂α_l with the weights held constant
    for layer, (s, t) in enumerate(zip(student, teacher)):
        alpha = 1 - F.cosine_similarity(s, t, dim=-1).mean()
        (alpha_grad,) = torch.autograd.grad(alpha, s)
        torch.testing.assert_close(grads[layer], weights[layer] * alpha_grad, rtol=1e-5, atol=1e-8)

    # had the weights been differentiated, the gradient would differ
    def loss_with_weight_gradient(states):
        alphas = torch.stack([1 - F.cosine_similarity(s, t, dim=-1).mean() for s, t in zip(states, teacher)])
        depth = torch.arange(1, len(states) + 1) / len(states)
        w = depth * torch.exp(2.0 * alphas)
        return (w / w.sum() * alphas).sum()

    other = torch.autograd.grad(loss_with_weight_gradient(student), student)
    assert not torch.allclose(other[-1], grads[-1], rtol=1e-3)


def test_no_gradient_reaches_the_teacher_states():
    student, teacher = random_states(seed=5, requires_grad=True), random_states(seed=6, requires_grad=True)
    loss, _ = adaptive_distillation_loss(student, teacher)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)


def test_uniform_mode():
    student, teacher = random_states(seed=7), random_states(seed=8)
    loss, weights = adaptive_distillation_loss(student, teacher, beta=2.0, mode="uniform")
    expected_loss, _, alphas = hand_distillation(student, teacher, beta=2.0, mode="uniform")
    torch.testing.assert_close(weights, torch.full((4,), 0.25))
    assert loss.item() == pytest.approx(sum(alphas) / 4, rel=1e-5)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_identical_student_and_teacher_give_zero_loss():
    states = random_states(seed=9)
    loss, weights = adaptive_distillation_loss(states, [s.clone() for s in states], beta=2.0)
    assert abs(loss.item()) < 1e-6
    # zero discrepancy: only the depth prior l/L remains
    torch.testing.assert_close(weights, torch.tensor([1, 2, 3, 4]) / 10.0)


def test_distillation_loss_bad_input():
    states = random_states(num_layers=2)
    with pytest.raises(ValueError, match="same non-zero number"):
        adaptive_distillation_loss(states, states[:1])
    with pytest.raises(ValueError, match="'adaptive' or 'uniform'"):
        adaptive_distillation_loss(states, states, mode="none")
    with pytest.raises(ValueError, match="differ in shape"):
        adaptive_distillation_loss(states, [s[:, :3] for s in states])


# ------------------------------------------------------------------------------------------------ flow loss
def patches_by_unfold(pixel_values, patch_size):
    """(B, C, H, W) -> (B·N, C·p·p), patches flattened (channel, row, col), tokens row-major: written independently
    of the library's `patchify`."""
    patches = F.unfold(pixel_values, kernel_size=patch_size, stride=patch_size)  # (B, C·p·p, N)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def test_flow_loss_matches_hand_written_mse(tiny_config):
    torch.manual_seed(0)
    model = UniFlowModel(tiny_config).train()
    # give the zero-initialised flow-head output layers some weight so that every part of the head matters
    with torch.no_grad():
        for parameter in model.flow_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pixel_values = torch.randn(2, 3, 32, 32)
    num_tokens, patch_dim = (32 // 8) ** 2, 3 * 8 * 8
    noise = torch.randn(2, num_tokens, patch_dim)
    t = torch.rand(2, num_tokens)

    output = model(pixel_values, noise=noise, timesteps=1000 * t)

    with torch.no_grad():
        hidden = model.vision_model(pixel_values).last_hidden_state[:, 1:]  # drop CLS
        condition = model.decoder_condition(model.latent_proj(hidden), (4, 4)).reshape(-1, tiny_config.hidden_size)
        data = patches_by_unfold(pixel_values, 8)
        flat_noise, flat_t = noise.reshape(-1, patch_dim), t.reshape(-1, 1)
        noisy = flat_t * data + (1 - flat_t) * flat_noise  # t = 1 is data, t = 0 noise
        velocity = model.flow_head(noisy, 1000 * flat_t[:, 0], condition)
        expected = ((velocity - (data - flat_noise)) ** 2).mean()
    assert output.flow_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.distillation_loss is None  # no teacher: flow loss only
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_flow_loss_per_image_timesteps_and_bad_shapes(tiny_model):
    model = tiny_model.train()
    pixel_values = torch.randn(2, 3, 32, 32)
    noise = torch.randn(2, 16, 192)
    per_image = model(pixel_values, noise=noise, timesteps=torch.tensor([300.0, 700.0])).flow_loss
    per_token = model(pixel_values, noise=noise, timesteps=torch.tensor([300.0, 700.0]).repeat_interleave(16)).flow_loss
    assert per_image.item() == pytest.approx(per_token.item(), rel=1e-6)
    with pytest.raises(ValueError, match="`noise` must have shape"):
        model(pixel_values, noise=torch.randn(2, 15, 192), return_loss=True)
    with pytest.raises(ValueError, match="`timesteps` must hold"):
        model(pixel_values, timesteps=torch.rand(5))


@pytest.mark.parametrize("logit_mean, t", [(-30.0, 0.0), (30.0, 1.0)])
def test_flow_loss_draws_times_from_the_configured_distribution(tmp_path, logit_mean, t):
    """`flow_timestep_*` set the flow loss's training times: a logit-normal far to one side gives t = 0 (all noise)
    or t = 1 (all data), the same loss as passing those times explicitly. The fields survive save/load."""
    config = UniFlowConfig(
        **TINY_CONFIG, flow_timestep_distribution="lognormal", flow_timestep_logit_mean=logit_mean,
        flow_timestep_logit_std=0.5,
    )
    torch.manual_seed(0)
    model = UniFlowModel(config).train()
    with torch.no_grad():
        for parameter in model.flow_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 192)
    drawn = model(pixel_values, noise=noise, return_loss=True).flow_loss
    explicit = model(pixel_values, noise=noise, timesteps=torch.full((2,), 1000 * t)).flow_loss
    other_end = model(pixel_values, noise=noise, timesteps=torch.full((2,), 1000 * (1 - t))).flow_loss
    assert drawn.item() == pytest.approx(explicit.item(), rel=1e-5)
    assert abs(drawn.item() - other_end.item()) > 1e-3
    config.save_pretrained(tmp_path)
    loaded = UniFlowConfig.from_pretrained(tmp_path)
    assert (loaded.flow_timestep_distribution, loaded.flow_timestep_logit_mean) == ("lognormal", logit_mean)


def test_flow_timestep_config_bad_values():
    with pytest.raises(ValueError, match="`flow_timestep_distribution` must be one of"):
        UniFlowConfig(**TINY_CONFIG, flow_timestep_distribution="beta")
    with pytest.raises(ValueError, match="`flow_timestep_logit_std` must be > 0"):
        UniFlowConfig(**TINY_CONFIG, flow_timestep_logit_std=0.0)


def test_total_loss_weights_and_return_loss_in_eval(tiny_config):
    config = UniFlowConfig(**{**TINY_CONFIG, "flow_loss_weight": 0.5, "distillation_weight": 3.0})
    torch.manual_seed(0)
    model = UniFlowModel(config).train()
    model.enable_distillation()
    with torch.no_grad():  # move the student away from the teacher
        model.vision_model.encoder.layers[1].mlp.fc2.weight.add_(0.1)
    inputs = dict(pixel_values=torch.randn(2, 3, 32, 32), noise=torch.randn(2, 16, 192), timesteps=1000 * torch.rand(2, 16))
    output = model(**inputs)
    assert output.distillation_loss.item() > 1e-4
    expected = 0.5 * output.flow_loss + 3.0 * output.distillation_loss
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(output.distillation_cosine, 1 - torch.tensor(_alphas(model, inputs["pixel_values"])))

    model.eval()
    evaluated = model(**inputs, return_loss=True)  # what UniFlowTrainer's evaluation computes
    assert "reconstruction" not in evaluated  # a training output: losses, no decoded image
    assert evaluated.loss.item() == pytest.approx(output.loss.item(), rel=1e-6)
    assert model(inputs["pixel_values"]).reconstruction.shape == (2, 3, 32, 32)


def _alphas(model, pixel_values):
    with torch.no_grad():
        student = model.vision_model(pixel_values, output_hidden_states=True).hidden_states[1:]
        teacher = model.distillation_teacher(pixel_values, output_hidden_states=True).hidden_states[1:]
    return [1 - F.cosine_similarity(s, t, dim=-1).mean().item() for s, t in zip(student, teacher)]


# ------------------------------------------------------------------------------------------------ ablations
def _distilling_model(**overrides):
    torch.manual_seed(0)
    model = UniFlowModel(UniFlowConfig(**{**TINY_CONFIG, **overrides})).train()
    model.enable_distillation()
    with torch.no_grad():
        for parameter in model.vision_model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def test_adaptive_distillation_in_forward_matches_hand_computation():
    model = _distilling_model(distillation_beta=3.0)
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values, return_loss=True)
    with torch.no_grad():
        student = model.vision_model(pixel_values, output_hidden_states=True).hidden_states[1:]
        teacher = model.distillation_teacher(pixel_values, output_hidden_states=True).hidden_states[1:]
    expected_loss, expected_weights, _ = hand_distillation(student, teacher, beta=3.0)
    assert len(output.distillation_weights) == TINY_CONFIG["num_hidden_layers"]  # layers, not the embeddings
    assert output.distillation_loss.item() == pytest.approx(expected_loss, rel=1e-4)
    torch.testing.assert_close(output.distillation_weights, torch.tensor(expected_weights), rtol=1e-4, atol=1e-6)


def test_ablation_uniform_weights():
    output = _distilling_model(distillation_mode="uniform")(torch.randn(2, 3, 32, 32), return_loss=True)
    torch.testing.assert_close(output.distillation_weights, torch.full((3,), 1 / 3))
    assert output.distillation_loss.item() > 0


def test_ablation_no_distillation():
    model = _distilling_model(distillation_mode="none")
    output = model(torch.randn(2, 3, 32, 32), return_loss=True)
    assert output.distillation_loss is None and output.distillation_weights is None
    assert output.loss.item() == pytest.approx(output.flow_loss.item())


def test_ablation_frozen_encoder():
    model = _distilling_model(freeze_encoder=True)
    output = model(torch.randn(2, 3, 32, 32), return_loss=True)
    assert output.distillation_loss is None  # a frozen encoder is its own teacher
    output.loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.latent_proj.fc1.weight.grad is not None
    assert model.flow_head.final_layer.linear.weight.grad is not None
