"""Evaluation: weighted kNN monitor and linear probe on frozen backbone features."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe, center_view
from softcontrast.components.columns import LogitColumns
from softcontrast.components.targets.base import Targets
from softcontrast.data import ImageTensorDataset, LazyImageFolder


def _image_batches(split: "ImageTensorDataset | LazyImageFolder", batch_size: int, num_workers: int) -> Iterator[Tensor]:
    if isinstance(split, ImageTensorDataset):
        for start in range(0, len(split), batch_size):
            yield split.images[start : start + batch_size]
        return
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, num_workers=num_workers)
    for images, _ in loader:
        yield images


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    split: "ImageTensorDataset | LazyImageFolder",
    recipe: ViewRecipe,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Tensor:
    """L2-normalised backbone features of every image of a split (eval mode, no augmentation).

    Args:
        backbone: the network to evaluate (its train/eval mode is restored).
        split: images to embed.
        recipe: gives the evaluation size and normalisation.
        batch_size: images per forward pass.
        device: where to compute.
        num_workers: loader workers for a lazy split.

    Returns:
        ``N×F`` features on ``device``.
    """
    was_training = backbone.training
    backbone.eval()
    features = [
        F.normalize(backbone(center_view(images.to(device), recipe)).float(), dim=-1)
        for images in _image_batches(split, batch_size, num_workers)
    ]
    backbone.train(was_training)
    return torch.cat(features)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN (InstDisc): each of the ``k`` nearest training features (cosine)
    votes for its class with weight ``exp(similarity / temperature)``.

    Returns:
        ``N_test`` predicted labels.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    k = min(k, train_features.shape[0])
    labels = train_labels.to(train_features.device)
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        votes = torch.zeros(top_index.shape[0], num_classes, device=similarity.device)
        votes.scatter_add_(1, labels[top_index], (top_similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(
    backbone: nn.Module,
    train: "ImageTensorDataset | LazyImageFolder",
    test: "ImageTensorDataset | LazyImageFolder",
    recipe: ViewRecipe,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> float:
    """kNN top-1 accuracy (in ``[0, 1]``) of ``test`` against ``train`` features."""
    train_features = extract_features(backbone, train, recipe, batch_size, device)
    test_features = extract_features(backbone, test, recipe, batch_size, device)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    predicted = knn_predict(train_features, train.labels, test_features, num_classes, k, temperature)
    return (predicted.cpu() == test.labels.cpu()).float().mean().item()


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of a linear classifier fit on frozen features.

    The features are computed once; the classifier is trained with SGD (momentum
    0.9, cosine schedule) on standardised features.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    y_train = train_labels.to(x_train.device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = nn.Linear(x_train.shape[1], num_classes).to(x_train.device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=generator).to(x_train.device)
        for start in range(0, x_train.shape[0], batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    with torch.no_grad():
        predicted = classifier(x_test).argmax(dim=1)
    return (predicted.cpu() == test_labels.cpu()).float().mean().item()


def label_diagnostics(columns: LogitColumns, targets: Targets, labels: Tensor) -> dict[str, Tensor]:
    """How a step's target treats columns of the row's own class (labels are never trained on).

    * ``same_class_negatives``: share of the unmasked non-positive columns (before the
      builder) that hold an image of the row's class — InfoNCE's false-negative rate.
    * ``same_class_target_mass``: share of the target mass off the positive that lands on
      same-class columns (SCE, SANE, FNC-attract raise it; InfoNCE has none).
    * ``cancelled_precision``: share of same-class columns among those the builder
      masked or gave target mass to (for FNC: the precision of the detected false
      negatives; 0 when it cancelled none).

    Args:
        columns: the step's columns.
        targets: the builder's output for them.
        labels: class label of every sample id (``-1`` = unknown).

    Returns:
        Scalar tensors (no host synchronisation).
    """
    column_ids = columns.column_ids[None, :].expand(columns.mask.shape[0], -1)
    if not columns.in_batch:
        column_ids = torch.cat([columns.row_ids[:, None], column_ids], dim=1)
    row_labels = labels[columns.row_ids]
    known = (column_ids >= 0) & (row_labels[:, None] >= 0)
    same = known & (labels[column_ids.clamp(min=0)] == row_labels[:, None])
    off_positive = ~columns.positive_one_hot().bool()
    candidates = off_positive & ~columns.mask & known
    cancelled = candidates & ((targets.mask & ~columns.mask) | (targets.target > 0))
    mass = targets.target * off_positive
    eps = torch.finfo(mass.dtype).tiny
    return {
        "same_class_negatives": (same & candidates).sum() / candidates.sum().clamp(min=1),
        "same_class_target_mass": (mass * same).sum() / mass.sum().clamp(min=eps),
        "cancelled_precision": (same & cancelled).sum() / cancelled.sum().clamp(min=1),
    }


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


def view_false_negative_diagnostics(
    column_ids: Tensor, ids: Tensor, found: Tensor, positive: Tensor, mask: Tensor, target: Tensor,
    labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """False-negative diagnostics of a multi-view step, counting distinct *images*.

    A detected image counts once however many of its view entries were detected.

    * ``false_negatives_per_row``: distinct images detected per image.
    * with ``labels``: ``cancelled_precision``, the share of same-class images among
      the detected (row image, detected image) pairs; ``same_class_negatives``, the
      share of same-class images among the distinct images of each anchor's unmasked
      non-positive columns; ``same_class_target_mass``, the share of the target mass
      off the positives that lands on same-class columns.

    Args:
        column_ids: ``N`` sample ids of the columns (``-1`` = empty).
        ids: ``B`` sample ids of the local images.
        found: ``B×N`` detected false negatives of each image.
        positive: ``R×N`` positives of the anchor rows (``R = B·V``, image-major).
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
