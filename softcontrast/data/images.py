"""Images opened one at a time, in loader workers: the streamed kind of split.

An :class:`ImageSource` knows how many images it has, their labels, and how to open
image ``i`` lazily (PIL reads the header; the pixels are decoded by whoever crops
it, at the scale the crop needs). What is cut out of the image is not the source's
business: :class:`~softcontrast.data.views.RandomCrops` makes training crops and
:class:`~softcontrast.data.views.CenterCrops` the evaluation view.

A source holds its index in a few NumPy arrays (no per-image Python object), so a
loader worker forked from it shares the pages instead of copying them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from softcontrast.data.splits import DataSourceError, ImageTensorDataset, random_indices

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageSource:
    """A split whose images are opened one at a time.

    Subclasses set :attr:`labels` (``N`` ``int64``, ``-1`` where unknown) and
    :attr:`classes`, and implement :meth:`__len__`, :meth:`open` and :meth:`describe`.
    """

    labels: Tensor
    classes: list[str]
    #: What to do about an image that cannot be decoded (ends the error message).
    remedy: str = "Remove or replace the file."

    def __len__(self) -> int:
        raise NotImplementedError

    def encoded(self, index: int) -> bytes | None:
        """The stored bytes of image ``index`` when it is stored encoded (a JPEG, a PNG), else ``None``.

        With the bytes at hand a crop decodes a JPEG with ``torchvision.io.decode_jpeg``.
        """
        return None

    def open(self, index: int) -> Image.Image:
        """Image ``index``, opened but not yet decoded.

        Raises:
            DataSourceError: the image cannot be read (names it and what to do).
        """
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from (a file, a row), for messages."""
        return f"image {index}"

    def subset(self, size: int, seed: int = 0) -> "ImageSource":
        """A random subset of ``size`` images (fixed by ``seed``), in the source's order."""
        return SourceSubset(self, random_indices(len(self), size, seed).numpy())

    def first_size(self) -> tuple[int, int]:
        """``(width, height)`` of the first image (read from its header)."""
        with self.open(0) as image:
            return image.size

    def load_all(self, size: int, num_workers: int = 0) -> ImageTensorDataset:
        """Every image decoded, its shorter side resized to ``size`` and centre-cropped to a square,
        into one in-memory split (decoded by ``num_workers`` loader workers)."""
        from softcontrast.data.views import CenterCrops

        loader = torch.utils.data.DataLoader(CenterCrops(self, size), batch_size=256, num_workers=num_workers)
        images = torch.cat([batch for batch, _ in loader])
        return ImageTensorDataset(images, self.labels, self.classes)


class SourceSubset(ImageSource):
    """The images ``indices`` of ``source``, renumbered from 0."""

    def __init__(self, source: ImageSource, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.labels = source.labels[torch.from_numpy(self.indices)]
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.indices)

    def open(self, index: int) -> Image.Image:
        return self.source.open(int(self.indices[index]))

    def encoded(self, index: int) -> bytes | None:
        return self.source.encoded(int(self.indices[index]))

    @property
    def remedy(self) -> str:  # type: ignore[override]
        return self.source.remedy

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))


def open_source_image(source: ImageSource, index: int) -> tuple[bytes | None, Image.Image]:
    """Image ``index`` of ``source``: its stored bytes (or ``None``) and the image opened lazily."""
    import io

    encoded = source.encoded(index)
    if encoded is None:
        return None, source.open(index)
    return encoded, open_image(io.BytesIO(encoded), source.describe(index))


def open_image(file, name: str) -> Image.Image:
    """Opens an image file (a path or a file object) lazily; a clear error if it is not an image."""
    try:
        image = Image.open(file)
        image.size  # noqa: B018 - the header has been read
        return image
    except Exception as error:
        raise DataSourceError(f"cannot read image {name}: {error}. Remove or replace the file.") from error


def decode_image(path: Path) -> Tensor:
    """Decodes one image file to a ``3×H×W`` ``uint8`` tensor.

    Raises:
        DataSourceError: the file is not a readable image.
    """
    from softcontrast.data.crops import pil_to_tensor

    with open_image(path, str(path)) as image:
        try:
            return pil_to_tensor(image)
        except Exception as error:
            raise DataSourceError(f"cannot decode image {path}: {error}. Remove or replace the file.") from error


def list_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The image files of ``root/<class>/`` (relative paths as one bytes array), labels and class names.

    Reads each class folder once with ``os.scandir`` (the file type comes with the
    entry, so no file is opened or stat-ed on common file systems).
    """
    if not root.is_dir():
        raise DataSourceError(f"image folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataSourceError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    names: list[bytes] = []
    counts: list[int] = []
    for name in classes:
        files = sorted(
            entry.name for entry in os.scandir(root / name)
            if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file()
        )
        names.extend(os.fsencode(f"{name}/{file}") for file in files)
        counts.append(len(files))
    if not names:
        raise DataSourceError(f"{root} holds no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return np.array(names), labels, classes


class FolderImages(ImageSource):
    """Class-per-folder image files (``root/<class>/<file>``).

    Args:
        root: the folder.
        files: relative paths (one NumPy bytes array), from :func:`list_image_folder`.
        labels: class label of each file.
        classes: class names.
    """

    def __init__(self, root: Path, files: np.ndarray, labels: np.ndarray, classes: list[str]):
        self.root = os.fsencode(str(root))
        self.files = files
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.classes = classes

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """The file of image ``index``."""
        return os.fsdecode(os.path.join(self.root, self.files[index]))

    def open(self, index: int) -> Image.Image:
        path = self.path(index)
        return open_image(path, path)

    def encoded(self, index: int) -> bytes:
        path = self.path(index)
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise DataSourceError(f"cannot read image {path}: {error}. Remove or replace the file.") from error

    def describe(self, index: int) -> str:
        return self.path(index)
