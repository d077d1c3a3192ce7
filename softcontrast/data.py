"""Dataset sources, named by a single string, and the batches that feed training.

Sources:

* ``digits`` – scikit-learn's handwritten digits (real scans, shipped with
  scikit-learn, works offline). The embedded default.
* ``imagefolder:<path>`` – class-per-folder images. If ``<path>`` holds ``train/``
  and ``test/`` they are the two splits; otherwise the whole folder is ``train``.
* ``npz:<path>`` – a NumPy archive with ``x_train, y_train, x_test, y_test``
  (images as ``N×H×W``, ``N×H×W×C`` or ``N×C×H×W``).
* ``hf:<id>`` – a Hugging Face dataset: a hub name, or a folder written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``. The image and label
  columns are detected from the features.

Small datasets are held as one ``uint8`` tensor (:class:`ImageTensorDataset`) that
may live on the training device; views are then made there in one batched pass.
Image folders whose images are too large to hold decode lazily in loader workers
(:class:`LazyImageFolder`), resized to a fixed size.

Every item carries its sample id, the index in its split. Under several processes
an image folder is listed once, by the main process, and the list is shared.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from softcontrast.components.distributed import on_main_process, rank

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: Images at most this many pixels on a side are decoded once and held in memory.
MAX_RESIDENT_SIDE = 96


class DataSourceError(ValueError):
    """A dataset source string, path or file that cannot be used."""


def random_indices(count: int, size: int, seed: int) -> Tensor:
    """``size`` distinct indices below ``count``, drawn with ``seed``, in increasing order."""
    if not 1 <= size <= count:
        raise ValueError(f"subset size must lie in [1, {count}], got {size}")
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


@dataclass
class ImageTensorDataset:
    """A split held in memory as one ``uint8`` tensor.

    Attributes:
        images: ``N×C×H×W`` ``uint8`` images (C is 3).
        labels: ``N`` ``int64`` class labels (``-1`` where unknown).
        classes: class names, indexed by label.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataSourceError(
                f"images must be a uint8 tensor N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataSourceError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] == 0:
            raise DataSourceError("the split holds no images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        return self.images.shape[-1]

    def subset(self, size: int, seed: int = 0) -> "ImageTensorDataset":
        """A random subset of ``size`` images (fixed by ``seed``), in the split's order."""
        chosen = random_indices(len(self), size, seed)
        return ImageTensorDataset(self.images[chosen], self.labels[chosen], self.classes)

    def to(self, device: torch.device | str) -> "ImageTensorDataset":
        """Returns the same split with images and labels on ``device``."""
        return ImageTensorDataset(self.images.to(device), self.labels.to(device), self.classes)


@dataclass
class DatasetSplits:
    """The train split and, where the source has one, the test split."""

    train: "ImageTensorDataset | LazyImageFolder"
    test: "ImageTensorDataset | LazyImageFolder | None"


def load_source(source: str, image_size: int | None = None) -> DatasetSplits:
    """Loads a dataset named by a source string.

    Args:
        source: ``digits``, ``imagefolder:<path>``, ``npz:<path>`` or ``hf:<id>``.
        image_size: side length the images are resized to. ``None`` keeps the
            source's own size (``digits`` is upscaled to 32 pixels).

    Returns:
        The splits of the source.

    Raises:
        DataSourceError: the string names no known source, the path is missing,
            or the files hold no usable images.
    """
    kind, _, argument = source.partition(":")
    if kind == "digits" and not argument:
        return _load_digits(image_size or 32)
    if kind == "imagefolder" and argument:
        return _load_image_folder(Path(argument), image_size)
    if kind == "npz" and argument:
        return _load_npz(Path(argument), image_size)
    if kind == "hf" and argument:
        return _load_hf(argument, image_size)
    raise DataSourceError(
        f"unknown dataset source {source!r}: use 'digits', 'imagefolder:<path>', "
        "'npz:<path>' or 'hf:<hub id or saved folder>'"
    )


def _resize_uint8(images: Tensor, size: int | None) -> Tensor:
    if size is None or (images.shape[-1] == size and images.shape[-2] == size):
        return images
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(images, [size, size], antialias=True)


def _to_nchw_rgb(array: np.ndarray, name: str) -> Tensor:
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataSourceError(f"{name} must hold images as N×H×W, N×H×W×C or N×C×H×W; got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(array))
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


def _load_digits(image_size: int) -> DatasetSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).astype(np.float32)
    images = _resize_uint8(_to_nchw_rgb(pixels, "digits"), image_size)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test_ids, train_ids = order[:297], order[297:]
    classes = [str(d) for d in range(10)]
    return DatasetSplits(
        ImageTensorDataset(images[train_ids], labels[train_ids], classes),
        ImageTensorDataset(images[test_ids], labels[test_ids], classes),
    )


def _load_npz(path: Path, image_size: int | None) -> DatasetSplits:
    if not path.is_file():
        raise DataSourceError(f"npz file not found: {path}")
    try:
        archive = np.load(path)
    except Exception as error:  # numpy raises several types for a corrupt file
        raise DataSourceError(f"cannot read {path} as a NumPy archive: {error}") from error
    missing = {"x_train", "y_train"} - set(archive.files)
    if missing:
        raise DataSourceError(f"{path} lacks {sorted(missing)}; it must hold x_train, y_train (and x_test, y_test)")

    def split(x_key: str, y_key: str) -> ImageTensorDataset:
        images = _resize_uint8(_to_nchw_rgb(archive[x_key], f"{path}:{x_key}"), image_size)
        labels = torch.as_tensor(archive[y_key], dtype=torch.int64).reshape(-1)
        return ImageTensorDataset(images, labels, [str(c) for c in range(int(labels.max()) + 1)])

    test = split("x_test", "y_test") if {"x_test", "y_test"} <= set(archive.files) else None
    return DatasetSplits(split("x_train", "y_train"), test)


def _scan_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files of ``root/<class>/``, their labels and the class names (lists and stats every file)."""
    if not root.is_dir():
        raise DataSourceError(f"image folder not found: {root}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise DataSourceError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(file)
                labels.append(label)
    if not paths:
        raise DataSourceError(f"{root} holds no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return paths, labels, classes


def decode_image(path: Path) -> Tensor:
    """Decodes one image file to a ``3×H×W`` ``uint8`` tensor.

    Raises:
        DataSourceError: the file is not a readable image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1)
    except Exception as error:
        raise DataSourceError(f"cannot decode image {path}: {error}. Remove or replace the file.") from error


class LazyImageFolder(torch.utils.data.Dataset):
    """Class-per-folder images decoded on demand (in loader workers).

    Each item is ``(image, sample_id)`` with the image resized to
    ``image_size × image_size`` (shorter side resized, then center crop).

    Args:
        paths: image files.
        labels: class label of each file.
        classes: class names.
        image_size: side length of the returned images.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], classes: list[str], image_size: int):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = classes
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        image = decode_image(self.paths[index])
        image = TF.center_crop(TF.resize(image, self.image_size, antialias=True), [self.image_size] * 2)
        return image, index

    def subset(self, size: int, seed: int = 0) -> "LazyImageFolder":
        """A random subset of ``size`` images (fixed by ``seed``), in the folder's order."""
        chosen = random_indices(len(self), size, seed)
        return LazyImageFolder([self.paths[i] for i in chosen], self.labels[chosen].tolist(), self.classes,
                               self.image_size)

    def load_all(self) -> ImageTensorDataset:
        """Decodes every image into one in-memory split."""
        images = torch.stack([self[i][0] for i in range(len(self))])
        return ImageTensorDataset(images, self.labels, self.classes)


def _load_folder_split(root: Path, image_size: int | None) -> "ImageTensorDataset | LazyImageFolder":
    paths, labels, classes = on_main_process(lambda: _scan_folder(root))
    first = decode_image(paths[0])
    side = image_size or min(first.shape[-2:])
    folder = LazyImageFolder(paths, labels, classes, side)
    return folder.load_all() if side <= MAX_RESIDENT_SIDE else folder


def _load_image_folder(root: Path, image_size: int | None) -> DatasetSplits:
    if (root / "train").is_dir():
        test = _load_folder_split(root / "test", image_size) if (root / "test").is_dir() else None
        return DatasetSplits(_load_folder_split(root / "train", image_size), test)
    return DatasetSplits(_load_folder_split(root, image_size), None)


def _load_hf(name: str, image_size: int | None) -> DatasetSplits:
    import datasets

    try:
        if os.path.isdir(name):
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name)
    except Exception as error:
        raise DataSourceError(f"cannot load Hugging Face dataset {name!r}: {error}") from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise DataSourceError(f"Hugging Face dataset {name!r} has no 'train' split (splits: {list(loaded)})")
    test_name = evaluation_split(loaded, name)
    train = _hf_split(loaded["train"], name, image_size)
    test = _hf_split(loaded[test_name], name, image_size or train.image_size) if test_name else None
    return DatasetSplits(train, test)


#: Splits of a Hugging Face dataset that may serve as the evaluation split, in order of preference.
EVALUATION_SPLITS = ("test", "validation", "valid", "val")


def evaluation_split(loaded, name: str) -> str | None:
    """The first of :data:`EVALUATION_SPLITS` in ``loaded`` with at least one label, or ``None``.

    A split whose labels are all missing (ImageNet's ``test``: label ``-1`` everywhere)
    or that has no label column is never the evaluation split: the kNN monitor would
    report 0 %. Each one passed over is named in a one-line notice. Only the label
    column is read (no image is decoded).
    """
    import datasets

    for candidate in EVALUATION_SPLITS:
        if candidate not in loaded:
            continue
        split = loaded[candidate]
        label_column = next((c for c, f in split.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_column is not None and (np.asarray(split[label_column]) >= 0).any():
            return candidate
        if rank() == 0:
            print(f"hf:{name}: split {candidate!r} has no labels, so it is not the evaluation split",
                  file=sys.stderr, flush=True)
    return None


def _hf_split(split, name: str, image_size: int | None) -> ImageTensorDataset:
    import datasets

    image_column = next((c for c, f in split.features.items() if isinstance(f, datasets.Image)), None)
    if image_column is None:
        raise DataSourceError(f"Hugging Face dataset {name!r} has no image column (features: {list(split.features)})")
    label_column = next((c for c, f in split.features.items() if isinstance(f, datasets.ClassLabel)), None)
    images = []
    for image in split[image_column]:
        array = np.asarray(image.convert("RGB"))
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        if image_size is None:
            image_size = min(tensor.shape[-2:])
        images.append(_resize_uint8(tensor, image_size))
    if label_column is None:
        labels = torch.full((len(images),), -1, dtype=torch.int64)
        classes: list[str] = []
    else:
        labels = torch.as_tensor(split[label_column], dtype=torch.int64)
        classes = list(split.features[label_column].names)
    return ImageTensorDataset(torch.stack(images), labels, classes)


class EpochBatches:
    """Index batches of one epoch, shared out over processes.

    Each epoch draws one permutation of the dataset from ``(seed, epoch)``; global
    batch ``b`` holds positions ``[b·G, (b+1)·G)`` of it (G = ``batch_size × world``),
    and process ``r`` takes rows ``[r·batch_size, (r+1)·batch_size)`` of each global
    batch. The last incomplete global batch is dropped, so sample ids within a
    global batch are distinct and every process runs the same number of steps.

    Args:
        num_samples: dataset size.
        batch_size: per-process batch size.
        rank: this process's index.
        world_size: number of processes.
        seed: base seed of the permutations.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size * world_size > num_samples:
            raise ValueError(
                f"global batch {batch_size}×{world_size} is larger than the dataset ({num_samples} samples): "
                "lower the batch size"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """Yields the local index batches of ``epoch``, from batch ``start`` on."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        global_batch = self.batch_size * self.world_size
        for b in range(start, len(self)):
            offset = b * global_batch + self.rank * self.batch_size
            yield order[offset : offset + self.batch_size]


class TrainingBatches:
    """Yields ``(uint8 images, sample ids)`` batches of a split on a device.

    An in-memory split is indexed directly (optionally resident on the device);
    a :class:`LazyImageFolder` streams through a ``DataLoader`` whose workers decode.

    Args:
        data: the training split.
        batch_size: per-process batch size.
        device: where batches are delivered.
        rank: this process's index.
        world_size: number of processes.
        seed: base seed of the epoch permutations.
        resident: hold an in-memory split on ``device`` (else copy per batch).
        num_workers: loader workers for a lazy split.
    """

    def __init__(
        self,
        data: "ImageTensorDataset | LazyImageFolder",
        batch_size: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        resident: bool = True,
        num_workers: int = 4,
    ):
        self.data, self.device, self.num_workers = data, torch.device(device), num_workers
        self.sampler = EpochBatches(len(data), batch_size, rank, world_size, seed)
        if isinstance(data, ImageTensorDataset) and resident:
            self.data = data.to(self.device)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields the batches of ``epoch`` from batch ``start`` on."""
        if isinstance(self.data, ImageTensorDataset):
            for indices in self.sampler.epoch(epoch, start):
                indices = indices.to(self.data.images.device)
                yield self.data.images[indices].to(self.device, non_blocking=True), indices.to(self.device)
            return
        loader = torch.utils.data.DataLoader(
            self.data,
            batch_sampler=list(self.sampler.epoch(epoch, start)),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, ids in loader:
            yield images.to(self.device, non_blocking=True), ids.to(self.device, non_blocking=True)

