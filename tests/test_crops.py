"""Crops cut in loader workers: torchvision's RandomResizedCrop box rule, its pixels, and JPEG draft decoding."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from softcontrast.components.augment import CropSpec, ViewRecipe
from softcontrast.data import DataSourceError, FolderImages, RandomCrops, TrainingBatches, sample_box
from softcontrast.data.crops import crop_resize, decode, jpeg_reduction, pil_to_tensor, random_crops
from softcontrast.data.images import list_image_folder


def photo(width: int, height: int, which: int = 0) -> Image.Image:
    """A real photo (shipped with scikit-learn) resized to ``width × height``."""
    return Image.fromarray(load_sample_images().images[which]).resize((width, height), Image.BILINEAR)


@pytest.mark.parametrize("width,height", [(500, 375), (375, 500), (97, 203)])
@pytest.mark.parametrize("box,size", [((0, 0, 120, 90), 64), ((31, 17, 200, 301), 224), ((5, 40, 30, 24), 48),
                                      ((0, 0, 375, 375), 32)])
def test_crop_pixels_equal_torchvisions_resized_crop(width, height, box, size):
    image = pil_to_tensor(photo(width, height))
    top, left, h, w = box
    h, w = min(h, height - top), min(w, width - left)
    expected = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    assert torch.equal(crop_resize(image, (top, left, h, w), size), expected)
    on_pil = pil_to_tensor(TF.resized_crop(photo(width, height), top, left, h, w, [size, size], antialias=True))
    assert (on_pil.int() - expected.int()).abs().max() <= 1  # PIL's bilinear filter, to one level


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_workers_crop_is_torchvisions_crop_of_its_box(tmp_path, suffix):
    from torchvision.io import decode_image

    (tmp_path / "a").mkdir()
    photo(500, 375).save(tmp_path / "a" / f"wide.{suffix}")
    photo(375, 500, which=1).save(tmp_path / "a" / f"tall.{suffix}")
    source = FolderImages(tmp_path, *list_image_folder(tmp_path))
    specs = [CropSpec(96, (0.2, 1.0)), CropSpec(48, (0.05, 0.3), (0.5, 2.0))]
    crops = RandomCrops(source, specs, seed=3, draft=False)
    for index in range(2):
        full = decode_image(source.path(index))  # what torchvision's reader gives
        height, width = full.shape[1:]
        cut, got_index = crops[(index, 7)]
        assert got_index == index
        for (top, left, h, w), spec, crop in zip(crops.boxes(index, 7, height, width), specs, cut):
            assert torch.equal(crop, TF.resized_crop(full, top, left, h, w, [spec.size] * 2, antialias=True))


def _histograms(boxes: np.ndarray, height: int, width: int, scale, ratio):
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
    area_bins = np.linspace(scale[0], scale[1], 11)
    ratio_bins = np.linspace(math.log(ratio[0]) - 0.05, math.log(ratio[1]) + 0.05, 11)
    room = height - boxes[:, 2]
    moved = room > 0  # where the box can move: its top, relative to the room it has
    position = np.histogram(boxes[moved, 0] / room[moved], np.linspace(0, 1, 6))[0] / max(1, moved.sum())
    return (np.histogram(area, area_bins)[0] / len(boxes), np.histogram(log_ratio, ratio_bins)[0] / len(boxes),
            position)


@pytest.mark.parametrize("height,width,scale,ratio", [
    (375, 500, (0.08, 1.0), (3 / 4, 4 / 3)),
    (500, 375, (0.2, 1.0), (3 / 4, 4 / 3)),
    (64, 300, (0.5, 1.0), (3 / 4, 4 / 3)),  # elongated: many draws fall back to the centred box
])
def test_the_box_distribution_matches_torchvisions(height, width, scale, ratio):
    draws = 20000
    rng = np.random.default_rng(0)
    ours = np.array([sample_box(height, width, scale, ratio, rng) for _ in range(draws)], dtype=np.float64)
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    theirs = np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(draws)],
                      dtype=np.float64)
    for mine, reference in zip(_histograms(ours, height, width, scale, ratio),
                               _histograms(theirs, height, width, scale, ratio)):
        assert np.abs(mine - reference).max() < 0.015  # 4 standard errors of a bin at p ≈ 0.1
    fallback = lambda boxes: np.mean((boxes[:, 2] == boxes[:, 2].max()) & (boxes[:, 0] == (height - boxes[:, 2]) // 2))  # noqa: E731
    assert abs(fallback(ours) - fallback(theirs)) < 0.02


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.floats(0.01, 1.0), st.floats(0.01, 1.0),
       st.floats(0.2, 1.0), st.floats(1.0, 5.0), st.integers(0, 2**32 - 1))
def test_boxes_lie_inside_the_image(height, width, a, b, ratio_low, ratio_high, seed):
    top, left, h, w = sample_box(height, width, (min(a, b), max(a, b)), (ratio_low, ratio_high),
                                 np.random.default_rng(seed))
    assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= height and left + w <= width


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer)


def test_jpeg_is_decoded_at_the_smallest_scale_that_covers_every_crop():
    assert jpeg_reduction([(0, 0, 400, 300)], [64]) == 4
    assert jpeg_reduction([(0, 0, 400, 300), (0, 0, 100, 100)], [64, 64]) == 1
    assert jpeg_reduction([(0, 0, 500, 500)], [224]) == 2
    box = (10, 20, 300, 400)
    reduced, sx, sy = decode(_jpeg(photo(500, 375)), reduction=4)
    assert reduced.shape == (3, 94, 125) and (sx, sy) == pytest.approx((0.25, 94 / 375))
    buffer = io.BytesIO()
    photo(500, 375).save(buffer, "JPEG", quality=90)
    full, one_x, one_y = decode(_jpeg(photo(500, 375)), buffer.getvalue())
    assert full.shape == (3, 375, 500) and one_x == one_y == 1.0
    drafted = random_crops(_jpeg(photo(500, 375)), [box], [64], buffer.getvalue())[0].float()
    exact = random_crops(_jpeg(photo(500, 375)), [box], [64], buffer.getvalue(), draft=False)[0].float()
    assert torch.equal(drafted, crop_resize(reduced, box, 64, sx, sy).float())
    assert (drafted - exact).abs().mean() < 6  # the same part of the scene; only the resampling source differs


def test_streamed_training_batches_carry_every_crop_of_the_plan(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            photo(200 + 10 * i, 150, which=i % 2).save(tmp_path / name / f"{i}.jpg", quality=90)
    source = FolderImages(tmp_path, *list_image_folder(tmp_path))
    plan = [ViewRecipe(size=32).crop, ViewRecipe(size=32).crop, CropSpec(16, (0.05, 0.3))]
    batches = TrainingBatches(source, batch_size=3, num_workers=2, crops=plan, seed=5)
    first = [(ids.tolist(), [c.clone() for c in crops]) for crops, ids in batches.epoch(0)]
    again = [(ids.tolist(), crops) for crops, ids in batches.epoch(0)]  # the same persistent workers
    assert len(first) == 2 and sorted(sum((ids for ids, _ in first), [])) == list(range(6))
    for (ids, crops), (ids_again, crops_again) in zip(first, again):
        assert ids == ids_again and [c.shape for c in crops] == [(3, 3, 32, 32), (3, 3, 32, 32), (3, 3, 16, 16)]
        assert all(torch.equal(x, y) for x, y in zip(crops, crops_again))
    assert batches.loader._iterator is not None  # workers kept between epochs


@pytest.mark.distributed
def test_two_processes_stream_a_folder_with_the_crops_one_process_would_cut(tmp_path, run_two_processes):
    script = Path(__file__).resolve().parent / "distributed" / "streamed_two_process.py"
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(5):
            photo(200 + 10 * i, 150, which=i % 2).save(tmp_path / "photos" / name / f"{i}.jpg", quality=90)
    run_two_processes(script, tmp_path / "photos", tmp_path)
    received = [torch.load(tmp_path / f"crops_rank{rank}.pt") for rank in range(2)]
    assert len(received[0]) == len(received[1]) == 2  # 10 images, global batch 4: two steps, the rest dropped
    source = FolderImages(tmp_path / "photos", *list_image_folder(tmp_path / "photos"))
    single = RandomCrops(source, [CropSpec(24, (0.2, 1.0)), CropSpec(16, (0.05, 0.3))], seed=3)
    for (ids_0, _), (ids_1, _) in zip(*received):
        assert len(set(ids_0) | set(ids_1)) == 4
    for ids, crops in received[0] + received[1]:
        for row, index in enumerate(ids):
            assert all(torch.equal(crop[row], alone) for crop, alone in zip(crops, single[(index, 0)][0]))
    saved = json.loads(next((tmp_path / "run").rglob("run_config.json")).read_text())
    assert saved["dataset"] == f"imagefolder:{tmp_path / 'photos'}" and saved["augment"] == "imagenet"
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_jpeg_decoded_on_the_device_gives_the_workers_crops(tmp_path, workers):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            image = photo(210 + 10 * i, 160, which=i % 2)
            image.save(tmp_path / name / (f"{i}.png" if i == 3 else f"{i}.jpg"), quality=90)  # one PNG per class
    source = FolderImages(tmp_path, *list_image_folder(tmp_path))
    plan = [CropSpec(32, (0.2, 1.0)), CropSpec(16, (0.05, 0.3))]
    # the device decodes every JPEG at full scale, as workers do without the draft
    in_workers = TrainingBatches(source, batch_size=4, num_workers=workers, crops=plan, seed=2, draft=False)
    on_device = TrainingBatches(source, batch_size=4, num_workers=workers, crops=plan, seed=2, decode_on="device")
    for (crops, ids), (device_crops, device_ids) in zip(in_workers.epoch(1), on_device.epoch(1)):
        assert torch.equal(ids, device_ids)
        assert [c.shape for c in device_crops] == [(4, 3, 32, 32), (4, 3, 16, 16)]
        assert all(torch.equal(x, y) for x, y in zip(crops, device_crops))
    with pytest.raises(ValueError, match="decode_on must be one of workers, device"):
        TrainingBatches(source, batch_size=4, crops=plan, decode_on="gpu")


@pytest.mark.parametrize("decode_on", ["workers", "device"])
def test_a_corrupt_jpeg_is_named_wherever_it_is_decoded(tmp_path, decode_on):
    (tmp_path / "a").mkdir()
    photo(200, 150).save(tmp_path / "a" / "good.jpg")
    torn = bytearray((tmp_path / "a" / "good.jpg").read_bytes())
    counts = torn.index(b"\xff\xc4") + 5  # the code counts of the first Huffman table: made impossible
    torn[counts:counts + 16] = b"\xff" * 16
    (tmp_path / "a" / "torn.jpg").write_bytes(bytes(torn))
    source = FolderImages(tmp_path, *list_image_folder(tmp_path))
    batches = TrainingBatches(source, batch_size=2, num_workers=0, crops=[CropSpec(16)], decode_on=decode_on)
    with pytest.raises(DataSourceError, match="torn.jpg"):
        next(batches.epoch(0))
