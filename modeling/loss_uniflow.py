# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow's layer-wise adaptive self-distillation loss, and a reduction across processes (shared with evaluation)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def process_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) in the default `torch.distributed` group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def reduce_across_processes(tensor: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """The sum or mean of `tensor` over the processes of the default `torch.distributed` group, detached. Every
    process must call it, with the tensor on a device of the group's backend (CUDA for NCCL)."""
    _, world_size = process_rank_and_world_size()
    reduced = tensor.detach().clone()
    if world_size > 1:
        torch.distributed.all_reduce(reduced)
    return reduced / world_size if reduction == "mean" else reduced


def adaptive_distillation_loss(
    student_hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    beta: float = 2.0,
    mode: str = "adaptive",
    sync_across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise adaptive self-distillation (UniFlow, Sec. 3) over the L layer outputs (not the embeddings):

        α_l = 1 - mean over tokens of cos(H_U^l, H_T^l),
        w_l = (l/L)·exp(β·α_l) / Σ_k (k/L)·exp(β·α_k)   (α in the weights carries no gradient),
        L_distill = Σ_l w_l·α_l;

    `mode="uniform"`: w_l = 1/L. `sync_across_processes`: the weights use α averaged over the processes
    (`reduce_across_processes`), as one process holding the global batch would. Returns (loss, weights (L,))."""
    if mode not in ("adaptive", "uniform"):
        raise ValueError(f"`mode` must be 'adaptive' or 'uniform', got {mode!r}.")
    if len(student_hidden_states) != len(teacher_hidden_states) or not student_hidden_states:
        raise ValueError(
            f"Need the same non-zero number of student and teacher layers, got {len(student_hidden_states)} and "
            f"{len(teacher_hidden_states)}."
        )
    pairs = list(zip(student_hidden_states, teacher_hidden_states))
    for layer, (student, teacher) in enumerate(pairs, start=1):
        if student.shape != teacher.shape:
            shapes = f"{tuple(student.shape)} vs {tuple(teacher.shape)}"
            raise ValueError(f"Student and teacher states of layer {layer} differ in shape: {shapes}.")
    alphas = torch.stack([1 - F.cosine_similarity(s.float(), t.float().detach(), dim=-1).mean() for s, t in pairs])
    num_layers = len(alphas)
    if mode == "uniform":
        weights = torch.full_like(alphas, 1.0 / num_layers)
    else:
        weight_alphas = reduce_across_processes(alphas) if sync_across_processes else alphas.detach()
        depth = torch.arange(1, num_layers + 1, device=alphas.device, dtype=alphas.dtype) / num_layers
        weights = depth * torch.exp(beta * weight_alphas)
        weights = weights / weights.sum()
    return (weights * alphas).sum(), weights.detach()
