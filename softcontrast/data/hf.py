"""``hf:`` sources: Hugging Face datasets from the hub cache or a ``save_to_disk`` folder."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from softcontrast.components.distributed import rank
from softcontrast.data.sources import resize_uint8
from softcontrast.data.splits import DatasetSplits, DataSourceError, ImageTensorDataset


def load_hf(name: str, image_size: int | None, num_workers: int = 0) -> DatasetSplits:
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
        images.append(resize_uint8(tensor, image_size))
    if label_column is None:
        labels = torch.full((len(images),), -1, dtype=torch.int64)
        classes: list[str] = []
    else:
        labels = torch.as_tensor(split[label_column], dtype=torch.int64)
        classes = list(split.features[label_column].names)
    return ImageTensorDataset(torch.stack(images), labels, classes)


