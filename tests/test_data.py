"""Dataset sources, batches with sample ids, and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memory_bounds import load_and_crop
from softcontrast.data import (
    CropSpec, DataSourceError, EpochBatches, ImageSource, ImageTensorDataset, TrainingBatches, load_source,
)


def write_folder(root, classes=("cat", "dog"), per_class=3, size=(12, 10)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


NODES = Path(__file__).resolve().parent / "distributed" / "nodes_two_process.py"


def test_digits_are_real_scans_split_into_train_and_test():
    splits = load_source("digits")
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.train.images.dtype == torch.uint8
    assert set(splits.train.labels.tolist()) == set(range(10))


def test_image_folder_with_train_and_test(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", per_class=2)
    splits = load_source(f"imagefolder:{tmp_path}")
    assert isinstance(splits.train, ImageTensorDataset)
    assert len(splits.train) == 6 and len(splits.test) == 4
    assert splits.train.classes == ["cat", "dog"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.train.image_size == 10


def test_pixels_survive_loading(tmp_path):
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    loaded = load_source(f"imagefolder:{tmp_path}").train.images[0]
    assert torch.equal(loaded.permute(1, 2, 0), torch.from_numpy(pixels))


def test_large_images_stream_and_are_cropped_in_workers_from_the_original(tmp_path):
    write_folder(tmp_path, size=(130, 120))
    splits = load_source(f"imagefolder:{tmp_path}")
    assert isinstance(splits.train, ImageSource) and splits.test is None
    assert splits.train.first_size() == (130, 120)
    subset = splits.train.subset(4, seed=1)
    assert len(subset) == 4
    names = [splits.train.describe(i) for i in range(len(splits.train))]
    assert [subset.labels[i].item() for i in range(4)] == [
        splits.train.labels[names.index(subset.describe(i))].item() for i in range(4)]
    crops = [CropSpec(24, (0.2, 1.0)), CropSpec(16, (0.05, 0.4))]
    batches = TrainingBatches(splits.train, batch_size=2, num_workers=0, crops=crops)
    (big, small), ids = next(batches.epoch(0))
    assert big.shape == (2, 3, 24, 24) and small.shape == (2, 3, 16, 16) and ids.shape == (2,)
    assert big.dtype == torch.uint8
    again, ids_again = next(batches.epoch(0))
    assert torch.equal(ids, ids_again) and torch.equal(again[0], big)  # crops fixed by (seed, epoch, image)
    other, _ = next(batches.epoch(1))
    assert not torch.equal(other[0], big)


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.random((5, 8, 8, 3)), y_train=np.arange(5),
             x_test=rng.integers(0, 256, (2, 8, 8), dtype=np.uint8), y_test=np.array([0, 1]))
    splits = load_source(f"npz:{path}")
    assert splits.train.images.shape == (5, 3, 8, 8) and splits.test.images.shape == (2, 3, 8, 8)
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4]


def test_hf_saved_dataset(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)) for _ in range(4)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    dataset = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 1, 0]}, features=features)
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "saved"))
    splits = load_source(f"hf:{tmp_path / 'saved'}")
    assert splits.train.images.shape == (4, 3, 9, 9)
    assert splits.train.labels.tolist() == [0, 1, 1, 0] and splits.train.classes == ["x", "y"]
    assert torch.equal(splits.train.images[2].permute(1, 2, 0), torch.from_numpy(np.array(images[2])))


def test_epoch_batches_share_each_global_batch_between_processes():
    per_rank = [list(EpochBatches(20, 3, rank, 2, seed=1).epoch(0)) for rank in range(2)]
    single = list(EpochBatches(20, 6, 0, 1, seed=1).epoch(0))
    assert len(single) == 3 and all(len(part) == 3 for part in per_rank)
    for step, batch in enumerate(single):
        assert torch.equal(torch.cat([per_rank[0][step], per_rank[1][step]]), batch)
    assert len(set(torch.cat(single).tolist())) == 18
    assert not torch.equal(torch.cat(list(EpochBatches(20, 6).epoch(1))), torch.cat(single))


def test_resuming_inside_an_epoch_skips_the_done_batches():
    sampler = EpochBatches(30, 4, seed=2)
    full = list(sampler.epoch(3))
    assert all(torch.equal(a, b) for a, b in zip(full[2:], sampler.epoch(3, start=2)))


def test_training_batches_carry_sample_ids_of_the_images():
    data = ImageTensorDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(),
                              torch.zeros(10, dtype=torch.long), ["a"])
    for images, ids in TrainingBatches(data, 3).epoch(0):
        assert torch.equal(images[:, 0, 0, 0].long(), ids)


@pytest.mark.distributed
def test_an_image_folder_is_listed_by_the_main_process_only_and_shared(tmp_path, run_two_processes):
    write_folder(tmp_path / "images", size=(8, 8))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    run_two_processes(NODES, "listing", tmp_path, tmp_path / "images", tmp_path / "empty")
    main, other = (json.loads((tmp_path / f"listing_rank{rank}.json").read_text()) for rank in range(2))
    assert main["calls"]["scandir"] >= 3  # the folder and its two class folders
    assert other["calls"] == {"scandir": 0}
    assert {k: v for k, v in main.items() if k != "calls"} == {k: v for k, v in other.items() if k != "calls"}
    assert main["labels"] == [0, 0, 0, 1, 1, 1] and "holds no image files" in main["empty"]


@pytest.mark.parametrize("source", ["cifar10", "imagefolder:", "zip:foo", ""])
def test_unknown_source_strings_name_the_choices(source):
    with pytest.raises(DataSourceError, match="digits"):
        load_source(source)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(DataSourceError, match="not found"):
        load_source(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataSourceError, match="not found"):
        load_source(f"npz:{tmp_path / 'nope.npz'}")


def test_empty_folder_is_rejected(tmp_path):
    with pytest.raises(DataSourceError, match="no class folders"):
        load_source(f"imagefolder:{tmp_path}")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataSourceError, match="no image files"):
        load_source(f"imagefolder:{tmp_path}")


def test_corrupt_image_file_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataSourceError, match="broken.jpg"):
        load_source(f"imagefolder:{tmp_path}")


def test_npz_without_the_arrays_is_rejected(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4)))
    with pytest.raises(DataSourceError, match="x_train"):
        load_source(f"npz:{path}")
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match="cannot read"):
        load_source(f"npz:{tmp_path / 'corrupt.npz'}")


def test_batch_larger_than_the_data_is_rejected():
    with pytest.raises(ValueError, match="larger than the dataset"):
        EpochBatches(10, 6, world_size=2)


def test_hf_evaluation_split_is_the_first_labelled_one(tmp_path, capsys):
    """ImageNet's ``test`` split has no labels (all -1): evaluating on it would report 0 %."""
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)) for _ in range(4)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})

    def split(labels):
        return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)

    unlabelled = split([-1, -1, -1, -1])
    datasets.DatasetDict({"train": split([0, 1, 1, 0]), "test": unlabelled, "validation": split([1, 0, 0, 1])}
                         ).save_to_disk(str(tmp_path / "imagenet-like"))
    splits = load_source(f"hf:{tmp_path / 'imagenet-like'}")
    assert splits.test.labels.tolist() == [1, 0, 0, 1]
    notices = [line for line in capsys.readouterr().err.splitlines() if "has no labels" in line]
    assert len(notices) == 1 and "split 'test' has no labels" in notices[0]

    datasets.DatasetDict({"train": split([0, 1, 1, 0]), "test": unlabelled}).save_to_disk(str(tmp_path / "none"))
    assert load_source(f"hf:{tmp_path / 'none'}").test is None


def test_the_image_side_is_read_without_loading_the_data(tmp_path):
    from softcontrast.data.prepared import prepare
    from softcontrast.data.probe import image_side

    write_folder(tmp_path / "photos" / "train", size=(130, 120))
    assert image_side(f"imagefolder:{tmp_path / 'photos'}") == 120
    assert image_side(f"imagefolder:{tmp_path / 'photos'}", image_size=24) == 24
    assert image_side("digits") == 32
    np.savez(tmp_path / "x.npz", x_train=np.zeros((3, 28, 30, 3), np.uint8), y_train=np.zeros(3))
    assert image_side(f"npz:{tmp_path / 'x.npz'}") == 28
    prepare(f"imagefolder:{tmp_path / 'photos'}", tmp_path / "prepared", 104)
    assert image_side(f"prepared:{tmp_path / 'prepared'}") == 96  # longer side 130 → 104, shorter 120 → 96
    with pytest.raises(DataSourceError, match="not found"):
        image_side(f"imagefolder:{tmp_path / 'nope'}")


def test_a_folders_memory_does_not_grow_with_its_files_beyond_the_listing(tmp_path):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)).save(buffer, "JPEG")
    for count in (200, 2000):
        for label in range(4):
            (tmp_path / str(count) / f"class{label}").mkdir(parents=True)
        for i in range(count):
            (tmp_path / str(count) / f"class{i % 4}" / f"image_{i:06d}.jpg").write_bytes(buffer.getvalue())
    load_and_crop(f"imagefolder:{tmp_path / '200'}")  # imports and caches warmed
    (small_peak, small_pickle), (large_peak, large_pickle) = (
        load_and_crop(f"imagefolder:{tmp_path / str(count)}") for count in (200, 2000))
    assert (large_peak - small_peak) / 1800 < 250  # bytes per file: the listing's names and labels, no objects
    assert (large_pickle - small_pickle) / 1800 < 40  # what a spawned worker receives per file
