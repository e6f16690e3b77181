"""UniFlowFlowMatchScheduler: time grids, Euler/Heun steps, training helpers, saving, and the mapping to diffusers'
FlowMatchEulerDiscreteScheduler; the official fixture decoded by it."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from uniflow_hf import UniFlowFlowMatchScheduler, UniFlowModel
from uniflow_hf.pipelines import time_grid
from uniflow_hf.modeling import unpatchify


def velocity_field(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear velocity v(x, t) of the network's inputs (timestep = 1000 t)."""
    t = timestep / 1000
    return torch.sin(3 * sample) * (1 - t) + t * t - 0.5 * sample


def public_config(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def sample_with(scheduler: UniFlowFlowMatchScheduler, velocity, sample: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """All samples visited by `scheduler` from `sample` (the start included)."""
    scheduler.set_timesteps(steps)
    samples = [sample]
    for timestep in scheduler.timesteps:
        sample = scheduler.step(velocity(sample, timestep), timestep, sample).prev_sample
        samples.append(sample)
    return samples


# ------------------------------------------------------------------------------------------------------- grids
def test_linear_grid():
    assert torch.allclose(time_grid(4, "linear"), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_pow_grid_follows_the_official_formula():
    steps, power = 5, 0.25
    expected = [1 - ((steps - k) / steps) ** (1 / power) for k in range(steps + 1)]
    assert torch.allclose(time_grid(steps, f"pow_{power}").double(), torch.tensor(expected, dtype=torch.float64), atol=1e-7)
    # p < 1 spends the steps near the data end (t -> 1)
    assert time_grid(steps, "pow_0.25")[1] > 0.5


def test_shifted_grid_warps_sigma_like_sd3():
    shift = 3.0
    sigma = 1 - time_grid(6, "linear")
    expected = shift * sigma / (1 + (shift - 1) * sigma)
    assert torch.allclose(1 - time_grid(6, "linear", shift=shift), expected, atol=1e-6)
    assert time_grid(6, "linear", shift=shift)[0] == 0 and time_grid(6, "linear", shift=shift)[-1] == 1


@pytest.mark.parametrize(
    "steps, schedule, shift",
    [(0, "linear", 1.0), (2.0, "linear", 1.0), (2, "cosine", 1.0), (2, "pow_-1", 1.0), (2, "linear", 0.0)],
)
def test_bad_grid_arguments(steps, schedule, shift):
    with pytest.raises(ValueError):
        time_grid(steps, schedule, shift)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(timestep_distribution="beta"), "'fat_lognormal', 'lognormal' or 'uniform', got 'beta'"),
        (dict(timestep_logit_std=0.0), "`timestep_logit_std` must be positive, got 0.0"),
        (dict(timestep_uniform_fraction=1.5), r"`timestep_uniform_fraction` must be in \[0, 1\], got 1.5"),
        (dict(solver="rk4"), "'euler' or 'heun'"),
        (dict(solver="heun", euler_at_final="yes"), "`euler_at_final` must be True or False, got 'yes'"),
        (dict(euler_at_final=True), "needs `solver='heun'`"),
    ],
)
def test_bad_scheduler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniFlowFlowMatchScheduler(**kwargs)


def test_set_timesteps_euler_and_heun():
    euler = UniFlowFlowMatchScheduler(schedule="linear")
    euler.set_timesteps(4)
    assert torch.allclose(euler.timesteps, torch.tensor([0.0, 250.0, 500.0, 750.0]))
    heun = UniFlowFlowMatchScheduler(solver="heun")
    heun.set_timesteps(2)
    assert torch.allclose(heun.timesteps, torch.tensor([0.0, 500.0, 500.0, 1000.0]))
    assert heun.order == 2
    heun_euler_at_final = UniFlowFlowMatchScheduler(solver="heun", euler_at_final=True)
    heun_euler_at_final.set_timesteps(2)
    assert torch.allclose(heun_euler_at_final.timesteps, torch.tensor([0.0, 500.0, 500.0]))  # no call at t = 1
    with pytest.raises(RuntimeError, match="set_timesteps"):
        UniFlowFlowMatchScheduler().step(torch.zeros(1), 0, torch.zeros(1))


# ----------------------------------------------------------------------------------------------------- solvers
def test_heun_is_exact_where_euler_is_not():
    """v = t integrates to x(1) = x(0) + 1/2: the trapezoid rule (Heun) is exact, Euler lags by 1/(2K)."""
    steps, start = 4, torch.tensor([0.3, -1.2])

    def velocity(sample, timestep):
        return torch.full_like(sample, float(timestep) / 1000)

    heun_end = sample_with(UniFlowFlowMatchScheduler(solver="heun"), velocity, start, steps)[-1]
    euler_end = sample_with(UniFlowFlowMatchScheduler(), velocity, start, steps)[-1]
    assert torch.allclose(heun_end, start + 0.5, atol=1e-6)
    assert torch.allclose(euler_end, start + 0.5 - 1 / (2 * steps), atol=1e-6)


def test_heun_euler_at_final_ends_with_a_plain_euler_step():
    """On v = t the trapezoid rule is exact on every step but the last, where Euler lags by half the slope change."""
    steps, start = 4, torch.tensor([0.3, -1.2])
    calls = []

    def velocity(sample, timestep):
        calls.append(float(timestep))
        return torch.full_like(sample, float(timestep) / 1000)

    scheduler = UniFlowFlowMatchScheduler(solver="heun", euler_at_final=True)
    trajectory = sample_with(scheduler, velocity, start, steps)
    exact_before_last = start + 0.5 * 0.75**2
    assert torch.allclose(trajectory[-2], exact_before_last, atol=1e-6)
    assert torch.allclose(trajectory[-1], exact_before_last + 0.25 * 0.75, atol=1e-6)  # v(3/4) over the last 1/4
    assert max(calls) == 750 and len(calls) == 2 * steps - 1
    # the scheduler is left clean: a second run gives the same samples
    assert torch.equal(sample_with(scheduler, velocity, start, steps)[-1], trajectory[-1])


def test_heun_converges_faster_on_a_linear_ode():
    """x' = -x: x(1) = x(0) / e. Euler's error is O(1/K), Heun's O(1/K^2)."""
    start = torch.tensor([1.0, -2.0], dtype=torch.float64)
    exact = start * math.exp(-1)

    def velocity(sample, timestep):
        return -sample

    for steps in (4, 8):
        euler_error = (sample_with(UniFlowFlowMatchScheduler(), velocity, start, steps)[-1] - exact).abs().max()
        heun_error = (sample_with(UniFlowFlowMatchScheduler(solver="heun"), velocity, start, steps)[-1] - exact).abs().max()
        assert heun_error < euler_error / 10
    # Euler is exactly (1 - 1/K)^K x(0) on this ODE
    euler_end = sample_with(UniFlowFlowMatchScheduler(), velocity, start, 8)[-1]
    assert torch.allclose(euler_end, start * (1 - 1 / 8) ** 8)


# ---------------------------------------------------------------------------------------------------- training
def test_add_noise_and_velocity():
    scheduler = UniFlowFlowMatchScheduler()
    data, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    timesteps = torch.tensor([0.0, 250.0, 1000.0])
    noisy = scheduler.add_noise(data, noise, timesteps)
    assert torch.equal(noisy[0], noise[0]) and torch.equal(noisy[2], data[2])
    assert torch.allclose(noisy[1], 0.25 * data[1] + 0.75 * noise[1])
    # the velocity is d x_t / d t
    step = 1e-2
    finite_difference = (scheduler.add_noise(data, noise, timesteps + 1000 * step) - noisy) / step
    assert torch.allclose(finite_difference, scheduler.get_velocity(data, noise), atol=1e-3)


def test_training_timesteps_are_logit_normal_with_a_uniform_share():
    scheduler = UniFlowFlowMatchScheduler()
    t = scheduler.sample_training_timesteps(40000, generator=torch.Generator().manual_seed(0)).double() / 1000
    assert 0 <= t.min() and t.max() <= 1
    # empirical CDF against 0.9 * Phi(logit t) + 0.1 * t
    grid = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    logit = torch.log(grid / (1 - grid))
    expected = 0.9 * 0.5 * (1 + torch.erf(logit / math.sqrt(2))) + 0.1 * grid
    empirical = (t[None, :] <= grid[:, None]).double().mean(1)
    assert (empirical - expected).abs().max() < 0.01
    # the uniform share shows in the tails, where the logit-normal alone has almost no mass
    tail = ((t < 0.02) | (t > 0.98)).double().mean()
    logit_normal_tail = 2 * 0.5 * (1 + math.erf(math.log(0.02 / 0.98) / math.sqrt(2)))
    assert abs(tail - (0.9 * logit_normal_tail + 0.1 * 0.04)) < 0.003


def test_training_timesteps_follow_the_generator():
    scheduler = UniFlowFlowMatchScheduler()
    first = scheduler.sample_training_timesteps(16, generator=torch.Generator().manual_seed(1))
    again = scheduler.sample_training_timesteps(16, generator=torch.Generator().manual_seed(1))
    other = scheduler.sample_training_timesteps(16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    uniform = UniFlowFlowMatchScheduler(timestep_distribution="uniform")
    t = uniform.sample_training_timesteps(20000, generator=torch.Generator().manual_seed(0)) / 1000
    assert abs(t.mean() - 0.5) < 0.01 and abs((t < 0.1).float().mean() - 0.1) < 0.01


# ------------------------------------------------------------------------------------------------------ saving
def test_save_and_load_scheduler_config(tmp_path):
    scheduler = UniFlowFlowMatchScheduler(schedule="pow_0.5", shift=2.0, solver="heun", timestep_uniform_fraction=0.2)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = UniFlowFlowMatchScheduler.from_pretrained(tmp_path)
    assert public_config(loaded.config) == public_config(scheduler.config)
    scheduler.set_timesteps(3)
    loaded.set_timesteps(3)
    assert torch.equal(loaded.timesteps, scheduler.timesteps) and loaded.order == 2


# ------------------------------------------------------------------------------------ diffusers' flow matcher
@pytest.mark.parametrize("schedule", ["linear", "pow_0.25"])
def test_flow_match_euler_discrete_walks_the_same_samples(schedule):
    """sigma = 1 - t, model output -v: diffusers' scheduler visits the very samples ours does."""
    steps = 6
    ours = UniFlowFlowMatchScheduler(schedule=schedule)
    start = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    our_samples = sample_with(ours, velocity_field, start, steps)

    theirs = FlowMatchEulerDiscreteScheduler(shift=1.0)
    theirs.set_timesteps(sigmas=ours.flow_match_euler_sigmas(steps))
    their_samples, sample = [start], start
    for timestep in theirs.timesteps:
        t_network = 1000 - timestep  # their timestep is 1000 sigma = 1000 (1 - t)
        sample = theirs.step(-velocity_field(sample, t_network), timestep, sample).prev_sample
        their_samples.append(sample)

    assert len(their_samples) == len(our_samples)
    for mine, yours in zip(our_samples, their_samples):
        assert torch.allclose(mine, yours, atol=1e-6)
    assert torch.allclose(1 - theirs.sigmas, ours.times, atol=1e-6)


# ------------------------------------------------------------------------------------------ official fixture
@pytest.mark.parametrize("schedule", ["linear", "pow_0.25"])
def test_fixture_decoded_by_our_scheduler(official_tiny_dir, schedule):
    model = UniFlowModel.from_pretrained(official_tiny_dir).eval()
    inputs = load_file(official_tiny_dir / "inputs.safetensors")
    expected = load_file(official_tiny_dir / "expected.safetensors")[f"reconstruction.steps4.{schedule}"]
    noise = inputs["noise"].reshape(32, 192)
    scheduler = UniFlowFlowMatchScheduler(schedule=schedule)
    scheduler.set_timesteps(4)
    with torch.no_grad():
        condition = model.decoder_condition(model.encode(inputs["pixel_values"]), (4, 4)).reshape(32, -1)
        sample = noise
        for timestep in scheduler.timesteps:
            sample = scheduler.step(model.flow_head(sample, timestep, condition), timestep, sample).prev_sample
    reconstruction = unpatchify(sample.reshape(2, 16, 192), model.config.patch_size, (4, 4))
    np.testing.assert_allclose(reconstruction.numpy(), expected.numpy(), atol=1e-4, rtol=0)


def test_scheduler_common_attributes():
    """What diffusers' pipelines and `from_config` swaps rely on: unit starting noise, `compatibles` listing the
    scheduler itself (resolved on the `diffusers` namespace, where `import uniflow_hf` puts it)."""
    import diffusers

    scheduler = UniFlowFlowMatchScheduler()
    assert scheduler.init_noise_sigma == 1.0
    assert diffusers.UniFlowFlowMatchScheduler is UniFlowFlowMatchScheduler
    assert UniFlowFlowMatchScheduler in scheduler.compatibles
    swapped = UniFlowFlowMatchScheduler.from_config(UniFlowFlowMatchScheduler(schedule="pow_0.5").config)
    assert swapped.config.schedule == "pow_0.5"
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise * scheduler.init_noise_sigma, noise)


def test_pipelines_refuse_a_scheduler_of_the_reverse_convention(class_conditional_pipeline):
    """diffusers' flow-match schedulers run sigma = 1 - t and expect -v: swapped in, they would walk the wrong way."""
    stock = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="Compatible schedulers: UniFlowFlowMatchScheduler"):
        class_conditional_pipeline.scheduler = stock
    components = {**class_conditional_pipeline.components, "scheduler": stock}
    with pytest.raises(ValueError, match="`scheduler` is a FlowMatchEulerDiscreteScheduler"):
        type(class_conditional_pipeline)(**components)
    class_conditional_pipeline.scheduler = UniFlowFlowMatchScheduler.from_config(class_conditional_pipeline.scheduler.config)
