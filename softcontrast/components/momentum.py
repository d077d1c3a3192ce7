"""Momentum (EMA) copy of an encoder and the cosine momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Momentum at ``step``: rises from ``base`` at step 0 to ``final`` at ``total_steps``
    along a half cosine (BYOL's schedule). ``base == final`` gives a constant."""
    if not 0 <= base <= 1 or not 0 <= final <= 1:
        raise ValueError(f"momentum must lie in [0, 1], got base={base}, final={final}")
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumEncoder(nn.Module):
    """An EMA copy of a module: ``θ_g ← m·θ_g + (1−m)·θ_f``, parameters only.

    The copy never receives gradients. Buffers (batch-norm statistics) are the
    copy's own, updated by its forward passes in training mode.

    Args:
        online: the module to follow (copied at construction).
    """

    def __init__(self, online: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(online)
        self.module.requires_grad_(False)

    def forward(self, *args, **kwargs):
        """Runs the copy without recording gradients."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """Moves the copy towards ``online`` with one fused EMA step."""
        ema: list[Tensor] = [p for p in self.module.parameters()]
        current: list[Tensor] = [p.detach() for p in online.parameters()]
        if len(ema) != len(current):
            raise ValueError("the online module's parameters do not match the momentum copy")
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, current, alpha=1.0 - momentum)
