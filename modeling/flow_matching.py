# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow's rectified flow, in plain PyTorch: what the model (its pixel flow decoder and flow loss) and the diffusers
scheduler (`uniflow_hf.pipelines.UniFlowFlowMatchScheduler`) both use.

Convention (UniFlow's, the reverse of diffusers' `FlowMatchEulerDiscreteScheduler`):
    t = 0 is pure Gaussian noise, t = 1 is data,     x_t = t * x_data + (1 - t) * noise,
    the network predicts the velocity v = x_data - noise and sees the timestep 1000 * t.
"""

from __future__ import annotations

import math
import re

import torch


NUM_TRAIN_TIMESTEPS = 1000  # the network sees 1000 * t
TIMESTEP_DISTRIBUTIONS = ("fat_lognormal", "lognormal", "uniform")


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Standard normal float32 noise of `shape` on `device`, drawn on the generator's device (so a CPU seed gives the
    same noise everywhere); with a list of generators, one per leading row. Same draws as diffusers' `randn_tensor`."""
    device = torch.device(device or "cpu")
    if isinstance(generator, list):
        return torch.cat([randn((1, *shape[1:]), one, device) for one in generator])
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)


def time_grid(num_inference_steps: int, schedule: str = "linear", shift: float = 1.0) -> torch.Tensor:
    """The K + 1 times t_0 = 0 < ... < t_K = 1 of a K-step sampler (float32, as the official sampler).

    `linear`: t_k = k / K.  `pow_<p>`: s_k = ((K - k) / K) ** (1 / p), t_k = 1 - s_k.
    `shift` warps the noise level sigma = 1 - t as SD3 does: sigma' = shift * sigma / (1 + (shift - 1) * sigma).
    """
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
    if shift <= 0:
        raise ValueError(f"`shift` must be positive, got {shift}.")
    match = re.fullmatch(r"linear|pow_(\d*\.?\d+)", str(schedule))
    power = float(match.group(1) or 1) if match else 0.0
    if power <= 0:
        raise ValueError(f"Unknown schedule {schedule!r}: expected 'linear' or 'pow_<p>' with p > 0 (e.g. 'pow_0.25').")
    sigmas = torch.arange(num_inference_steps, -1, -1) ** (1 / power) / num_inference_steps ** (1 / power)
    if shift != 1.0:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return (1 - sigmas).float()


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """x_{t_next} = x_t + (t_next - t) * v, computed in float32 and returned in the velocity's dtype."""
    return (sample.float() + (t_next - t) * velocity.float()).to(velocity.dtype)


def sample_flow_times(
    num: int,
    distribution: str = "fat_lognormal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    uniform_fraction: float = 0.1,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """`num` training flow times t in (0, 1): logit-normal (`"lognormal"`), uniform, or logit-normal with a
    `uniform_fraction` share of uniform times (`"fat_lognormal"`, the release's default); drawn on the generator's
    device, returned on `device`. The configuration and the scheduler check `distribution`."""
    draw_device = generator.device if generator is not None else device
    t = torch.sigmoid(logit_mean + logit_std * torch.randn(num, generator=generator, device=draw_device))
    if distribution != "lognormal":
        uniform = torch.rand(num, generator=generator, device=draw_device)
        if distribution == "uniform":
            t = uniform
        else:
            t = torch.where(torch.rand(num, generator=generator, device=draw_device) < uniform_fraction, uniform, t)
    return t.to(device)


def add_noise(
    data: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """x_t = t * data + (1 - t) * noise, with `timesteps` = num_train_timesteps * t (one per leading row)."""
    t = (timesteps / num_train_timesteps).to(data.dtype)
    t = t.reshape(t.shape + (1,) * (data.ndim - t.ndim))
    return t * data + (1 - t) * noise


def velocity_target(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target of the network: v = data - noise."""
    return data - noise


def draw_flow_training_inputs(
    config,
    batch_size: int,
    num_tokens: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of a `UniFlowModel`'s flow loss, as its config says: `noise` (batch, draws, tokens,
    patch_dim), then network `timesteps` (batch, draws, tokens) from `config.flow_timestep_*`, draws =
    `config.flow_samples_per_token`; from `generator`, or from each of a list of one generator per image."""
    if isinstance(generator, list):
        if len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size} images: pass one per image.")
        draws = [draw_flow_training_inputs(config, 1, num_tokens, one, device) for one in generator]
        return torch.cat([noise for noise, _ in draws]), torch.cat([timesteps for _, timesteps in draws])
    shape = (batch_size, config.flow_samples_per_token, num_tokens)
    noise = randn((*shape, config.patch_dim), generator, device)
    t = sample_flow_times(
        math.prod(shape),
        config.flow_timestep_distribution,
        config.flow_timestep_logit_mean,
        config.flow_timestep_logit_std,
        generator=generator,
        device=device,
    )
    return noise, NUM_TRAIN_TIMESTEPS * t.reshape(shape)

