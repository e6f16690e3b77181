# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow's rectified-flow scheduler.

The flow math itself (convention: t = 0 noise, t = 1 data, velocity v = x_data - noise, network timestep 1000 * t)
lives in `flow_matching.py`, the file the model's decoder and flow loss use too (`uniflow_hf.modeling.flow_matching`;
the package makes it importable from here as `.flow_matching`, and pipelines save it beside this file).

Mapping to `FlowMatchEulerDiscreteScheduler`: sigma = 1 - t, and its model output is the flipped velocity
(noise - x_data = -v). `flow_match_euler_sigmas` gives the sigmas of our time grid, so that scheduler (with
`sigmas=...`, `shift=1.0`) fed `-v` walks the very same samples; see tests/test_scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .flow_matching import (
    TIMESTEP_DISTRIBUTIONS,
    add_noise,
    euler_step,
    sample_flow_times,
    time_grid,
    velocity_target,
)


@dataclass
class UniFlowFlowMatchSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): the sample after this step, closer to data (larger t).
    """

    prev_sample: torch.Tensor


class UniFlowFlowMatchScheduler(SchedulerMixin, ConfigMixin):
    """
    Euler / Heun sampler of UniFlow's rectified flow from noise (t = 0) to data (t = 1), and the training-time
    helpers (`sample_training_timesteps`, `add_noise`, `get_velocity`).

    Args:
        num_train_timesteps (`int`, defaults to 1000): the network sees `num_train_timesteps * t`.
        schedule (`str`, defaults to `"linear"`): the time grid, `"linear"` or `"pow_<p>"`.
        shift (`float`, defaults to 1.0): SD3-style timestep shift of the grid (1 = none).
        solver (`str`, defaults to `"euler"`): `"euler"` (one network call per step) or `"heun"` (two: the trapezoid
            rule).
        euler_at_final (`bool`, defaults to `False`): with `"heun"`, end with a plain Euler step, as EDM's sampler
            and diffusers' `FlowMatchHeunDiscreteScheduler` do, so the network is never called at t = 1 (the data
            end, where it is trained least); `False` applies the trapezoid rule on the last step too.
        training_timestep_distribution (`str`, defaults to `"fat_lognormal"`): `"fat_lognormal"` (logit-normal
            with a `uniform_fraction` share of uniform times, the release's default), `"lognormal"` or `"uniform"`.
        logit_mean, logit_std (`float`): parameters of the logit-normal.
        uniform_fraction (`float`, defaults to 0.1).
    """

    config_name = "scheduler_config.json"
    # What `from_config` may swap in for it: only itself. diffusers' flow-match schedulers run the reverse time
    # convention (sigma = 1 - t, model output -v), so they are not drop-in for our pipelines' models; see
    # `flow_match_euler_sigmas` for the exact mapping. Betas, alphas and `prediction_type` do not apply to a
    # rectified flow.
    _compatibles = ["UniFlowFlowMatchScheduler"]
    order = 1
    init_noise_sigma = 1.0  # sampling starts from unit Gaussian noise (t = 0)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear",
        shift: float = 1.0,
        solver: str = "euler",
        euler_at_final: bool = False,
        training_timestep_distribution: str = "fat_lognormal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        uniform_fraction: float = 0.1,
    ):
        if solver not in ("euler", "heun"):
            raise ValueError(f"`solver` must be 'euler' or 'heun', got {solver!r}.")
        if not isinstance(euler_at_final, bool):
            raise ValueError(f"`euler_at_final` must be True or False, got {euler_at_final!r}.")
        if euler_at_final and solver != "heun":
            raise ValueError("`euler_at_final` ends Heun's method with an Euler step; it needs `solver='heun'`.")
        if training_timestep_distribution not in TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                "`training_timestep_distribution` must be 'fat_lognormal', 'lognormal' or 'uniform', got "
                f"{training_timestep_distribution!r}."
            )
        if not logit_std > 0:
            raise ValueError(f"`logit_std` must be positive, got {logit_std}.")
        if not 0 <= uniform_fraction <= 1:
            raise ValueError(f"`uniform_fraction` must be in [0, 1], got {uniform_fraction}.")
        time_grid(1, schedule, shift)  # validates schedule and shift
        self.order = 2 if solver == "heun" else 1
        self.num_inference_steps = None
        self.times = None
        self.timesteps = None
        self._step_index = None
        self._first_order_sample = None
        self._first_order_velocity = None

    @property
    def step_index(self):
        return self._step_index

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, schedule: str | None = None):
        """Set the `num_inference_steps`-step time grid (`schedule` overrides the config's for this run).

        `self.timesteps` holds the network timesteps in order of use (Heun visits each interior time twice).
        """
        grid = time_grid(num_inference_steps, schedule or self.config.schedule, self.config.shift)
        self.num_inference_steps = num_inference_steps
        if self.config.solver == "heun":
            # t_0, then (t_k, t_k) pairs: the corrector of step k-1 and the predictor of step k share t_k; the last
            # step's corrector calls the network at t_K = 1 unless that step is a plain Euler step
            starts = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
            if self.config.euler_at_final:
                starts = starts[:-1]
        else:
            starts = grid[:-1]
        self.times = grid.to(device)
        self.timesteps = (starts * self.config.num_train_timesteps).to(device)
        self._step_index = 0
        self._first_order_sample = None
        self._first_order_velocity = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> UniFlowFlowMatchSchedulerOutput | tuple:
        """Advance `sample` along the predicted velocity `model_output` (v = data - noise)."""
        if self._step_index is None:
            raise RuntimeError("Call `set_timesteps(...)` before `step(...)`.")
        if self._step_index >= len(self.timesteps):
            raise RuntimeError(f"All {len(self.timesteps)} steps of this schedule were already taken.")
        velocity = model_output.to(torch.float32)
        x = sample.to(torch.float32)
        if self.config.solver == "euler":
            t, t_next = self.times[self._step_index], self.times[self._step_index + 1]
            prev_sample = euler_step(x, velocity, t, t_next)
        elif self._first_order_sample is None:  # Heun predictor (with `euler_at_final`, the last step is just this)
            k = (self._step_index + 1) // 2
            t, t_next = self.times[k], self.times[k + 1]
            prev_sample = euler_step(x, velocity, t, t_next)
            if self._step_index + 1 < len(self.timesteps):
                self._first_order_sample, self._first_order_velocity = x, velocity
        else:  # Heun corrector: average the two slopes
            k = self._step_index // 2
            t, t_next = self.times[k], self.times[k + 1]
            prev_sample = self._first_order_sample + (t_next - t) * 0.5 * (self._first_order_velocity + velocity)
            self._first_order_sample = self._first_order_velocity = None
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return UniFlowFlowMatchSchedulerOutput(prev_sample=prev_sample)

    # ---------------------------------------------------------------- training
    def sample_training_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Draw `batch_size` network timesteps (1000 * t) from the training distribution."""
        t = sample_flow_times(
            batch_size,
            self.config.training_timestep_distribution,
            self.config.logit_mean,
            self.config.logit_std,
            self.config.uniform_fraction,
            generator=generator,
            device=device,
        )
        return t * self.config.num_train_timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = t * x_data + (1 - t) * noise, with `timesteps` = 1000 * t (one per leading row)."""
        return add_noise(original_samples, noise, timesteps, self.config.num_train_timesteps)

    @staticmethod
    def get_velocity(original_samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target of the network: v = x_data - noise."""
        return velocity_target(original_samples, noise)

    # ------------------------------------------------------------- diffusers
    def flow_match_euler_sigmas(self, num_inference_steps: int, schedule: str | None = None) -> np.ndarray:
        """The `sigmas` (= 1 - t) that make `FlowMatchEulerDiscreteScheduler` walk our Euler grid (pass -v)."""
        grid = time_grid(num_inference_steps, schedule or self.config.schedule, self.config.shift)
        return (1 - grid[:-1]).numpy()

    def __len__(self):
        return self.config.num_train_timesteps


__all__ = ["UniFlowFlowMatchScheduler", "UniFlowFlowMatchSchedulerOutput", "time_grid"]
