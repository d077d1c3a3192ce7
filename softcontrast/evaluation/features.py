"""Frozen features of a split: a backbone's, or the raw pixels'."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe, center_view, to_float
from softcontrast.components.distributed import gather_no_grad, gather_objects, rank, world_size
from softcontrast.data import EVAL_CROP_FRACTION, CenterCrops, ImageSource, ImageTensorDataset
from softcontrast.data.images import SourceSubset

#: Raw pixels of images larger than this side are taken at this side (memory).
MAX_RAW_PIXEL_SIDE = 64


def image_batches(
    split: ImageTensorDataset | ImageSource, batch_size: int = 512, num_workers: int = 0, progress: str | None = None,
    size: int = 224,
) -> Iterator[Tensor]:
    """The ``uint8`` images of a split in order, ``batch_size`` at a time.

    Args:
        split: an in-memory split, or a streamed one (its centre views at ``size``, with
            :data:`~softcontrast.data.EVAL_CROP_FRACTION`, decoded by ``num_workers`` loader workers).
        batch_size: images per batch.
        num_workers: loader workers for a lazy split.
        progress: show a progress bar with this description (``None``: no bar).
    """
    from tqdm.auto import tqdm

    total = -(-len(split) // batch_size)
    bar = tqdm(total=total, desc=progress, leave=False, disable=progress is None)
    if isinstance(split, ImageTensorDataset):
        for start in range(0, len(split), batch_size):
            yield split.images[start : start + batch_size]
            bar.update(1)
    else:
        views = CenterCrops(split, size, EVAL_CROP_FRACTION)
        loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=num_workers)
        for images, _ in loader:
            yield images
            bar.update(1)
    bar.close()


def shard_bounds(count: int, processes: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of process ``index``'s contiguous shard of ``count`` rows.

    Every shard but the last holds ``ceil(count / processes)`` rows; the last ones may be
    shorter or empty. The shards, in process order, cover ``range(count)`` once.
    """
    per_process = -(-count // processes)
    start = min(index * per_process, count)
    return start, min(start + per_process, count)


def split_shard(split: ImageTensorDataset | ImageSource, start: int, stop: int) -> ImageTensorDataset | ImageSource:
    """Images ``start:stop`` of a split, in order (a view of an in-memory split; a renumbered streamed one)."""
    if isinstance(split, ImageTensorDataset):
        return ImageTensorDataset(split.images[start:stop], split.labels[start:stop], split.classes)
    return SourceSubset(split, np.arange(start, stop))


def gather_shards(part: Tensor, count: int) -> Tensor:
    """The shards of every process (:func:`shard_bounds`) concatenated in process order: ``count`` rows.

    Each process passes its own ``rows×F`` shard (``rows`` may be 0); every process gets
    the whole matrix. One tensor ``all_gather`` of shards padded to the longest.
    """
    shapes = gather_objects(tuple(part.shape))
    width = next((shape[1:] for shape in shapes if shape[0] > 0), part.shape[1:])
    longest = max(shape[0] for shape in shapes)
    padded = part.new_zeros((longest, *width))
    if part.shape[0]:
        padded[: part.shape[0]] = part
    gathered = gather_no_grad(padded)
    rows = [gathered[i * longest : i * longest + shape[0]] for i, shape in enumerate(shapes)]
    whole = torch.cat(rows)
    if whole.shape[0] != count:
        raise RuntimeError(f"the processes' shards hold {whole.shape[0]} rows, expected {count}")
    return whole


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    split: ImageTensorDataset | ImageSource,
    recipe: ViewRecipe,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: str | None = None,
    shard: bool = False,
) -> Tensor:
    """L2-normalised backbone features of every image of a split (eval mode, no augmentation).

    With ``shard`` under several processes (``torch.distributed`` initialised), each
    process embeds its own contiguous shard of the split (:func:`shard_bounds`) and the
    shards are gathered, so every process returns the same ``N×F`` matrix, in the
    split's order, that one process would. Every process must then call it together.

    Args:
        backbone: the network to evaluate (its train/eval mode is restored).
        split: images to embed.
        recipe: gives the evaluation size and normalisation (:func:`center_view`).
        batch_size: images per forward pass.
        device: where to compute.
        num_workers: loader workers for a streamed split.
        progress: show a progress bar with this description.
        shard: split the work between the processes (a no-op on one process).

    Returns:
        ``N×F`` features on ``device``.
    """
    count = len(split)
    if shard and world_size() > 1:
        start, stop = shard_bounds(count, world_size(), rank())
        part = split_shard(split, start, stop) if stop > start else None
    else:
        part = split
    was_training = backbone.training
    backbone.eval()
    features = [
        F.normalize(backbone(center_view(images.to(device), recipe)).float(), dim=-1)
        for images in (image_batches(part, batch_size, num_workers, progress, recipe.size) if part is not None else ())
    ]
    backbone.train(was_training)
    local = torch.cat(features) if features else torch.empty(0, 0, device=device)
    if part is split:
        return local
    return gather_shards(local, count)


def _pixels(split: ImageTensorDataset | ImageSource, side: int | None, num_workers: int) -> Tensor:
    rows = []
    for images in image_batches(split, 512, num_workers, size=side or MAX_RAW_PIXEL_SIDE):
        images = to_float(images)
        if side is not None and images.shape[-1] != side:
            images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
        rows.append(images.flatten(1))
    return torch.cat(rows)


@torch.no_grad()
def raw_pixel_features(
    train: ImageTensorDataset | ImageSource,
    test: ImageTensorDataset | ImageSource,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """The raw-pixel baseline's features: centred pixels, L2-normalised.

    Each image is taken as loaded (values in ``[0, 1]``; images larger than
    :data:`MAX_RAW_PIXEL_SIDE` are resized to it), flattened, the mean training
    image is subtracted, and the row is L2-normalised. No view transform, so the
    baseline does not depend on the network's view size.

    Returns:
        Train and test features.
    """
    side = getattr(train, "image_size", None)
    side = MAX_RAW_PIXEL_SIDE if side is None or side > MAX_RAW_PIXEL_SIDE else None
    train_pixels, test_pixels = _pixels(train, side, num_workers), _pixels(test, side, num_workers)
    if train_pixels.shape[1] != test_pixels.shape[1]:
        raise ValueError(f"train and test images differ in size ({train_pixels.shape[1]} vs {test_pixels.shape[1]} values)")
    mean = train_pixels.mean(dim=0)
    return F.normalize(train_pixels - mean, dim=-1), F.normalize(test_pixels - mean, dim=-1)
