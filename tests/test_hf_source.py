"""``hf:`` sources: memory-mapped, opened one row at a time, labels from one column, no per-image objects."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from memory_bounds import load_and_crop
from softcontrast.data import (
    CropSpec, DataSourceError, ImageTensorDataset, RandomCrops, TrainingBatches, load_source,
)
from softcontrast.data.hf import HFImages

datasets = pytest.importorskip("datasets")


def photo_jpegs(count: int, size=(130, 100)) -> list[bytes]:
    """``count`` distinct JPEG crops of scikit-learn's sample photos, ``size`` = (width, height)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = 7 * i % (photo.shape[0] - size[1]), 13 * i % (photo.shape[1] - size[0])
        buffer = io.BytesIO()
        Image.fromarray(photo[top:top + size[1], left:left + size[0]]).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def hf_split(images: list[bytes], labels: list[int] | None = None):
    columns = {"img": [{"bytes": data, "path": None} for data in images]}
    features = {"img": datasets.Image()}
    if labels is not None:
        columns["label"] = labels
        features["label"] = datasets.ClassLabel(names=["a", "b", "c"])
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def save(path, **splits):
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return f"hf:{path}"


def test_loading_decodes_nothing_and_a_corrupt_row_fails_only_when_opened(tmp_path):
    images = photo_jpegs(4)
    images[2] = b"these bytes are not an image"
    splits = load_source(save(tmp_path / "d", train=hf_split(images, [0, 1, 2, 0])))
    assert isinstance(splits.train, HFImages) and splits.test is None
    assert splits.train.open(3).size == (130, 100)
    with pytest.raises(DataSourceError, match=r"split 'train' row 2: .*drop or replace the row"):
        splits.train.open(2)
    crops = RandomCrops(splits.train, [CropSpec(8)])
    with pytest.raises(DataSourceError, match="row 2"):
        crops[(2, 0)]


def test_images_keep_their_aspect_and_crops_come_from_the_original(tmp_path):
    images = photo_jpegs(3, size=(150, 100))
    splits = load_source(save(tmp_path / "d", train=hf_split(images, [0, 1, 2]), test=hf_split(images, [2, 1, 0])),
                         image_size=128)
    train = splits.train
    assert isinstance(train, HFImages) and isinstance(splits.test, HFImages)
    assert train.first_size() == (150, 100)
    whole = CropSpec(20, scale=(1.0, 1.0), ratio=(1.5, 1.5))  # the whole 150×100 image
    crops = RandomCrops(train, [whole], draft=False)
    assert crops.boxes(1, 0, 100, 150) == [(0, 0, 100, 150)]
    (crop,), index = crops[(1, 0)]
    expected = Image.open(io.BytesIO(images[1])).convert("RGB").resize((20, 20), Image.BILINEAR)
    difference = (crop.permute(1, 2, 0).int() - torch.from_numpy(np.array(expected)).int()).abs()
    assert index == 1 and difference.max() <= 2  # squeezed from 150×100, not cut from a square


def test_labels_come_from_the_label_column_and_batches_stream(tmp_path):
    splits = load_source(save(tmp_path / "d", train=hf_split(photo_jpegs(6), [2, 0, 1, 1, 0, 2])))
    assert splits.train.labels.tolist() == [2, 0, 1, 1, 0, 2] and splits.train.classes == ["a", "b", "c"]
    assert splits.train.labels.dtype == torch.int64
    unlabelled = HFImages(hf_split(photo_jpegs(2)), "x", "train")
    assert unlabelled.labels.tolist() == [-1, -1] and unlabelled.classes == []
    batches = TrainingBatches(splits.train, batch_size=3, num_workers=0, crops=[CropSpec(16), CropSpec(8)])
    (big, small), ids = next(batches.epoch(0))
    assert big.shape == (3, 3, 16, 16) and small.shape == (3, 3, 8, 8)
    assert sorted(ids.tolist()) == sorted(set(ids.tolist()))


def test_small_images_are_decoded_into_memory(tmp_path):
    name = save(tmp_path / "d", train=hf_split(photo_jpegs(4, size=(40, 30)), [0, 1, 2, 0]),
                validation=hf_split(photo_jpegs(2, size=(50, 40)), [1, 2]))
    splits = load_source(name)
    assert isinstance(splits.train, ImageTensorDataset) and splits.train.images.shape == (4, 3, 30, 30)
    assert isinstance(splits.test, ImageTensorDataset) and splits.test.images.shape == (2, 3, 30, 30)
    assert splits.test.labels.tolist() == [1, 2]
    large = load_source(save(tmp_path / "large", train=hf_split(photo_jpegs(2), [0, 1])), image_size=24)
    assert isinstance(large.train, ImageTensorDataset) and large.train.image_size == 24


def test_a_data_folder_loads_through_the_cache_offline(tmp_path, monkeypatch):
    """A folder of parquet files goes through ``load_dataset`` and its Arrow cache, as a hub dataset does."""
    folder = tmp_path / "parquet"
    folder.mkdir()
    hf_split(photo_jpegs(3), [0, 1, 2]).to_parquet(str(folder / "train.parquet"))
    hf_split(photo_jpegs(2), [1, 1]).to_parquet(str(folder / "test.parquet"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    splits = load_source(f"hf:{folder}")
    assert isinstance(splits.train, HFImages) and splits.train.labels.tolist() == [0, 1, 2]
    assert splits.test.labels.tolist() == [1, 1] and splits.train.open(1).size == (130, 100)
    assert all(str(tmp_path / "cache") in f["filename"] for f in splits.train.rows.cache_files)


def test_memory_does_not_grow_with_the_rows_beyond_the_labels(tmp_path):
    jpegs = photo_jpegs(20)
    for rows in (200, 2000):
        save(tmp_path / str(rows), train=hf_split([jpegs[i % 20] for i in range(rows)], [i % 3 for i in range(rows)]))
    load_and_crop(f"hf:{tmp_path / '200'}")  # imports and caches warmed
    (small_peak, small_pickle), (large_peak, large_pickle) = (load_and_crop(f"hf:{tmp_path / n}") for n in ("200", "2000"))
    per_row = (large_peak - small_peak) / 1800
    assert per_row < 64, f"{per_row:.0f} traced bytes per row: something per image is held"
    assert (large_pickle - small_pickle) / 1800 <= 9  # the labels (8 bytes a row); the rows are file paths
    assert large_pickle < 20_000
