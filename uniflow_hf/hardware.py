# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""`choose_dtype("auto")`: bfloat16 where the device runs it natively (CUDA compute capability >= 8.0; x86 CPUs with
AMX-BF16 or AVX512-BF16), float32 elsewhere. `UNIFLOW_HF_CPUINFO` names a file read instead of `/proc/cpuinfo` (the
tests' `pytest --cpu-flags` writes one)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# x86 CPU flags (as /proc/cpuinfo names them) under which oneDNN runs bfloat16 matmuls natively.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO_PATH = os.environ.get("UNIFLOW_HF_CPUINFO") or "/proc/cpuinfo"


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen, e.g. "bfloat16 (auto: CPU ... has amx_bf16 ...)"."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of `CPUINFO_PATH` (`{}` without the file)."""
    entries = {}
    try:
        with open(CPUINFO_PATH) as handle:
            for line in handle:
                if not line.strip() and entries:
                    break
                key, _, value = line.partition(":")
                if value:
                    entries[key.strip()] = value.strip()
    except OSError:
        return {}
    return entries


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where they can't be read."""
    cpuinfo = _cpuinfo()
    return frozenset((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())


def cpu_model_name() -> str:
    import platform

    return _cpuinfo().get("model name") or platform.processor() or "(model unknown)"


def cpu_bf16_support() -> tuple[bool, str]:
    """(whether this CPU runs bfloat16 matmuls natively, why)."""
    import torch

    flags, model = cpu_flags(), cpu_model_name()
    capability = torch.backends.cpu.get_cpu_capability()
    if not flags:
        return False, f"CPU {model}: no flags to read ({CPUINFO_PATH} is missing), so bfloat16 is not assumed"
    found = [flag for flag in FAST_BF16_CPU_FLAGS if flag in flags]
    if found:
        return True, f"CPU {model} has {' and '.join(found)} (torch CPU capability {capability})"
    vector = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no AVX2"
    return False, (
        f"CPU {model} has neither AMX-BF16 nor AVX512-BF16 ({vector}; torch CPU capability {capability}): "
        "bfloat16 would be emulated, far slower than float32"
    )


def choose_dtype(choice="auto", device=None) -> DtypeChoice:
    """Resolve "auto", "float32", "bfloat16", "float16" (or the torch dtype) for `device` (default: CUDA if
    available, else the CPU). An explicit choice is kept; its reason says when it will be slow on this device."""
    import torch

    if isinstance(choice, torch.dtype):
        choice = str(choice).removeprefix("torch.")
    if choice not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {choice!r}: use one of {', '.join(DTYPE_CHOICES)} (or the torch dtype).")
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if choice == "float32":
        return DtypeChoice(torch.float32, "requested")
    if device.type == "cuda":
        fast_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        native = "supports bfloat16" if fast_bf16 else "has no native bfloat16 (compute capability below 8.0)"
        why = f"CUDA device {name} {native}"
    elif device.type == "cpu":
        fast_bf16, why = cpu_bf16_support()
    else:
        fast_bf16, why = False, f"no bfloat16 detection for {device.type} devices, so bfloat16 is not assumed"
    if choice == "auto":
        return DtypeChoice(torch.bfloat16 if fast_bf16 else torch.float32, f"auto: {why}")
    if device.type == "cpu" and choice == "float16":
        return DtypeChoice(torch.float16, "requested; slow: CPU float16 matmuls run through conversions")
    if device.type == "cpu" and not fast_bf16:
        return DtypeChoice(getattr(torch, choice), f"requested; slow: {why}")
    return DtypeChoice(getattr(torch, choice), "requested")


def resolve_dtype(choice="auto", device=None) -> torch.dtype:
    return choose_dtype(choice, device).dtype
