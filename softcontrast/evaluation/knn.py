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


#: Test rows scored at once by :func:`knn_predict`.
TEST_CHUNK = 1024
#: Training rows scored at once by :func:`knn_predict`: with :data:`TEST_CHUNK`, about
#: 14 bytes × 1024 × 16384 ≈ 235 MB of scratch beside the features.
TRAIN_CHUNK = 16384


def top_k_lowest_index(values: Tensor, k: int) -> Tensor:
    """``R×k`` positions of the ``k`` largest values of each row of ``values``, in increasing
    position order; of equal values the lower positions are kept.

    The rule makes the choice unique, whatever ``torch.topk`` does with ties: every value
    above the row's ``k``-th largest is kept, then as many of the values equal to it as
    are still needed, the first ones.
    """
    top_values, top_index = values.topk(k, dim=1)
    kth = top_values[:, -1:]
    tied = values == kth
    if torch.equal(tied.sum(dim=1), (top_values == kth).sum(dim=1)):  # no tie reaches past the k-th: unique
        return top_index.sort(dim=1).values
    above = values > kth
    needed = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    keep = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= needed))
    return keep.nonzero()[:, 1].view(values.shape[0], k)


def nearest_neighbours(
    train_features: Tensor, test_features: Tensor, k: int, train_chunk: int = TRAIN_CHUNK
) -> tuple[Tensor, Tensor]:
    """Similarities and indices (``M×k``, in increasing index order) of the ``k`` training
    rows with the largest dot product with each test row; ties go to the lower index.

    The training rows are scored ``train_chunk`` at a time and merged into a running
    top-``k``, so the scratch memory is ``M × train_chunk``, never ``M × N``. The result
    does not depend on ``train_chunk``.
    """
    best_similarity = best_index = None
    for start in range(0, train_features.shape[0], train_chunk):
        similarity = test_features @ train_features[start : start + train_chunk].T
        chosen = top_k_lowest_index(similarity, min(k, similarity.shape[1]))
        similarity, index = similarity.gather(1, chosen), chosen + start
        if best_similarity is not None:  # the running best come first: all have lower indices
            similarity = torch.cat([best_similarity, similarity], dim=1)
            index = torch.cat([best_index, index], dim=1)
            kept = top_k_lowest_index(similarity, min(k, similarity.shape[1]))
            similarity, index = similarity.gather(1, kept), index.gather(1, kept)
        best_similarity, best_index = similarity, index
    return best_similarity, best_index


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = TEST_CHUNK,
    train_chunk_size: int = TRAIN_CHUNK,
) -> Tensor:
    """Weighted kNN (InstDisc): each of the ``k`` nearest training features (cosine)
    votes for its class with weight ``exp(similarity / temperature)``.

    Memory-bounded: ``chunk_size`` test rows are scored against ``train_chunk_size``
    training rows at a time, with a running top-``k`` merge (:func:`nearest_neighbours`),
    so the scratch memory is about ``14 × chunk_size × train_chunk_size`` bytes beside the
    features, never ``M × N``. Of training rows equally similar to a test row the lower
    indices are the neighbours, so the predictions do not depend on either chunk size.

    Args:
        train_features: ``N×F`` L2-normalised training features.
        train_labels: ``N`` class labels.
        test_features: ``M×F`` L2-normalised test features.
        num_classes: number of classes.
        k: neighbours (at most ``N`` are used).
        temperature: weighting temperature (> 0).
        chunk_size: test rows scored at once.
        train_chunk_size: training rows scored at once.

    Returns:
        ``M`` predicted labels.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    if chunk_size < 1 or train_chunk_size < 1:
        raise ValueError(f"kNN chunk sizes must be >= 1, got {chunk_size} test and {train_chunk_size} training rows")
    k = min(k, train_features.shape[0])
    labels = train_labels.to(train_features.device)
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        top_similarity, top_index = nearest_neighbours(
            train_features, test_features[start : start + chunk_size], k, train_chunk_size
        )
        votes = torch.zeros(top_index.shape[0], num_classes, device=top_similarity.device)
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
    num_workers: int = 0,
    shard: bool = False,
) -> float:
    """kNN top-1 accuracy (in ``[0, 1]``) of ``test`` against ``train`` backbone features.

    Args:
        backbone: the network evaluated.
        train: the kNN's memory.
        test: the images classified.
        recipe: the evaluation view's size and normalisation.
        k: neighbours.
        temperature: kNN temperature.
        batch_size: images per forward pass.
        device: where the features are computed and compared.
        num_workers: loader workers of a streamed split.
        shard: each process embeds its shard and all get every feature
            (:func:`~softcontrast.evaluation.features.extract_features`); every process must call it.
    """
    train_features = extract_features(backbone, train, recipe, batch_size, device, num_workers, shard=shard)
    test_features = extract_features(backbone, test, recipe, batch_size, device, num_workers, shard=shard)
    return knn_feature_accuracy(train_features, train.labels, test_features, test.labels, k, temperature)
