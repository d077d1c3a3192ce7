"""Catching NaN and infinity in training without a host synchronisation per step.

:class:`FiniteGuard` records, on the device, the first step whose loss parts were
not finite and which parts they were. Reading that record (:meth:`FiniteGuard.check`)
is the only synchronisation; the trainer does it when it logs and before every
checkpoint or export, together with :func:`check_finite_weights`. So no checkpoint
is ever written from a run that has gone non-finite, and the error names the first
bad step, however long ago it was.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn


class NonFiniteError(FloatingPointError):
    """The loss or the weights became NaN or infinite."""


ADVICE = "Lower the learning rate, train in fp32 (--precision no), or check the data for NaNs."


def loss_parts(loss: Tensor, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """The loss and every metric named ``loss*`` (the parts a method reports)."""
    parts = {name: value.detach() for name, value in metrics.items() if name.startswith("loss")}
    return {"loss": loss.detach(), **{name: value for name, value in parts.items() if name != "loss"}}


class FiniteGuard:
    """Remembers, on the device, the first step whose loss parts were not finite.

    Args:
        device: where the record lives (the training device).
        steps_per_epoch: optimizer steps per epoch (to name the epoch in errors).
    """

    def __init__(self, device: torch.device | str, steps_per_epoch: int):
        self.device, self.steps_per_epoch = torch.device(device), steps_per_epoch
        self.names: list[str] | None = None
        self.first_step = torch.full((1,), -1, dtype=torch.int64, device=self.device)
        self.values: Tensor | None = None

    def observe(self, step: int, parts: dict[str, Tensor]) -> None:
        """Records ``parts`` of ``step`` (1-based) if they are the first non-finite ones; no synchronisation."""
        if self.names is not None and list(parts) != self.names:
            raise ValueError(f"loss parts changed from {self.names} to {list(parts)}")
        values = torch.stack([value.float().reshape(()) for value in parts.values()])
        if self.values is None:
            self.names, self.values = list(parts), torch.zeros_like(values)
        first = (~torch.isfinite(values)).any() & (self.first_step < 0)
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.values = torch.where(first, values, self.values)

    def check(self, accelerator: Accelerator) -> None:
        """Raises if any process saw a non-finite loss part (one synchronisation, collective).

        Args:
            accelerator: gathers the records of all processes (call on all of them).

        Raises:
            NonFiniteError: names the first bad step, its epoch, and each part's value.
        """
        if self.values is None:
            return
        steps = accelerator.gather(self.first_step).cpu()
        values = accelerator.gather(self.values[None]).cpu()
        bad = [(int(step), rank) for rank, step in enumerate(steps.tolist()) if step >= 0]
        if not bad:
            return
        step, rank = min(bad)
        described = ", ".join(
            f"{name}={value}" for name, value in zip(self.names, values[rank].tolist()) if not _finite(value)
        )
        epoch = (step - 1) // self.steps_per_epoch + 1
        raise NonFiniteError(f"loss is not finite at step {step} (epoch {epoch}): {described}. {ADVICE}")


def check_finite_weights(model: nn.Module, accelerator: Accelerator, step: int) -> None:
    """Raises if a floating parameter or buffer of ``model`` is not finite on any process (collective).

    Raises:
        NonFiniteError: names the first non-finite tensor and the step.
    """
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
    flag = (~finite).to(torch.int64).reshape(1).to(accelerator.device)
    if not bool(accelerator.gather(flag).any()):
        return
    named = [*model.named_parameters(), *model.named_buffers()]
    name = next((n for n, t in named if t.is_floating_point() and not torch.isfinite(t).all()), "on another process")
    raise NonFiniteError(f"weights are not finite after step {step} ({name}). {ADVICE}")


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))
