"""Prepared datasets: the size rule, both formats, resident vs streamed, errors, `softcontrast prepare`, training."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from softcontrast.cli import main
from softcontrast.data import CropSpec, DataSourceError, ImageTensorDataset, RandomCrops, load_source
from softcontrast.data.prepared import FORMAT_VERSION, PreparedImages, load_prepared, prepare

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = load_sample_images().images  # two real 427×640 photos


def photo(which: int, width: int, height: int, left: int = 100, top: int = 50) -> Image.Image:
    """A ``width × height`` piece of a real photo, shrunk from a region up to twice its size."""
    height_in, width_in = PHOTOS[which].shape[:2]
    region = (left, top, min(left + 2 * width, width_in), min(top + 2 * height, height_in))
    return Image.fromarray(PHOTOS[which]).resize((width, height), Image.BILINEAR, box=region)


def write_folder(root: Path, sizes=((150, 110), (100, 90), (90, 130)), suffix="png") -> list[Path]:
    """``root/{china,flower}/<i>.<suffix>`` of the given sizes, one per size in each class folder."""
    files = []
    for which, name in enumerate(("china", "flower")):
        (root / name).mkdir(parents=True)
        for index, (width, height) in enumerate(sizes):
            files.append(root / name / f"{index}.{suffix}")
            photo(which, width, height, left=60 * index).save(files[-1], quality=95)
    return files


def stored(images: PreparedImages, index: int) -> np.ndarray:
    with images.open(index) as image:
        return np.asarray(image.convert("RGB"))


def test_pixels_are_the_source_fitted_by_the_size_rule_with_labels_classes_and_names(tmp_path):
    files = write_folder(tmp_path / "src")
    prepare(f"imagefolder:{tmp_path / 'src'}", tmp_path / "out", 120, "pixels")
    images = load_prepared(tmp_path / "out").train
    assert isinstance(images, PreparedImages) and len(images) == 6
    assert images.classes == ["china", "flower"] and images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # longer side at most 120, aspect kept, never enlarged
    expected_sizes = [(120, 88), (100, 90), (83, 120)] * 2
    for index, (file, size) in enumerate(zip(files, expected_sizes)):
        source = Image.open(file).convert("RGB")
        expected = np.asarray(source if source.size == size else source.resize(size, Image.BILINEAR))
        assert np.array_equal(stored(images, index), expected)
        assert str(file.relative_to(tmp_path / "src")) in images.describe(index)
    assert not (tmp_path / "out" / "test").exists()


def test_jpeg_records_decode_close_to_the_source_and_crop_with_draft(tmp_path):
    files = write_folder(tmp_path / "src", sizes=((300, 225),), suffix="png")
    prepare(f"imagefolder:{tmp_path / 'src'}", tmp_path / "out", 200, "jpeg", quality=90)
    images = load_prepared(tmp_path / "out").train
    source = np.asarray(Image.open(files[0]).convert("RGB").resize((200, 150), Image.BILINEAR)).astype(float)
    decoded = stored(images, 0)
    assert decoded.shape == (150, 200, 3)
    assert np.abs(decoded - source).mean() < 4.0
    assert images.open(0).format == "JPEG"  # lazily opened, so the crops may decode it at a reduced scale
    crops, index = RandomCrops(images, [CropSpec(48), CropSpec(32)])[(1, 0)]
    assert [tuple(c.shape) for c in crops] == [(3, 48, 48), (3, 32, 32)] and index == 1


def test_small_sizes_load_in_memory_and_large_ones_stream(tmp_path):
    write_folder(tmp_path / "src" / "train")
    write_folder(tmp_path / "src" / "val", sizes=((100, 90),))
    source = f"imagefolder:{tmp_path / 'src'}"
    prepare(source, tmp_path / "small", 32, "pixels")
    small, folder = load_prepared(tmp_path / "small"), load_source(source, 32)
    assert isinstance(small.train, ImageTensorDataset) and small.train.images.shape == (6, 3, 32, 32)
    assert torch.equal(small.train.images, folder.train.images)  # the square view in-memory splits hold
    assert torch.equal(small.test.images, folder.test.images) and small.test.labels.tolist() == [0, 1]
    assert load_prepared(tmp_path / "small", image_size=16).train.images.shape == (6, 3, 16, 16)
    prepare(source, tmp_path / "small_jpeg", 32, "jpeg")
    from_jpeg = load_prepared(tmp_path / "small_jpeg").train.images
    assert (from_jpeg.float() - folder.train.images.float()).abs().mean() < 6.0
    prepare(source, tmp_path / "large", 120, "jpeg")
    large = load_prepared(tmp_path / "large")
    assert isinstance(large.train, PreparedImages) and isinstance(large.test, PreparedImages)
    assert load_prepared(tmp_path / "large", image_size=24).train.images.shape == (6, 3, 24, 24)


def test_loader_workers_write_the_same_bytes(tmp_path):
    write_folder(tmp_path / "src", suffix="jpg")
    for workers in (0, 2):
        prepare(f"imagefolder:{tmp_path / 'src'}", tmp_path / f"out{workers}", 120, "pixels", num_workers=workers)
    assert (tmp_path / "out0/train/images.bin").read_bytes() == (tmp_path / "out2/train/images.bin").read_bytes()


def test_a_hugging_face_dataset_is_prepared_image_by_image(tmp_path):
    import datasets

    pictures = [photo(i % 2, 40, 30, left=10 * i) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"image": pictures, "label": [0, 1, 1, 0]}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "saved"))
    prepare(f"hf:{tmp_path / 'saved'}", tmp_path / "out", 30, "pixels")
    loaded = load_prepared(tmp_path / "out")
    assert loaded.train.classes == ["a", "b"] and loaded.test.labels.tolist() == [0, 1, 1, 0]
    assert loaded.train.images.shape == (4, 3, 30, 30)


def test_a_prepared_folder_trains(tmp_path, capsys):
    prepare("digits", tmp_path / "digits", 16, "pixels")
    main(["train", "moco", "--cpu", "--epochs", "1", "--train-subset", "32", "--batch-size", "16", "--width", "4",
          "--knn-k", "5", "--dataset", f"prepared:{tmp_path / 'digits'}", "--output-dir", str(tmp_path / "run")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_done"] == 1 and summary["dataset"] == f"prepared:{tmp_path / 'digits'}"
    assert 0 <= summary["knn_accuracy"]["1"] <= 1


def test_a_streamed_prepared_folder_trains(tmp_path, capsys):
    write_folder(tmp_path / "src" / "train")
    write_folder(tmp_path / "src" / "test")
    prepare(f"imagefolder:{tmp_path / 'src'}", tmp_path / "large", 120, "jpeg")
    main(["train", "moco", "--cpu", "--epochs", "1", "--batch-size", "4", "--width", "4", "--knn-k", "3",
          "--num-workers", "1", "--view-size", "32", "--no-cifar-stem", "--augment", "imagenet", "--dataset", f"prepared:{tmp_path / 'large'}", "--output-dir", str(tmp_path / "run")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_done"] == 1 and np.isfinite(summary["final_loss"])


def test_unusable_folders_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(DataSourceError, match="prepared folder not found.*softcontrast prepare"):
        load_prepared(tmp_path / "nope")
    write_folder(tmp_path / "src")
    out = prepare(f"imagefolder:{tmp_path / 'src'}", tmp_path / "out", 120, "jpeg")
    metadata = json.loads((out / "prepared.json").read_text())
    (out / "prepared.json").write_text(json.dumps({**metadata, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(DataSourceError, match=f"format version {FORMAT_VERSION + 1}.*re-run `softcontrast prepare"):
        load_prepared(out)
    (out / "prepared.json").write_text(json.dumps(metadata))
    data = (out / "train" / "images.bin").read_bytes()
    (out / "train" / "images.bin").write_bytes(data[:-10])
    with pytest.raises(DataSourceError, match="truncated or corrupt; re-run `softcontrast prepare"):
        load_prepared(out)
    (out / "train" / "images.bin").write_bytes(data)
    (out / "train" / "labels.npy").write_bytes(b"damaged")
    with pytest.raises(DataSourceError, match="labels.npy.*re-run"):
        load_prepared(out)
    (out / "prepared.json").unlink()  # as after an interrupted prepare
    with pytest.raises(DataSourceError, match="interrupted; re-run"):
        load_prepared(out)


def test_prepare_refuses_a_non_empty_folder_unless_overwriting_its_own(tmp_path):
    write_folder(tmp_path / "src")
    source = f"imagefolder:{tmp_path / 'src'}"
    prepare(source, tmp_path / "out", 32, "pixels")
    with pytest.raises(DataSourceError, match="not empty.*--overwrite"):
        prepare(source, tmp_path / "out", 16, "pixels")
    prepare(source, tmp_path / "out", 16, "pixels", overwrite=True)
    assert load_prepared(tmp_path / "out").train.image_size == 16
    with pytest.raises(DataSourceError, match="holds files that prepare did not write"):
        prepare(source, tmp_path / "src", 16, "pixels", overwrite=True)
    with pytest.raises(DataSourceError, match="unknown prepared format 'png'"):
        prepare(source, tmp_path / "new", 16, "png")


def test_the_prepare_subcommand(tmp_path, capsys):
    write_folder(tmp_path / "src")
    command = ["prepare", f"imagefolder:{tmp_path / 'src'}", str(tmp_path / "out"), "--size", "120",
               "--format", "pixels", "--num-workers", "0"]
    main(command)
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["splits"]["train"]["images"] == 6 and summary["format"] == "pixels"
    assert summary["splits"]["train"]["bytes_per_image"] == (tmp_path / "out/train/images.bin").stat().st_size // 6
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    assert "softcontrast prepare: error:" in capsys.readouterr().err
    main([*command, "--overwrite"])


def test_the_format_benchmark_runs_tiny(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import prepared_format

    out = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", ["prepared_format.py", "--images", "4", "--sizes", "128", "--crop", "32",
                                      "--rounds", "1", "--out", str(out)])
    prepared_format.main()
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["variants"]] == ["original JPEG files", "pixels 128", "jpeg 128"]
    for row in result["variants"]:
        assert np.isfinite(row["read_crop_images_per_s_per_core"]) and row["read_crop_images_per_s_per_core"] > 0
        assert row["bytes_per_image"] > 0
    assert result["default_format"] in ("pixels", "jpeg")
