"""Prepared datasets: every image written once, at a bounded size, into one memory-mapped file per split.

``softcontrast prepare SOURCE OUT --size S`` (:func:`prepare`) reads any source string
(``imagefolder:``, ``hf:``, ``npz:``, ``digits``), fits each image to ``S`` and writes::

    OUT/prepared.json       format version, size, format, source, and per split: count, bytes, classes
    OUT/train/images.bin    the records, back to back: raw RGB pixels, or JPEG bytes
    OUT/train/offsets.npy   N+1 int64: record i is images.bin[offsets[i]:offsets[i + 1]]
    OUT/train/shapes.npy    N×2 int32: stored (height, width) of each image
    OUT/train/labels.npy    N int64 labels (-1 where unknown)
    OUT/train/names.npy     N bytes: where each image came from (file, row), for messages
    OUT/test/...            the same, when the source has a test split

``prepared.json`` is written last, so a folder without it is an interrupted prepare.

The size rule (:func:`fit_image`): for ``S`` at most :data:`MAX_RESIDENT_SIDE`, an image
becomes the square view an in-memory split holds (shorter side resized to ``S``, centre
``S×S`` kept), so it loads straight into device memory; above it, the whole image is
kept and shrunk so that its longer side is at most ``S`` (never enlarged), and training
crops are cut from it as from the original file.

``prepared:OUT`` (:func:`load_prepared`) reads it back with no file opened per image.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from softcontrast.data.crops import center_crop_resize
from softcontrast.data.images import FolderImages, ImageSource, list_image_folder, open_image
from softcontrast.data.sources import MAX_RESIDENT_SIDE, TEST_FOLDERS, load_source, resident_or_streamed
from softcontrast.data.splits import DatasetSplits, DataSourceError, ImageTensorDataset

#: Version of the layout above; a folder written under another version is refused.
FORMAT_VERSION = 1

#: How images are stored: uncompressed RGB pixels, or re-encoded JPEG bytes.
FORMATS = ("pixels", "jpeg")

#: The format ``prepare`` writes unless told (chosen by ``benchmarks/prepared_format.py``, see docs/prepare.md).
DEFAULT_FORMAT = "jpeg"

#: The file that marks a finished prepared folder.
METADATA = "prepared.json"

#: The entries ``prepare`` writes in its output folder (and removes under ``overwrite``).
WRITTEN = (METADATA, "train", "test")

#: Images fitted and encoded per loader batch while preparing.
PREPARE_BATCH = 64


def fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` an image of ``width × height`` is stored at, for ``size`` above the resident bound:
    longer side at most ``size``, aspect ratio kept (rounded), never enlarged."""
    scale = min(1.0, size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """An opened image fitted by the prepared size rule, as a decoded RGB image.

    For ``size`` at most :data:`MAX_RESIDENT_SIDE`: the ``size × size`` square of in-memory
    splits (shorter side resized to ``size``, centre kept; as ``ImageSource.load_all``).
    Above: longer side shrunk to at most ``size`` (:func:`fitted_size`), with PIL's bilinear
    filter (antialiased); a JPEG is decoded at the smallest DCT scale still at least that size.
    """
    if size <= MAX_RESIDENT_SIDE:
        array = center_crop_resize(image, size).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array))
    target = fitted_size(*image.size, size)
    if image.format == "JPEG" and target != image.size:
        image.draft("RGB", target)
    image = image.convert("RGB")
    return image if image.size == target else image.resize(target, Image.BILINEAR)


def encode(image: Image.Image, format: str, quality: int) -> bytes:
    """The record of a fitted RGB image: its pixels (row-major ``H×W×3``) or its JPEG bytes."""
    if format == "pixels":
        return image.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class PreparedImages(ImageSource):
    """One split of a prepared folder, streamed: images cut from one memory-mapped file.

    :meth:`open` reads no file: a ``pixels`` record is wrapped as a PIL image over the
    mapped bytes, a ``jpeg`` record is opened lazily from memory (so the crops still
    decode it at a reduced DCT scale where they can). The index (offsets, shapes, names)
    is held in NumPy arrays that forked loader workers share; the mapping is reopened
    in a process that receives the source by pickling.

    Args:
        folder: the split's folder (``OUT/train``).
        format: ``pixels`` or ``jpeg``.
        classes: class names.
    """

    def __init__(self, folder: Path, format: str, classes: list[str]):
        self.folder, self.format, self.classes = Path(folder), format, classes
        self.offsets = np.load(folder / "offsets.npy")
        self.shapes = np.load(folder / "shapes.npy")
        self.names = np.load(folder / "names.npy")
        self.labels = torch.from_numpy(np.load(folder / "labels.npy").astype(np.int64, copy=False))
        self._data: np.memmap | None = None

    @property
    def data(self) -> np.memmap:
        """``images.bin``, mapped read-only (on first use in each process)."""
        if self._data is None:
            self._data = np.memmap(self.folder / "images.bin", dtype=np.uint8, mode="r")
        return self._data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return len(self.labels)

    def record(self, index: int) -> np.ndarray:
        """The stored bytes of image ``index`` (a view of the mapping)."""
        return self.data[self.offsets[index]:self.offsets[index + 1]]

    remedy = "The prepared folder is damaged: run softcontrast prepare again."

    def encoded(self, index: int) -> bytes | None:
        return None if self.format == "pixels" else self.record(index).tobytes()

    def open(self, index: int) -> Image.Image:
        record = self.record(index)
        if self.format == "pixels":
            height, width = (int(v) for v in self.shapes[index])
            return Image.frombuffer("RGB", (width, height), record, "raw", "RGB", 0, 1)
        return open_image(io.BytesIO(record), self.describe(index))

    def describe(self, index: int) -> str:
        return f"{self.folder} image {index} ({os.fsdecode(self.names[index])})"

    def pixels(self, chunk: int = 4096) -> torch.Tensor:
        """All images of a square ``pixels`` split as one ``N×3×S×S`` ``uint8`` tensor, copied from the mapping
        ``chunk`` images at a time (no second copy of the split)."""
        height, width = (int(v) for v in self.shapes[0])
        array = self.data[: self.offsets[-1]].reshape(len(self), height, width, 3)
        images = torch.empty((len(self), 3, height, width), dtype=torch.uint8)
        for start in range(0, len(self), chunk):
            images[start:start + chunk] = torch.from_numpy(np.array(array[start:start + chunk])).permute(0, 3, 1, 2)
        return images


def load_prepared(path: Path, image_size: int | None = None, num_workers: int = 0) -> DatasetSplits:
    """Loads a folder written by :func:`prepare` (the ``prepared:<path>`` source).

    A folder prepared at a size of at most :data:`MAX_RESIDENT_SIDE` comes back in memory
    (:class:`~softcontrast.data.splits.ImageTensorDataset`): ``pixels`` straight from the
    mapping, ``jpeg`` decoded once. A larger one is streamed (:class:`PreparedImages`),
    unless ``image_size`` asks for small in-memory images.

    Args:
        path: the prepared folder.
        image_size: side of in-memory images (``None``: the prepared size).
        num_workers: loader workers that decode a ``jpeg`` split held in memory.

    Raises:
        DataSourceError: the folder is missing, unfinished, of another format version,
            or truncated; the message says to re-run ``softcontrast prepare``.
    """
    metadata = read_metadata(path)
    splits = {
        name: _load_split(path, metadata, name, image_size, num_workers) for name in metadata["splits"]
    }
    return DatasetSplits(splits["train"], splits.get("test"))


def read_metadata(path: Path) -> dict:
    """The checked ``prepared.json`` of a prepared folder, every split's files checked against it.

    Raises:
        DataSourceError: as :func:`load_prepared`.
    """
    path = Path(path)
    redo = f"re-run `softcontrast prepare SOURCE {path} --size S --overwrite`"
    if not path.is_dir():
        raise DataSourceError(f"prepared folder not found: {path}; write one with "
                              f"`softcontrast prepare SOURCE {path} --size S`")
    if not (path / METADATA).is_file():
        raise DataSourceError(f"{path} has no {METADATA}: it is not a prepared folder, or `softcontrast prepare` "
                              f"was interrupted; {redo}")
    try:
        metadata = json.loads((path / METADATA).read_text())
        version = metadata["format_version"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataSourceError(f"{path / METADATA} is corrupt ({error}); {redo}") from error
    if version != FORMAT_VERSION:
        raise DataSourceError(f"{path} was prepared in format version {version}, and this softcontrast reads "
                              f"version {FORMAT_VERSION}; re-run `softcontrast prepare {metadata.get('source', 'SOURCE')} "
                              f"{path} --size {metadata.get('size', 'S')} --overwrite`")
    if metadata.get("format") not in FORMATS or "train" not in metadata.get("splits", {}):
        raise DataSourceError(f"{path / METADATA} is corrupt (format or splits missing); {redo}")
    for name, split in metadata["splits"].items():
        _check_split(path / name, split["count"], split["bytes"], redo)
    return metadata


def prepared_side(path: Path) -> int:
    """The shorter side of the first training image of a prepared folder (from its index, nothing decoded)."""
    read_metadata(path)
    shapes = np.load(Path(path) / "train" / "shapes.npy", mmap_mode="r")
    return int(min(shapes[0]))


def _check_split(folder: Path, count: int, nbytes: int, redo: str) -> None:
    data = folder / "images.bin"
    actual = data.stat().st_size if data.is_file() else None
    if actual != nbytes:
        found = "is missing" if actual is None else f"holds {actual} bytes"
        raise DataSourceError(f"{data} {found}, {nbytes} expected: the folder is truncated or corrupt; {redo}")
    expected = {"offsets.npy": (count + 1,), "shapes.npy": (count, 2), "labels.npy": (count,), "names.npy": (count,)}
    for file, shape in expected.items():
        try:
            array = np.load(folder / file, mmap_mode="r")
        except Exception as error:  # numpy raises several types for a missing or damaged file
            raise DataSourceError(f"cannot read {folder / file} ({error}); {redo}") from error
        if array.shape != shape:
            raise DataSourceError(f"{folder / file} has shape {array.shape}, {shape} expected: the folder is "
                                  f"truncated or corrupt; {redo}")
        if file == "offsets.npy" and (array[0] != 0 or array[-1] != nbytes or np.any(np.diff(array) <= 0)):
            raise DataSourceError(f"{folder / file} does not index {data}: the folder is corrupt; {redo}")


def _load_split(path: Path, metadata: dict, name: str, image_size: int | None,
                num_workers: int) -> "ImageTensorDataset | ImageSource":
    from softcontrast.data.sources import resize_uint8

    images = PreparedImages(path / name, metadata["format"], metadata["splits"][name]["classes"])
    size = metadata["size"]
    if size <= MAX_RESIDENT_SIDE:
        if metadata["format"] == "pixels":
            return ImageTensorDataset(resize_uint8(images.pixels(), image_size), images.labels, images.classes)
        return images.load_all(image_size or size, num_workers)
    if image_size is None:
        return images
    return resident_or_streamed(images, image_size, num_workers, f"prepared:{path}")


class _Fitted(torch.utils.data.Dataset):
    """Item ``i``: the record of image ``i`` of a source, fitted and encoded, and its stored (height, width)."""

    def __init__(self, source: ImageSource, size: int, format: str, quality: int):
        self.source, self.size, self.format, self.quality = source, size, format, quality

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[bytes, int, int]:
        with self.source.open(index) as image:
            try:
                fitted = fit_image(image, self.size)
            except Exception as error:
                raise DataSourceError(
                    f"cannot decode {self.source.describe(index)}: {error}. Remove or replace the file."
                ) from error
        return encode(fitted, self.format, self.quality), fitted.size[1], fitted.size[0]


def _as_list(batch: list) -> list:
    return batch


class _TensorImages(ImageSource):
    """An in-memory split seen as an image source, to be prepared like any other."""

    def __init__(self, split: ImageTensorDataset, name: str):
        self.images, self.labels, self.classes, self.name = split.images, split.labels, split.classes, name

    def __len__(self) -> int:
        return len(self.labels)

    def open(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index].permute(1, 2, 0).contiguous().numpy())

    def describe(self, index: int) -> str:
        return f"{self.name} row {index}"


def source_splits(source: str) -> dict[str, ImageSource]:
    """The splits of a source string as image sources at their own size (``train``, and ``test`` if any).

    An image folder or a Hugging Face dataset is read one image at a time; other sources
    (``digits``, ``npz:``) are loaded as they are and served from memory.
    """
    kind, _, argument = source.partition(":")
    if kind == "imagefolder" and argument:
        root = Path(argument)
        roots = {"train": root}
        if (root / "train").is_dir():
            test = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
            roots = {"train": root / "train", **({"test": test} if test else {})}
        return {name: FolderImages(folder, *list_image_folder(folder)) for name, folder in roots.items()}
    if kind == "hf" and argument:
        from softcontrast.data.hf import hf_sources

        return hf_sources(argument)
    splits = load_source(source)
    named = {"train": splits.train, "test": splits.test}
    return {name: split if isinstance(split, ImageSource) else _TensorImages(split, source)
            for name, split in named.items() if split is not None}


def prepare(source: str, out: Path, size: int, format: str = DEFAULT_FORMAT, num_workers: int = 0,
            quality: int = 90, overwrite: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Writes the images of ``source`` into a prepared folder ``out`` (layout in this module's docs).

    Images are decoded, fitted (:func:`fit_image`) and encoded by ``num_workers`` loader
    workers, and appended to each split's ``images.bin`` in order by this process; only the
    index (a few numbers per image) is held in memory. ``prepared.json`` is written last.

    Args:
        source: any source string of :func:`~softcontrast.data.sources.load_source` except ``prepared:``.
        out: the output folder; created, or empty (or a prepared folder, with ``overwrite``).
        size: the size rule's bound (:func:`fit_image`), in pixels.
        format: ``pixels`` (raw RGB) or ``jpeg`` (re-encoded at ``quality``).
        num_workers: loader workers that decode and encode.
        quality: JPEG quality (1-95) of the ``jpeg`` format.
        overwrite: replace a prepared dataset already in ``out``.
        log: called with progress lines (none when ``None``).

    Returns:
        ``out``.

    Raises:
        DataSourceError: a bad argument, a non-empty ``out`` without ``overwrite``, or an
            unreadable source image (named).
    """
    out = Path(out)
    if format not in FORMATS:
        raise DataSourceError(f"unknown prepared format {format!r}: use one of {', '.join(FORMATS)}")
    if size < 1:
        raise DataSourceError(f"the prepared size must be a positive number of pixels, got {size}")
    if not 1 <= quality <= 95:
        raise DataSourceError(f"JPEG quality must lie in [1, 95], got {quality}")
    _clear_output(out, overwrite)
    splits = source_splits(source)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format_version": FORMAT_VERSION, "size": size, "format": format, "quality": quality,
                "source": source, "splits": {}}
    for name, images in splits.items():
        metadata["splits"][name] = _write_split(images, out / name, size, format, quality, num_workers, log)
    temporary = out / (METADATA + ".partial")
    temporary.write_text(json.dumps(metadata, indent=1) + "\n")
    temporary.replace(out / METADATA)
    return out


def _clear_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataSourceError(f"{out} is a file; give a folder to write the prepared dataset into")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise DataSourceError(f"{out} is not empty; choose an empty or new folder, or pass --overwrite to "
                              "replace the prepared dataset in it")
    foreign = [entry for entry in entries if entry not in WRITTEN and not entry.startswith(METADATA)]
    if foreign:
        raise DataSourceError(f"{out} holds files that prepare did not write ({', '.join(foreign[:5])}); "
                              "--overwrite replaces only a prepared dataset, so choose another folder")
    for entry in entries:  # the metadata first: an interrupted overwrite leaves an unfinished folder
        target = out / entry
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _write_split(images: ImageSource, folder: Path, size: int, format: str, quality: int, num_workers: int,
                 log: Callable[[str], None] | None) -> dict:
    folder.mkdir(parents=True)
    count = len(images)
    offsets = np.zeros(count + 1, dtype=np.int64)
    shapes = np.zeros((count, 2), dtype=np.int32)
    loader = torch.utils.data.DataLoader(_Fitted(images, size, format, quality), batch_size=PREPARE_BATCH,
                                         num_workers=num_workers, collate_fn=_as_list)
    every = max(PREPARE_BATCH, math.ceil(count / 20))
    start, index = time.perf_counter(), 0
    with open(folder / "images.bin", "wb") as data:
        for batch in loader:
            for record, height, width in batch:
                data.write(record)
                offsets[index + 1] = offsets[index] + len(record)
                shapes[index] = (height, width)
                index += 1
            if log is not None and (index % every < len(batch) or index == count):
                rate = index / max(time.perf_counter() - start, 1e-9)
                log(f"{folder.name}: {index}/{count} images, {rate:.0f} images/s")
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "shapes.npy", shapes)
    np.save(folder / "labels.npy", images.labels.numpy().astype(np.int64))
    files = getattr(images, "files", None)  # an image folder's relative paths
    names = files if files is not None else np.array([os.fsencode(images.describe(i)) for i in range(count)])
    np.save(folder / "names.npy", names)
    return {"count": count, "bytes": int(offsets[-1]), "classes": list(images.classes)}
