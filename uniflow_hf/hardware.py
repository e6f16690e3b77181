# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The fastest safe dtype for the machine at hand: `resolve_dtype("auto")` picks bfloat16 where the hardware runs it
fast and float32 elsewhere, from what it detects (never from what it assumes).

bfloat16 is fast on CUDA devices that support it natively (`torch.cuda.is_bf16_supported(including_emulation=False)`,
compute capability 8.0 and up) and on x86 CPUs with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`), the instructions
oneDNN's bfloat16 matmuls run on. Elsewhere it is emulated: on an AVX2-only AMD EPYC a bfloat16 Linear layer runs ~8x
slower than a float32 one (10 against 87 GFLOP/s on one thread), and a bfloat16 `torch.mm` with a row-major right
operand ~200x slower (0.4 GFLOP/s). A reconstruction in bfloat16 is 49-58 dB PSNR from the float32 one
(tests/test_hardware.py guards >= 40 dB), so "auto" trades no visible quality for the speed.

Testing override: the environment variable `UNIFLOW_HF_CPUINFO` names a file read instead of `/proc/cpuinfo` (read
once, at import), so that a test suite, and the processes it starts, can run as on another CPU (the project's
`pytest --cpu-flags "amx_bf16 avx512_bf16"` writes such a file). Nothing else reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
# x86 CPU flags (as /proc/cpuinfo names them) under which oneDNN runs bfloat16 matmuls natively.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO_PATH = os.environ.get("UNIFLOW_HF_CPUINFO") or "/proc/cpuinfo"  # the variable: a testing override


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen, e.g. for a CLI to print: `str(choice)` reads
    "bfloat16 (auto: CPU ... has amx_bf16 ...)"."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def read_cpuinfo(path: str | None = None) -> dict[str, str]:
    """The first processor's entries of `/proc/cpuinfo` (`{"model name": ..., "flags": ...}`), or `{}` where there
    is no such file (not Linux)."""
    entries = {}
    try:
        with open(path or CPUINFO_PATH) as handle:
            for line in handle:
                if not line.strip():
                    if entries:
                        break
                    continue
                key, _, value = line.partition(":")
                entries[key.strip()] = value.strip()
    except OSError:
        return {}
    return entries


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from `/proc/cpuinfo` (x86 `flags`, Arm `Features`); empty where they can't be read."""
    cpuinfo = read_cpuinfo()
    return frozenset((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())


def cpu_model_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`, else `platform.processor()`), or "(model unknown)"."""
    import platform

    return read_cpuinfo().get("model name") or platform.processor() or "(model unknown)"


def cpu_bf16_support() -> tuple[bool, str]:
    """(whether this CPU runs bfloat16 matmuls natively, why), from its flags and torch's CPU capability."""
    import torch

    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    model = cpu_model_name()
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


def cuda_bf16_support(device) -> tuple[bool, str]:
    """(whether the CUDA device runs bfloat16 natively, why)."""
    import torch

    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"CUDA device {name} supports bfloat16"
    return False, f"CUDA device {name} has no native bfloat16 (compute capability below 8.0)"


def choose_dtype(choice="auto", device=None) -> DtypeChoice:
    """Resolve a dtype choice for `device` (default: CUDA if available, else the CPU) into a `DtypeChoice`.

    `choice` is "auto", "float32", "bfloat16", "float16" or a torch floating dtype of those three. "auto" picks
    bfloat16 where the device runs it natively (see the module docstring) and float32 elsewhere. An explicit choice
    is kept; its reason warns when it will be slow on this device (bfloat16 or float16 on a CPU without the
    instructions for it)."""
    import torch

    if isinstance(choice, torch.dtype):
        choice = str(choice).removeprefix("torch.")
    if choice not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {choice!r}: use one of {', '.join(DTYPE_CHOICES)} (or the torch dtype).")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if choice == "float32":
        return DtypeChoice(torch.float32, "requested")
    if device.type == "cuda":
        fast_bf16, why = cuda_bf16_support(device)
    elif device.type == "cpu":
        fast_bf16, why = cpu_bf16_support()
    else:
        fast_bf16, why = False, f"no bfloat16 detection for {device.type} devices, so bfloat16 is not assumed"
    if choice == "auto":
        return DtypeChoice(torch.bfloat16 if fast_bf16 else torch.float32, f"auto: {why}")
    dtype = getattr(torch, choice)
    if device.type == "cpu" and choice == "float16":
        return DtypeChoice(dtype, "requested; slow: CPU float16 matmuls run through conversions, float32 is faster")
    if device.type == "cpu" and not fast_bf16:
        return DtypeChoice(dtype, f"requested; slow: {why}")
    return DtypeChoice(dtype, "requested")


def resolve_dtype(choice="auto", device=None) -> torch.dtype:
    """The torch dtype `choose_dtype(choice, device)` resolves to (see there)."""
    return choose_dtype(choice, device).dtype


__all__ = ["DTYPE_CHOICES", "DtypeChoice", "choose_dtype", "cpu_bf16_support", "cpu_model_name", "resolve_dtype"]
