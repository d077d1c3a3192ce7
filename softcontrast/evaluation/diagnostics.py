"""Label diagnostics: how a step's target treats same-class columns, and their summary from a run's log."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.memory import EMPTY_ID
from softcontrast.components.targets.base import Targets

#: The per-step diagnostics :func:`label_diagnostics` logs.
DIAGNOSTICS: tuple[str, ...] = ("same_class_negatives", "same_class_target_mass", "cancelled_precision")


def label_diagnostics(columns: Columns, rows: Rows, targets: Targets, labels: Tensor) -> dict[str, Tensor]:
    """How a step's target treats columns of the row's own class (labels are never trained on).

    * ``same_class_negatives``: share of the unmasked non-positive columns (before the
      builder) that hold an image of the row's class — InfoNCE's false-negative rate.
    * ``same_class_target_mass``: share of the target mass off the positive that lands on
      same-class columns (SCE, SLR, FNC-attract raise it; InfoNCE has none).
    * ``cancelled_precision``: share of same-class columns among those the builder
      masked or gave target mass to (0 when it cancelled none).

    Args:
        columns: the step's columns.
        rows: their anchor rows.
        targets: the builder's output for them.
        labels: class label of every sample id (``-1`` = unknown).

    Returns:
        Scalar tensors (no host synchronisation).
    """
    column_ids = columns.column_ids(rows.ids)
    row_labels = labels[rows.ids]
    known = (column_ids >= 0) & (row_labels[:, None] >= 0)
    same = known & (labels[column_ids.clamp(min=0)] == row_labels[:, None])
    off_positive = ~rows.positive
    candidates = off_positive & ~rows.mask & known
    cancelled = candidates & ((targets.mask & ~rows.mask) | (targets.target > 0))
    mass = targets.target * off_positive
    eps = torch.finfo(mass.dtype).tiny
    return {
        "same_class_negatives": (same & candidates).sum() / candidates.sum().clamp(min=1),
        "same_class_target_mass": (mass * same).sum() / mass.sum().clamp(min=eps),
        "cancelled_precision": (same & cancelled).sum() / cancelled.sum().clamp(min=1),
    }


def step_diagnostics(output: object, labels: Tensor | None) -> dict[str, Tensor]:
    """The diagnostics of one training step's output (a :class:`~softcontrast.methods.StepOutput`).

    With detected false negatives (``targets.found``, FNC):
    :func:`false_negative_diagnostics`, counted in images, also without labels;
    otherwise, with labels, :func:`label_diagnostics`. Empty when there is nothing to say.

    Args:
        output: the step's output (its first contrast's columns, rows and targets).
        labels: class label of every sample id (``-1`` = unknown), or ``None``.
    """
    columns, rows, targets = output.columns, output.rows, output.targets
    if columns is None or rows is None or targets is None:
        return {}
    with torch.no_grad():
        if targets.found is not None:
            ids = rows.ids[rows.first_of_each_image]
            column_ids = columns.ids
            if columns.lead:
                column_ids = torch.cat([column_ids.new_full((columns.lead,), EMPTY_ID), column_ids])
            return false_negative_diagnostics(column_ids, ids, targets.found, rows.positive, rows.mask,
                                              targets.target, labels)
        if labels is None:
            return {}
        return label_diagnostics(columns, rows, targets, labels)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (empty if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_quarter_means(records: list[dict], names: tuple[str, ...] = DIAGNOSTICS) -> dict[str, float]:
    """Mean of each named metric over the last quarter of the logged steps that have it."""
    means = {}
    for name in names:
        values = [r[name] for r in records if name in r and "step" in r]
        if values:
            tail = values[len(values) - max(1, len(values) // 4):]
            means[name] = sum(tail) / len(tail)
    return means


def first_of_each_id(column_ids: Tensor, flags: Tensor) -> Tensor:
    """``B×N`` flags that keep, per row, one flagged column of each distinct sample id.

    Args:
        column_ids: ``N`` sample id of every column.
        flags: ``B×N`` flagged columns (for example detected false negatives).
    """
    none = torch.iinfo(torch.long).min
    marked = column_ids[None, :].expand(flags.shape[0], -1).masked_fill(~flags, none)
    ordered, order = marked.sort(dim=1, stable=True)
    first = torch.ones_like(flags)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.zeros_like(flags).scatter(1, order, first & (ordered != none))


def false_negative_diagnostics(
    column_ids: Tensor, ids: Tensor, found: Tensor, positive: Tensor, mask: Tensor, target: Tensor,
    labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """False-negative diagnostics of a step with detection, counting distinct *images*.

    A detected image counts once however many of its view entries were detected.

    * ``false_negatives_per_row``: distinct images detected per image.
    * with ``labels``: ``cancelled_precision``, the share of same-class images among
      the detected (row image, detected image) pairs; ``same_class_negatives``, the
      share of same-class images among the distinct images of each anchor's unmasked
      non-positive columns; ``same_class_target_mass``, the share of the target mass
      off the positives that lands on same-class columns.

    Args:
        column_ids: ``N`` sample ids of the columns (``-1`` = empty, or a row's own key).
        ids: ``B`` sample ids of the local images.
        found: ``B×N`` detected false negatives of each image.
        positive: ``R×N`` positives of the anchor rows (``R = B·A``, image-major).
        mask: ``R×N`` columns excluded before detection.
        target: ``R×N`` target of the anchor rows.
        labels: class label of every sample id (``-1`` = unknown), or ``None``.

    Returns:
        Scalar tensors (no host synchronisation).
    """
    detected = first_of_each_id(column_ids, found)
    metrics = {"false_negatives_per_row": detected.sum(dim=1).float().mean()}
    if labels is None:
        return metrics
    known_column = column_ids >= 0
    column_labels = labels[column_ids.clamp(min=0)].masked_fill(~known_column, -1)
    image_labels = labels[ids]
    same = (column_labels[None, :] == image_labels[:, None]) & (image_labels[:, None] >= 0) & known_column[None, :]
    views = positive.shape[0] // ids.shape[0]
    row_same = same.repeat_interleave(views, dim=0)
    first_view = slice(None, None, views)  # the own image's columns are masked or positive there
    candidates = first_of_each_id(column_ids, ~mask[first_view] & ~positive[first_view] & known_column[None, :])
    mass = target * ~positive
    eps = torch.finfo(mass.dtype).tiny
    metrics.update({
        "same_class_negatives": (same & candidates).sum() / candidates.sum().clamp(min=1),
        "same_class_target_mass": (mass * row_same).sum() / mass.sum().clamp(min=eps),
        "cancelled_precision": (same & detected).sum() / detected.sum().clamp(min=1),
    })
    return metrics
