"""Dataset sources, named by a single string.

Sources:

* ``digits`` – scikit-learn's handwritten digits (real scans, shipped with
  scikit-learn, works offline). The embedded default.
* ``imagefolder:<path>`` – class-per-folder images. If ``<path>`` holds ``train/``
  and ``test/`` (or ``val/``) they are the two splits; otherwise the whole folder is ``train``.
* ``npz:<path>`` – a NumPy archive with ``x_train, y_train, x_test, y_test``
  (images as ``N×H×W``, ``N×H×W×C`` or ``N×C×H×W``).
* ``hf:<id>`` – a Hugging Face dataset: a hub name, or a folder written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``, or a local data folder. The
  image and label columns are detected from the features; the Arrow files stay
  memory-mapped and each image is read when needed (:class:`~softcontrast.data.hf.HFImages`).
* ``prepared:<path>`` – a folder written by ``softcontrast prepare`` (one memory-mapped
  file of images per split, :mod:`softcontrast.data.prepared`).

Small images (at most :data:`MAX_RESIDENT_SIDE` pixels on a side, or ``image_size``
set that small) are decoded once into one ``uint8`` tensor
(:class:`~softcontrast.data.splits.ImageTensorDataset`) that may live on the training
device; the step crops them there. Larger images stay files
(:class:`~softcontrast.data.images.ImageSource`): loader workers cut each crop from
the original image at its own size (:class:`~softcontrast.data.views.RandomCrops`).

Every item carries its sample id, the index in its split. Under several processes
an image folder is listed once, by the main process, and the listing is shared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softcontrast.components.distributed import on_main_process, rank
from softcontrast.data.images import FolderImages, ImageSource, list_image_folder
from softcontrast.data.splits import DatasetSplits, DataSourceError, ImageTensorDataset

#: Images at most this many pixels on a side are decoded once and held in memory.
MAX_RESIDENT_SIDE = 96

#: Test-split folder names of an image folder, in order of preference.
TEST_FOLDERS = ("test", "val", "validation")


def load_source(source: str, image_size: int | None = None, num_workers: int = 0) -> DatasetSplits:
    """Loads a dataset named by a source string.

    Args:
        source: ``digits``, ``imagefolder:<path>``, ``npz:<path>`` or ``hf:<id>``.
        image_size: side length in-memory images are resized to; ``None`` keeps the
            source's own size (``digits`` is upscaled to 32 pixels). A size above
            :data:`MAX_RESIDENT_SIDE` does not apply to streamed images, which are cropped
            from the original.
        num_workers: loader workers that decode an image folder held in memory.

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
        return _load_image_folder(Path(argument), image_size, num_workers)
    if kind == "npz" and argument:
        return _load_npz(Path(argument), image_size)
    if kind == "hf" and argument:
        from softcontrast.data.hf import load_hf

        return load_hf(argument, image_size, num_workers)
    if kind == "prepared" and argument:
        from softcontrast.data.prepared import load_prepared

        return load_prepared(Path(argument), image_size, num_workers)
    raise DataSourceError(
        f"unknown dataset source {source!r}: use 'digits', 'imagefolder:<path>', "
        "'npz:<path>', 'hf:<hub id or saved folder>' or 'prepared:<folder written by softcontrast prepare>'"
    )


def resize_uint8(images: Tensor, size: int | None) -> Tensor:
    """``uint8`` images ``N×3×H×W`` resized to ``size × size`` (antialiased); unchanged for ``None``."""
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
    images = resize_uint8(_to_nchw_rgb(pixels, "digits"), image_size)
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
        images = resize_uint8(_to_nchw_rgb(archive[x_key], f"{path}:{x_key}"), image_size)
        labels = torch.as_tensor(archive[y_key], dtype=torch.int64).reshape(-1)
        return ImageTensorDataset(images, labels, [str(c) for c in range(int(labels.max()) + 1)])

    test = split("x_test", "y_test") if {"x_test", "y_test"} <= set(archive.files) else None
    return DatasetSplits(split("x_train", "y_train"), test)


def resident_or_streamed(source: ImageSource, image_size: int | None, num_workers: int,
                         name: str) -> "ImageTensorDataset | ImageSource":
    """Holds a split of small images in memory; leaves larger ones streamed.

    Small means ``image_size`` (when given) or the first image's shorter side is at
    most :data:`MAX_RESIDENT_SIDE`. Streamed images are cropped from the original,
    so an ``image_size`` above that bound is not used, and a notice says so.
    """
    side = image_size or min(source.first_size())
    if side <= MAX_RESIDENT_SIDE:
        return source.load_all(side, num_workers)
    if image_size is not None and rank() == 0:
        print(f"{name}: images are streamed and cropped from the original at the view size; "
              f"--image-size {image_size} is not used (it sizes in-memory data, at most {MAX_RESIDENT_SIDE} px)",
              file=sys.stderr, flush=True)
    return source


def _load_folder_split(root: Path, image_size: int | None, num_workers: int) -> "ImageTensorDataset | ImageSource":
    files, labels, classes = on_main_process(lambda: list_image_folder(root))
    return resident_or_streamed(FolderImages(root, files, labels, classes), image_size, num_workers,
                                f"imagefolder:{root}")


def _load_image_folder(root: Path, image_size: int | None, num_workers: int) -> DatasetSplits:
    if (root / "train").is_dir():
        test_root = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
        test = _load_folder_split(test_root, image_size, num_workers) if test_root else None
        return DatasetSplits(_load_folder_split(root / "train", image_size, num_workers), test)
    return DatasetSplits(_load_folder_split(root, image_size, num_workers), None)
