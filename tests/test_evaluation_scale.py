"""Evaluation at scale: chunked kNN, the torch linear probe, bounded baselines, sharded features."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import resnet
from softcontrast.data import ImageTensorDataset
from softcontrast.evaluation import baseline_knn, extract_features, knn_accuracy, knn_predict, linear_probe_accuracy
from softcontrast.evaluation.baselines import baseline_splits
from softcontrast.evaluation.features import gather_shards, shard_bounds
from softcontrast.evaluation.knn import nearest_neighbours, top_k_lowest_index
from softcontrast.evaluation.probe import (
    TORCH_PROBE_ABOVE, fit_torch_probe, probe_solver, torch_linear_probe_accuracy,
)
from softcontrast.training import TrainConfig, Trainer, make_accelerator

FEATURES_SCRIPT = Path(__file__).parent / "distributed" / "features_two_process.py"


def grid_features(seed: int, rows: int, dim: int = 3) -> torch.Tensor:
    """Features with values in {-1, 0, 1}: dot products are exact and ties are frequent."""
    return torch.randint(-1, 2, (rows, dim), generator=torch.Generator().manual_seed(seed)).float()


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), train_rows=st.integers(1, 60), test_rows=st.integers(1, 20),
       k=st.integers(1, 70), test_chunk=st.integers(1, 25), train_chunk=st.integers(1, 70))
def test_chunked_knn_equals_the_unchunked_one_ties_included(seed, train_rows, test_rows, k, test_chunk, train_chunk):
    train, test = grid_features(seed, train_rows), grid_features(seed + 1, test_rows)
    labels = torch.randint(0, 4, (train_rows,), generator=torch.Generator().manual_seed(seed))
    whole = knn_predict(train, labels, test, 4, k, 0.5, chunk_size=test_rows, train_chunk_size=train_rows)
    chunked = knn_predict(train, labels, test, 4, k, 0.5, chunk_size=test_chunk, train_chunk_size=train_chunk)
    assert torch.equal(whole, chunked)
    similarity, index = nearest_neighbours(train, test, min(k, train_rows), train_chunk)
    scores = test @ train.T
    for row in range(test_rows):  # the k most similar; of equals, the lower indices
        order = sorted(range(train_rows), key=lambda j: (-float(scores[row, j]), j))[: min(k, train_rows)]
        assert index[row].tolist() == sorted(order)
    assert torch.equal(similarity, scores.gather(1, index))


def test_equally_similar_neighbours_are_the_lowest_indices_whatever_the_chunks():
    train = torch.tensor([[1.0, 0.0]] * 6)  # all tie
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    for chunk in (1, 2, 4, 6):
        _, index = nearest_neighbours(train, query, 2, chunk)
        assert index.tolist() == [[0, 1]]
        assert knn_predict(train, labels, query, 2, k=2, train_chunk_size=chunk).item() == 1
    values = torch.tensor([[3.0, 5.0, 5.0, 1.0, 5.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    assert top_k_lowest_index(values, 2).tolist() == [[1, 2], [0, 4]]


def test_knn_rejects_empty_chunks():
    with pytest.raises(ValueError, match="chunk"):
        knn_predict(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2, train_chunk_size=0)


def blobs(rows_per_class: int, classes: int, dim: int, noise: float, seed: int, centers_seed: int = 0):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(centers_seed))
    labels = torch.arange(classes).repeat_interleave(rows_per_class)
    noise_draw = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return centers[labels] + noise * noise_draw, labels


@pytest.mark.parametrize("noise", [0.3, 1.5])
def test_the_torch_probe_reaches_the_accuracy_of_scikit_learn(noise):
    train, train_labels = blobs(60, 4, 8, noise, seed=1)
    test, test_labels = blobs(40, 4, 8, noise, seed=2)
    sklearn = linear_probe_accuracy(train, train_labels, test, test_labels, solver="sklearn")
    torch_probe = linear_probe_accuracy(train, train_labels, test, test_labels, solver="torch")
    assert torch_probe == pytest.approx(sklearn, abs=1 / len(test))
    assert (sklearn == 1.0) == (noise < 1)


def test_the_probe_switches_to_torch_above_the_size_limit():
    train, train_labels = blobs(TORCH_PROBE_ABOVE // 2 + 1, 2, 2, 1.0, seed=1)
    test, test_labels = blobs(50, 2, 2, 1.0, seed=2)
    assert len(train) > TORCH_PROBE_ABOVE
    assert [probe_solver(TORCH_PROBE_ABOVE), probe_solver(TORCH_PROBE_ABOVE + 1)] == ["sklearn", "torch"]
    assert probe_solver(10, "torch") == "torch"
    automatic = linear_probe_accuracy(train, train_labels, test, test_labels, max_iter=20)
    assert automatic == torch_linear_probe_accuracy(train, train_labels, test, test_labels, max_iter=20)
    with pytest.raises(ValueError, match="solver"):
        linear_probe_accuracy(train, train_labels, test, test_labels, solver="liblinear")


def test_the_torch_probe_keeps_one_mini_batch_for_the_gradient():
    features, labels = blobs(250, 4, 6, 0.5, seed=3)
    saved_rows = []

    def pack(tensor):
        saved_rows.append(tensor.shape[0] if tensor.ndim else 1)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        weight, bias, mean, std = fit_torch_probe(features, labels, 4, max_iter=5, batch_size=64)
    assert saved_rows and max(saved_rows) <= 64  # what backward keeps: one batch of rows, or the weights
    assert weight.shape == (4, 6) and torch.isfinite(weight).all()
    torch.testing.assert_close(mean, features.mean(dim=0))
    torch.testing.assert_close(std, features.std(dim=0, unbiased=False))


def tiny_split(n: int, seed: int, size: int = 4) -> ImageTensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return ImageTensorDataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def test_baselines_above_the_limits_use_a_seeded_subset_and_say_so():
    train, test = tiny_split(40, 0), tiny_split(12, 1)
    result = baseline_knn(train, test, k=5, max_train=20, max_test=8, seed=3)
    assert result["raw_pixels_subset"] == {"train": 20, "test": 8}
    cut_train, cut_test, subset = baseline_splits(train, test, seed=3, max_train=20, max_test=8)
    assert torch.equal(cut_train.images, train.subset(20, seed=3).images) and len(cut_test) == 8
    whole = baseline_knn(cut_train, cut_test, k=5)
    assert "raw_pixels_subset" not in whole and whole["raw_pixels"] == result["raw_pixels"]
    assert baseline_splits(train, test, max_train=None, max_test=None)[2] is None


@pytest.mark.parametrize("count, processes", [(7, 2), (1, 2), (10, 3), (9, 3), (5, 1)])
def test_process_shards_cover_the_split_once_in_order(count, processes):
    bounds = [shard_bounds(count, processes, index) for index in range(processes)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(count))


def test_one_process_gathers_its_own_features():
    part = torch.randn(5, 3)
    assert torch.equal(gather_shards(part, 5), part)
    with pytest.raises(RuntimeError, match="expected 6"):
        gather_shards(part, 6)


def test_the_monitor_uses_a_fixed_seeded_test_subset(tmp_path):
    test = tiny_split(30, 2)
    trainer = Trainer(resnet_method(), TrainConfig(output_dir=str(tmp_path), knn_test_subset=10, seed=4),
                      make_accelerator(cpu=True))
    chosen = trainer.monitor_test_split(test)
    assert torch.equal(chosen.images, test.subset(10, seed=4).images)
    assert torch.equal(trainer.monitor_test_split(test).images, chosen.images)
    trainer.config.knn_test_subset = None
    assert trainer.monitor_test_split(test) is test
    with pytest.raises(ValueError, match="knn_test_subset"):
        TrainConfig(knn_test_subset=0)


def resnet_method():
    from softcontrast.components.augment import for_image_size
    from softcontrast.methods import Setup, method_spec

    torch.manual_seed(0)
    return method_spec("moco")(resnet("resnet18", width=4), setup=Setup(view=lambda r: for_image_size(r, 8)),
                               queue_size=16)


def write_folder(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.distributed
def test_features_of_two_processes_equal_those_of_one(tmp_path, run_two_processes):
    import importlib.util

    spec = importlib.util.spec_from_file_location("features_two_process", FEATURES_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_folder(tmp_path / "images", 5)
    run_two_processes(FEATURES_SCRIPT, tmp_path, tmp_path / "images")
    memory, streamed = script.splits(tmp_path / "images")
    backbone, recipe = script.network(), ViewRecipe(size=8)
    expected = {
        "memory": extract_features(backbone, memory, recipe, batch_size=3),
        "streamed": extract_features(backbone, streamed, recipe, batch_size=2),
        "knn": knn_accuracy(backbone, memory, streamed, recipe, k=3),
    }
    for rank in range(2):
        found = torch.load(tmp_path / f"features_rank{rank}.pt")
        assert found["memory"].shape == (7, expected["memory"].shape[1])
        torch.testing.assert_close(found["memory"], expected["memory"], atol=1e-6, rtol=0)
        torch.testing.assert_close(found["streamed"], expected["streamed"], atol=1e-6, rtol=0)
        assert found["knn"] == expected["knn"]
