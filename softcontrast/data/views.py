"""What a loader worker cuts out of a streamed image: training crops, or the evaluation view."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from softcontrast.data.crops import CropSpec, center_crop_resize, random_crops, sample_box
from softcontrast.data.images import ImageSource, open_source_image
from softcontrast.data.splits import DataSourceError

#: The evaluation view keeps this fraction of the resized shorter side (ImageNet: resize 256, centre 224).
EVAL_CROP_FRACTION = 0.875


class RandomCrops(torch.utils.data.Dataset):
    """Training items of a streamed split: every crop a step needs, cut from the original image.

    Item ``(index, epoch)`` is ``(crops, index)`` with one ``3×s×s`` ``uint8`` crop per
    :class:`CropSpec`, in order. The boxes are drawn from a generator seeded with
    ``(seed, epoch, index)``, so an image gets the same crops whichever worker or
    process decodes it, and a resumed epoch repeats them.

    Args:
        source: the images.
        specs: the crops of one image, in the order the step takes them.
        seed: base seed of the boxes.
        draft: decode JPEG files at a reduced scale where every crop allows it.
        decode: decode in the worker; ``False`` leaves a JPEG file's bytes encoded: the item is
            then ``((bytes, boxes, name, sizes), index)`` for
            :class:`~softcontrast.data.device_decode.PendingCrops` to decode on the device.
    """

    def __init__(self, source: ImageSource, specs: Sequence[CropSpec], seed: int = 0, draft: bool = True,
                 decode: bool = True):
        if not specs:
            raise ValueError("RandomCrops needs at least one crop")
        self.source, self.specs, self.seed, self.draft, self.decode = source, list(specs), seed, draft, decode

    def __len__(self) -> int:
        return len(self.source)

    def boxes(self, index: int, epoch: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The boxes of image ``index`` in ``epoch`` (full-size pixels)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        return [sample_box(height, width, spec.scale, spec.ratio, rng) for spec in self.specs]

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[Tensor], int]:
        index, epoch = key
        encoded, image = open_source_image(self.source, index)
        with image:
            width, height = image.size
            boxes = self.boxes(index, epoch, height, width)
            sizes = [spec.size for spec in self.specs]
            if not self.decode and encoded is not None and image.format == "JPEG":
                return ((torch.frombuffer(bytearray(encoded), dtype=torch.uint8), torch.tensor(boxes),
                         self.source.describe(index), sizes), index)
            try:
                crops = random_crops(image, boxes, sizes, encoded, self.draft)
            except Exception as error:
                raise DataSourceError(f"cannot decode {self.source.describe(index)}: {error}. "
                                      f"{self.source.remedy}") from error
        return crops, index


class CenterCrops(torch.utils.data.Dataset):
    """Evaluation items of a streamed split: ``(3×size×size uint8, index)``, the centre view.

    Args:
        source: the images.
        size: output side.
        crop_fraction: kept fraction of the resized shorter side (1: all of it).
        draft: decode JPEG files at a reduced scale that still covers the output.
    """

    def __init__(self, source: ImageSource, size: int, crop_fraction: float = 1.0, draft: bool = True):
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction}")
        self.source, self.size, self.crop_fraction, self.draft = source, size, crop_fraction, draft
        self.labels, self.classes = source.labels, source.classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        encoded, image = open_source_image(self.source, index)
        with image:
            try:
                return center_crop_resize(image, self.size, self.crop_fraction, self.draft, encoded), index
            except Exception as error:
                raise DataSourceError(f"cannot decode {self.source.describe(index)}: {error}. "
                                      f"{self.source.remedy}") from error
