# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""UniFlow's training loss beyond the flow head's own MSE: layer-wise adaptive self-distillation, and the one
reduction across processes that it, the training logs and the evaluation share (`reduce_across_processes`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def process_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) in the default `torch.distributed` group, or (0, 1) without one.

    The one source of the world that UniFlow's training and evaluation use, whatever launched them (`torchrun`,
    `accelerate launch`, DeepSpeed, FSDP): the group the reductions actually run over. Accelerate's own count can
    disagree with it (on a machine without an accelerator, `torchrun` without `--use-cpu` / `ACCELERATE_USE_CPU`
    leaves its state at one process while the group holds all of them)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def reduce_across_processes(tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The sum or mean of `tensor` over the processes of the default `torch.distributed` group, detached (a copy;
    `tensor` itself without a group). Every process must call it. The tensor must be on a device of the group's
    backend (CUDA for NCCL)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")
    _, world_size = process_rank_and_world_size()
    if world_size == 1:
        return tensor.detach()
    reduced = tensor.detach().clone()
    torch.distributed.all_reduce(reduced)
    return reduced / world_size if reduction == "mean" else reduced


def adaptive_distillation_loss(
    student_hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    beta: float = 2.0,
    mode: str = "adaptive",
    sync_across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise adaptive self-distillation (UniFlow, Sec. 3): for layers l = 1..L,

        α_l = 1 - mean over tokens of cos(H_U^l, H_T^l),
        w_l = (l/L)·exp(β·α_l) / Σ_k (k/L)·exp(β·α_k)   (α in the weights carries no gradient),
        L_distill = Σ_l w_l·α_l.

    `mode="uniform"` uses w_l = 1/L. Pass the L layer outputs (not the embeddings). Returns (loss, weights (L,)).

    `sync_across_processes=True` averages the (detached) α over the processes of the default `torch.distributed`
    group (`reduce_across_processes`) before the weights are computed (a no-op without one): data-parallel training then weights the layers by
    the discrepancies of the global batch, as one process holding the whole batch would, instead of each rank
    by its own shard. Every process must then call this function (as every rank does in a training step).
    """
    if mode not in ("adaptive", "uniform"):
        raise ValueError(f"`mode` must be 'adaptive' or 'uniform', got {mode!r}.")
    if len(student_hidden_states) != len(teacher_hidden_states) or not student_hidden_states:
        raise ValueError(
            f"Need the same non-zero number of student and teacher layers, got {len(student_hidden_states)} and "
            f"{len(teacher_hidden_states)}."
        )
    for layer, (student, teacher) in enumerate(zip(student_hidden_states, teacher_hidden_states), start=1):
        if student.shape != teacher.shape:
            raise ValueError(
                f"Student and teacher states of layer {layer} differ in shape: {tuple(student.shape)} vs "
                f"{tuple(teacher.shape)}."
            )
    alphas = torch.stack(
        [
            1 - F.cosine_similarity(s.float(), t.float().detach(), dim=-1).mean()
            for s, t in zip(student_hidden_states, teacher_hidden_states)
        ]
    )
    num_layers = len(alphas)
    if mode == "uniform":
        weights = torch.full_like(alphas, 1.0 / num_layers)
    else:
        weight_alphas = reduce_across_processes(alphas) if sync_across_processes else alphas.detach()
        depth = torch.arange(1, num_layers + 1, device=alphas.device, dtype=alphas.dtype) / num_layers
        weights = depth * torch.exp(beta * weight_alphas)
        weights = weights / weights.sum()
    return (weights * alphas).sum(), weights.detach()


__all__ = ["adaptive_distillation_loss", "process_rank_and_world_size", "reduce_across_processes"]
