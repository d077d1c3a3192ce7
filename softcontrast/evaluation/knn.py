"""Weighted kNN classification of frozen features (InstDisc / MoCo monitor)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe
from softcontrast.data import ImageSource, ImageTensorDataset
from softcontrast.evaluation.features import extract_features

#: The kNN settings ``softcontrast evaluate`` sweeps.
SWEEP_K: tuple[int, ...] = (1, 5, 20, 50, 200)
SWEEP_TEMPERATURES: tuple[float, ...] = (0.05, 0.1)


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

    Args:
        train_features: ``N×F`` L2-normalised training features.
        train_labels: ``N`` class labels.
        test_features: ``M×F`` L2-normalised test features.
        num_classes: number of classes.
        k: neighbours (at most ``N`` are used).
        temperature: weighting temperature (> 0).
        chunk_size: test rows scored at once.

    Returns:
        ``M`` predicted labels.
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


def knn_feature_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """kNN top-1 accuracy (in ``[0, 1]``) of test features against training features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (predicted.cpu() == test_labels.cpu()).float().mean().item()


def knn_sweep(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: tuple[int, ...] = SWEEP_K,
    temperatures: tuple[float, ...] = SWEEP_TEMPERATURES,
) -> dict[str, float]:
    """kNN accuracy for every ``k`` and temperature, keyed ``"k=K,T=T"``."""
    return {
        f"k={k},T={temperature}": knn_feature_accuracy(
            train_features, train_labels, test_features, test_labels, k, temperature
        )
        for k in ks
        for temperature in temperatures
    }


def knn_accuracy(
    backbone: nn.Module,
    train: ImageTensorDataset | ImageSource,
    test: ImageTensorDataset | ImageSource,
    recipe: ViewRecipe,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> float:
    """kNN top-1 accuracy (in ``[0, 1]``) of ``test`` against ``train`` backbone features."""
    train_features = extract_features(backbone, train, recipe, batch_size, device)
    test_features = extract_features(backbone, test, recipe, batch_size, device)
    return knn_feature_accuracy(train_features, train.labels, test_features, test.labels, k, temperature)
