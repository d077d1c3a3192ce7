"""The target-builder interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.precision import full_precision


@dataclass(frozen=True)
class Targets:
    """A soft target over the logit columns.

    Attributes:
        target: ``B×N`` rows that are probability distributions, zero where masked.
        mask: ``B×N`` columns excluded from the softmax.
        found: ``B×N`` flags of the columns a detector found as false negatives of
            each image (FNC), or ``None``.
    """

    target: Tensor
    mask: Tensor
    found: Tensor | None = None


class TargetBuilder(Protocol):
    """Anything that turns the step's columns and anchor rows into :class:`Targets`.
    Builders never change their inputs.

    A builder may also define ``after_optimizer_step(step, total_steps, blocks)``: the
    step calls it after the optimizer step with the step's gathered blocks of columns
    (``(embeddings, ids, views)`` each), e.g. to refresh a bank or a schedule."""

    def __call__(self, columns: Columns, rows: Rows) -> Targets:
        """Builds the target of every row.

        Args:
            columns: the step's columns (block, memory, ids).
            rows: the anchor rows: positives, mask, keys and detection embeddings.
        """
        ...


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over unmasked columns, in float32 at least; all-masked rows give all zeros (not NaN)."""
    probabilities = full_precision(scores).masked_fill(mask, float("-inf")).softmax(dim=-1)
    return probabilities.nan_to_num(0.0)
