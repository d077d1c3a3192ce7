"""The side of a source's images, read cheaply (a header, a shape, a metadata file) before loading it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from softcontrast.data.images import IMAGE_SUFFIXES, open_image
from softcontrast.data.splits import DataSourceError


def image_side(source: str, image_size: int | None = None) -> int:
    """The shorter side of the images training will see from ``source``, in pixels.

    ``image_size`` (when set and small enough to be held in memory) is that side;
    otherwise the first training image's shorter side (``digits``: 32, their loaded size).

    Raises:
        DataSourceError: the source cannot be read.
    """
    from softcontrast.data.sources import MAX_RESIDENT_SIDE

    if image_size is not None and image_size <= MAX_RESIDENT_SIDE:
        return image_size
    kind, _, argument = source.partition(":")
    if kind == "digits":
        return image_size or 32
    if kind == "imagefolder" and argument:
        return _folder_side(Path(argument))
    if kind == "npz" and argument:
        return _npz_side(Path(argument))
    if kind == "hf" and argument:
        return _hf_side(argument)
    if kind == "prepared" and argument:
        from softcontrast.data.prepared import prepared_side

        return prepared_side(Path(argument))
    from softcontrast.data.sources import load_source

    load_source(source)  # raises the error that names the choices
    raise DataSourceError(f"cannot tell the image size of {source!r}")


def _folder_side(root: Path) -> int:
    root = root / "train" if (root / "train").is_dir() else root
    if not root.is_dir():
        raise DataSourceError(f"image folder not found: {root}")
    for folder in sorted(entry.path for entry in os.scandir(root) if entry.is_dir()):
        files = sorted(entry.path for entry in os.scandir(folder)
                       if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file())
        if files:
            with open_image(files[0], files[0]) as image:
                return min(image.size)
    raise DataSourceError(f"{root} holds no image files in class folders: expected {root}/<class>/<image files>")


def _npz_side(path: Path) -> int:
    if not path.is_file():
        raise DataSourceError(f"npz file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x_train.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape = read_header(member)[0]
    except Exception as error:
        raise DataSourceError(f"cannot read x_train of {path}: {error}") from error
    spatial = [s for s in shape[1:] if s not in (1, 3)] or list(shape[1:3])
    return int(min(spatial))


def _hf_side(name: str) -> int:
    from softcontrast.data.hf import hf_sources

    return min(hf_sources(name)["train"].first_size())
