"""``hf:`` sources: Hugging Face datasets from the hub cache or a ``save_to_disk`` folder, read lazily.

A split is an :class:`HFImages`: the Arrow files stay memory-mapped (as
``datasets`` keeps them), the image column is read undecoded, one row at a time,
and PIL opens the row's bytes lazily in the loader worker that crops it. Labels are
one read of the label column. Nothing per image is held in Python, and the source
pickles to the paths of its Arrow files, so loader workers start cheaply.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softcontrast.components.distributed import on_main_process, rank
from softcontrast.data.images import ImageSource
from softcontrast.data.sources import resident_or_streamed
from softcontrast.data.splits import DatasetSplits, DataSourceError, ImageTensorDataset

#: Splits of a Hugging Face dataset that may serve as the evaluation split, in order of preference.
EVALUATION_SPLITS = ("test", "validation", "valid", "val")


class HFImages(ImageSource):
    """One split of a Hugging Face dataset, its images opened one row at a time.

    The image column is read with ``datasets.Image(decode=False)``: :meth:`open` takes
    the row's encoded bytes (or its file path) and returns a lazily opened PIL image,
    so a JPEG can still be decoded at a reduced scale. The labels come from the
    ``ClassLabel`` column (``-1`` everywhere when there is none).

    Args:
        split: a ``datasets.Dataset`` (memory-mapped, as ``load_from_disk`` and
            ``load_dataset`` give it) with an ``Image`` column.
        name: the dataset's name, for messages.
        split_name: the split's name, for messages.

    Raises:
        DataSourceError: the split has no image column or no rows.
    """

    def __init__(self, split, name: str, split_name: str):
        import datasets

        self.name, self.split_name = name, split_name
        self.column = _column_of(split, datasets.Image)
        if self.column is None:
            raise DataSourceError(f"hf:{name} split {split_name!r} has no image column "
                                  f"(features: {list(split.features)}); use a dataset with an Image feature")
        if len(split) == 0:
            raise DataSourceError(f"hf:{name} split {split_name!r} holds no rows")
        self.rows = split.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        label_column = _column_of(split, datasets.ClassLabel)
        if label_column is None:
            self.labels = torch.full((len(split),), -1, dtype=torch.int64)
            self.classes: list[str] = []
        else:
            self.labels = torch.from_numpy(read_labels(split, label_column))
            self.classes = list(split.features[label_column].names)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return f"hf:{self.name} split {self.split_name!r} row {index}"

    remedy = "Drop or replace the row (Dataset.filter / Dataset.map) and save the dataset again."

    def encoded(self, index: int) -> bytes | None:
        cell = self.rows[int(index)][self.column]
        return (cell or {}).get("bytes")

    def open(self, index: int) -> Image.Image:
        cell = self.rows[int(index)][self.column]
        data, path = (cell or {}).get("bytes"), (cell or {}).get("path")
        if data is None and not path:
            raise DataSourceError(f"{self.describe(index)} holds no image (neither bytes nor a path): "
                                  "drop the row (Dataset.filter) and save the dataset again")
        try:
            image = Image.open(io.BytesIO(data) if data is not None else path)
            image.size  # noqa: B018 - the header has been read
            return image
        except Exception as error:
            raise DataSourceError(
                f"cannot read image {self.describe(index)}: {error}. The row's image is not readable: "
                "drop or replace the row (Dataset.filter / Dataset.map) and save the dataset again"
            ) from error


def read_labels(split, column: str) -> np.ndarray:
    """The ``int64`` values of ``column`` in ``split``, in one read of that column only."""
    return np.asarray(split.with_format("numpy", columns=[column])[:][column], dtype=np.int64)


def _column_of(split, feature_type) -> str | None:
    """The first column of ``split`` whose feature is a ``feature_type``."""
    return next((c for c, f in split.features.items() if isinstance(f, feature_type)), None)


def _is_saved_folder(name: str) -> bool:
    """Whether ``name`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    path = Path(name)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _open_dataset(name: str):
    """``name`` as a ``DatasetDict``: a ``save_to_disk`` folder, else ``datasets.load_dataset``
    (a hub id, read from the cache when ``HF_DATASETS_OFFLINE=1``, or a local data folder)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(name) if _is_saved_folder(name) else datasets.load_dataset(name)
    except Exception as error:
        raise DataSourceError(
            f"cannot load Hugging Face dataset {name!r}: {error}. Give a folder written by save_to_disk, "
            "a local data folder, or a hub id (downloaded beforehand when offline: HF_DATASETS_OFFLINE=1 "
            "reads the cache)"
        ) from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def load_hf(name: str, image_size: int | None, num_workers: int = 0) -> DatasetSplits:
    """Loads ``hf:<name>``: the ``train`` split and the evaluation split (:func:`evaluation_split`).

    The dataset is opened (downloaded or converted where needed) by the main process
    only; the others receive it as the paths of its memory-mapped files. Each split
    becomes an :class:`HFImages` and then, through
    :func:`~softcontrast.data.sources.resident_or_streamed`, is decoded into memory
    when its images are small and streamed otherwise (crops from the original image).

    Args:
        name: a hub id, a ``save_to_disk`` folder or a local data folder.
        image_size: side of in-memory images (``None``: the first image's shorter side).
        num_workers: loader workers that decode a split held in memory.

    Raises:
        DataSourceError: the dataset cannot be loaded, has no ``train`` split or no image column.
    """
    sources = hf_sources(name)
    train = resident_or_streamed(sources["train"], image_size, num_workers, f"hf:{name}")
    if "test" not in sources:
        return DatasetSplits(train, None)
    test_size = image_size or (train.image_size if isinstance(train, ImageTensorDataset) else None)
    return DatasetSplits(train, resident_or_streamed(sources["test"], test_size, num_workers, f"hf:{name}"))


def hf_sources(name: str) -> dict[str, HFImages]:
    """The ``train`` split of ``hf:<name>`` and its evaluation split (as ``test``, when there is one),
    opened lazily (the main process opens the dataset; the others receive its file paths).

    Raises:
        DataSourceError: the dataset cannot be loaded, has no ``train`` split or no image column.
    """
    loaded = on_main_process(lambda: _open_dataset(name))
    if "train" not in loaded:
        raise DataSourceError(f"Hugging Face dataset {name!r} has no 'train' split (splits: {list(loaded)})")
    sources = {"train": HFImages(loaded["train"], name, "train")}
    test_name = evaluation_split(loaded, name)
    if test_name is not None:
        sources["test"] = HFImages(loaded[test_name], name, test_name)
    return sources


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
        label_column = _column_of(split, datasets.ClassLabel)
        if label_column is not None and (read_labels(split, label_column) >= 0).any():
            return candidate
        if rank() == 0:
            print(f"hf:{name}: split {candidate!r} has no labels, so it is not the evaluation split",
                  file=sys.stderr, flush=True)
    return None
