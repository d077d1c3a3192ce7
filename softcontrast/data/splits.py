"""The in-memory split, the pair of splits a source gives, and the error a bad source raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from softcontrast.data.images import ImageSource


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

    train: "ImageTensorDataset | ImageSource"
    test: "ImageTensorDataset | ImageSource | None"
