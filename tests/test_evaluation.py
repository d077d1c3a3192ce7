"""kNN monitor, linear probe and label diagnostics."""

import pytest
import torch
import torch.nn.functional as F

from softcontrast.components.columns import Columns
from softcontrast.components.memory import Memory
from softcontrast.components.targets import InfoNCE, SimilarityTargets
from softcontrast.components.targets.base import Targets
from softcontrast.data import ImageTensorDataset
from softcontrast.evaluation import (
    baseline_knn, knn_predict, knn_sweep, label_diagnostics, linear_probe_accuracy, raw_pixel_features,
)


def clusters(n_per_class, num_classes, dim, noise, seed):
    generator = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    points = centers[labels] + noise * torch.randn(len(labels), dim, generator=generator)
    return F.normalize(points, dim=1), labels


def test_knn_recovers_well_separated_classes():
    train, train_labels = clusters(30, 4, 16, 0.1, 0)
    test, test_labels = clusters(10, 4, 16, 0.1, 0)
    predicted = knn_predict(train, train_labels, test, 4, k=200, temperature=0.1, chunk_size=7)
    assert torch.equal(predicted, test_labels)


def test_knn_weights_close_neighbours_more():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    query = F.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    assert knn_predict(train, labels, query, 2, k=3, temperature=0.05).item() == 0
    assert knn_predict(train, labels, query, 2, k=3, temperature=1000.0).item() == 1


def test_knn_sweep_covers_every_k_and_temperature():
    train, train_labels = clusters(30, 4, 16, 0.1, 0)
    test, test_labels = clusters(10, 4, 16, 0.1, 0)
    sweep = knn_sweep(train, train_labels, test, test_labels)
    assert set(sweep) == {f"k={k},T={t}" for k in (1, 5, 20, 50, 200) for t in (0.05, 0.1)}
    assert all(value == 1.0 for value in sweep.values())


def test_knn_rejects_bad_settings():
    features = torch.eye(2)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(features, torch.tensor([0, 1]), features, 2, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(features, torch.tensor([0, 1]), features, 2, temperature=0)


def test_linear_probe_separates_linearly_separable_features():
    train, train_labels = clusters(40, 3, 8, 0.2, 1)
    test, test_labels = clusters(20, 3, 8, 0.2, 1)
    assert linear_probe_accuracy(train, train_labels, test, test_labels) > 0.95


def test_linear_probe_is_at_chance_on_shuffled_labels():
    features, labels = clusters(200, 4, 8, 0.2, 2)
    generator = torch.Generator().manual_seed(0)
    shuffled = labels[torch.randperm(len(labels), generator=generator)]
    assert linear_probe_accuracy(features[::2], labels[::2], features[1::2], labels[1::2]) > 0.95
    accuracy = linear_probe_accuracy(features[::2], shuffled[::2], features[1::2], shuffled[1::2])
    assert abs(accuracy - 0.25) < 0.08


def test_raw_pixel_baseline_equals_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([0, 1, 2] * 4)
    train = ImageTensorDataset(images[:9], labels[:9], ["a", "b", "c"])
    test = ImageTensorDataset(images[9:], labels[9:], ["a", "b", "c"])
    pixels = images.double().flatten(1) / 255
    centred = pixels - pixels[:9].mean(dim=0)
    unit = centred / centred.norm(dim=1, keepdim=True)
    similarity = unit[9:] @ unit[:9].T
    expected = []
    for row in similarity:
        top = row.topk(5)
        votes = torch.zeros(3, dtype=torch.float64).scatter_add_(0, labels[:9][top.indices], (top.values / 0.1).exp())
        expected.append(int(votes.argmax()))
    expected_accuracy = (torch.tensor(expected) == labels[9:]).double().mean().item()
    assert baseline_knn(train, test, k=5, temperature=0.1)["raw_pixels"] == pytest.approx(expected_accuracy)
    _, raw_test = raw_pixel_features(train, test)
    torch.testing.assert_close(raw_test.double(), unit[9:], atol=1e-6, rtol=0)


def own_key_columns(keys, ids, memory):
    """Columns ``[k_i | Q]`` and their query rows."""
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=False)
    return columns, columns.rows(ids, [None], keys=keys)


def test_label_diagnostics_measure_same_class_columns():
    memory = Memory(capacity=4, dim=2)
    memory.enqueue(F.normalize(torch.randn(4, 2), dim=1), torch.tensor([10, 11, 12, 13]))
    labels = torch.full((14,), -1)
    labels[[0, 10, 11]] = 0
    labels[[12, 13]] = 1
    columns, rows = own_key_columns(F.normalize(torch.randn(1, 2), dim=1), torch.tensor([0]), memory)
    # Columns: [pos | id10 (same) | id11 (same) | id12 | id13].
    infonce = label_diagnostics(columns, rows, InfoNCE()(columns, rows), labels)
    assert infonce["same_class_negatives"].item() == pytest.approx(0.5)
    assert infonce["same_class_target_mass"].item() == 0.0
    assert infonce["cancelled_precision"].item() == 0.0

    target = torch.tensor([[0.5, 0.25, 0.0, 0.25, 0.0]])
    mask = rows.mask.clone()
    mask[0, 2] = True  # the builder cancels id 11 (same class) by masking it
    diagnostics = label_diagnostics(columns, rows, Targets(target, mask), labels)
    assert diagnostics["same_class_target_mass"].item() == pytest.approx(0.5)
    # cancelled: id10 (mass), id11 (masked), id12 (mass) -> 2 of 3 same class
    assert diagnostics["cancelled_precision"].item() == pytest.approx(2 / 3)


def test_sce_target_mass_follows_similarity_to_same_class_keys():
    keys, labels = clusters(8, 2, 8, 0.05, 3)
    memory = Memory(capacity=16, dim=8)
    memory.enqueue(keys, torch.arange(16))
    ids = torch.tensor([0, 9])
    columns, rows = own_key_columns(keys[ids], ids, memory)
    diagnostics = label_diagnostics(columns, rows, SimilarityTargets(0.5, 0.05)(columns, rows), labels)
    assert diagnostics["same_class_target_mass"].item() > 0.99
    assert diagnostics["same_class_negatives"].item() == pytest.approx(7 / 15)
