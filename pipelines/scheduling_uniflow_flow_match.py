# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow's rectified-flow scheduler; the flow math lives in `flow_matching.py`, shared with the model's decoder."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .flow_matching import TIMESTEP_DISTRIBUTIONS, add_noise, euler_step, sample_flow_times, time_grid, velocity_target


# config keys saved by earlier versions -> their names today
RENAMED_CONFIG_KEYS = {
    "training_timestep_distribution": "timestep_distribution",
    "logit_mean": "timestep_logit_mean",
    "logit_std": "timestep_logit_std",
    "uniform_fraction": "timestep_uniform_fraction",
}


UniFlowFlowMatchSchedulerOutput = SchedulerOutput


class UniFlowFlowMatchScheduler(SchedulerMixin, ConfigMixin):
    """
    Euler / Heun sampler of UniFlow's rectified flow from noise (t = 0) to data (t = 1; the model predicts v = data -
    noise at network timestep `num_train_timesteps * t`), and the training-time helpers. Diffusers'
    [`FlowMatchEulerDiscreteScheduler`] runs the reverse (sigma = 1 - t, output -v); see `flow_match_euler_sigmas`.
    `schedule` is `"linear"` or `"pow_<p>"` (`shift` warps it as SD3); `euler_at_final` ends Heun's method with a
    plain Euler step (no call at t = 1); `timestep_distribution` is `flow_matching.sample_flow_times`' `distribution`.
    """

    config_name = "scheduler_config.json"
    _compatibles = ["UniFlowFlowMatchScheduler"]
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear",
        shift: float = 1.0,
        solver: str = "euler",
        euler_at_final: bool = False,
        timestep_distribution: str = "fat_lognormal",
        timestep_logit_mean: float = 0.0,
        timestep_logit_std: float = 1.0,
        timestep_uniform_fraction: float = 0.1,
    ):
        if solver not in ("euler", "heun"):
            raise ValueError(f"`solver` must be 'euler' or 'heun', got {solver!r}.")
        if not isinstance(euler_at_final, bool):
            raise ValueError(f"`euler_at_final` must be True or False, got {euler_at_final!r}.")
        if euler_at_final and solver != "heun":
            raise ValueError("`euler_at_final` ends Heun's method with an Euler step; it needs `solver='heun'`.")
        if timestep_distribution not in TIMESTEP_DISTRIBUTIONS:
            accepted = "'fat_lognormal', 'lognormal' or 'uniform'"
            raise ValueError(f"`timestep_distribution` must be {accepted}, got {timestep_distribution!r}.")
        if not timestep_logit_std > 0:
            raise ValueError(f"`timestep_logit_std` must be positive, got {timestep_logit_std}.")
        if not 0 <= timestep_uniform_fraction <= 1:
            raise ValueError(f"`timestep_uniform_fraction` must be in [0, 1], got {timestep_uniform_fraction}.")
        time_grid(1, schedule, shift)  # checks the schedule and the shift
        self.order = 2 if solver == "heun" else 1
        self.num_inference_steps = self.times = self.timesteps = self._step_index = None

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """Reads configs saved under the former key names too."""
        config_dict = {RENAMED_CONFIG_KEYS.get(key, key): value for key, value in config_dict.items()}
        return super().extract_init_dict(config_dict, **kwargs)

    @property
    def step_index(self):
        """The index of the next network call (Heun makes two per step)."""
        return self._step_index

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """`self.timesteps`: the network timesteps in the order of the calls (Heun visits interior times twice)."""
        grid = time_grid(num_inference_steps, self.config.schedule, self.config.shift)
        starts = grid[:-1]
        if self.config.solver == "heun":
            # t_0, then t_k twice (corrector of step k - 1, predictor of step k), then t_K unless `euler_at_final`
            starts = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
            if self.config.euler_at_final:
                starts = starts[:-1]
        self.num_inference_steps = num_inference_steps
        self.times = grid.to(device)
        self.timesteps = (starts * self.config.num_train_timesteps).to(device)
        self._step_index = 0
        self._first_order_sample = self._first_order_velocity = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """Advance `sample` along the predicted velocity `model_output` (v = data - noise)."""
        if self._step_index is None:
            raise RuntimeError("Call `set_timesteps(...)` before `step(...)`.")
        if self._step_index >= len(self.timesteps):
            raise RuntimeError(f"All {len(self.timesteps)} steps of this schedule were already taken.")
        velocity, sample_fp32 = model_output.to(torch.float32), sample.to(torch.float32)
        if self.config.solver == "euler":
            prev_sample = euler_step(sample_fp32, velocity, *self.times[self._step_index : self._step_index + 2])
        elif self._first_order_sample is None:  # Heun's predictor (with `euler_at_final`, the last step is just this)
            k = (self._step_index + 1) // 2
            prev_sample = euler_step(sample_fp32, velocity, *self.times[k : k + 2])
            if self._step_index + 1 < len(self.timesteps):
                self._first_order_sample, self._first_order_velocity = sample_fp32, velocity
        else:  # Heun's corrector: the mean of the two slopes
            t, t_next = self.times[self._step_index // 2 : self._step_index // 2 + 2]
            prev_sample = self._first_order_sample + (t_next - t) * 0.5 * (self._first_order_velocity + velocity)
            self._first_order_sample = self._first_order_velocity = None
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def sample_training_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """`batch_size` network timesteps (1000 * t) drawn from the training distribution."""
        config = self.config
        t = sample_flow_times(
            batch_size, config.timestep_distribution, config.timestep_logit_mean, config.timestep_logit_std,
            config.timestep_uniform_fraction, generator=generator, device=device,
        )
        return t * config.num_train_timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = t * x_data + (1 - t) * noise, with `timesteps` = 1000 * t (one per leading row)."""
        return add_noise(original_samples, noise, timesteps, self.config.num_train_timesteps)

    @staticmethod
    def get_velocity(original_samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target of the network: v = x_data - noise."""
        return velocity_target(original_samples, noise)

    def flow_match_euler_sigmas(self, num_inference_steps: int) -> np.ndarray:
        """The `sigmas` (= 1 - t) that make `FlowMatchEulerDiscreteScheduler` walk our Euler grid (fed -v)."""
        return (1 - time_grid(num_inference_steps, self.config.schedule, self.config.shift)[:-1]).numpy()

    def __len__(self):
        return self.config.num_train_timesteps

