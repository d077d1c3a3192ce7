"""JPEG images decoded on the training device: loader workers hand over bytes and boxes, not pixels.

With ``decode_on="device"`` a loader worker reads an image's JPEG bytes and draws its
crop boxes (the same boxes, from the same seed, as a worker that decodes), and the
main process decodes the whole batch at once with ``torchvision.io.decode_jpeg`` on the
training device (nvJPEG on a CUDA GPU) and cuts the crops there with torchvision's
antialiased ``resized_crop``. Images that are not JPEG files are still decoded and
cropped by the worker. Every JPEG is decoded at full scale (no draft). On the CPU the
result equals the crops of workers that decode without the draft, pixel for pixel (one
libjpeg-turbo decoder); on a GPU, nvJPEG's pixels may differ from libjpeg-turbo's by a
few levels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from softcontrast.data.splits import DataSourceError


@dataclass
class PendingCrops:
    """A batch whose JPEG images are still encoded: what a worker hands over under ``decode_on="device"``.

    Attributes:
        sizes: the output side of each crop of an image (the crop plan's sizes).
        decoded: per image, its crops (``uint8`` ``3×s×s`` each) when a worker decoded it, else ``None``.
        encoded: the JPEG bytes of the images left encoded, in batch order (``uint8`` 1-D tensors).
        boxes: for those, their ``V×4`` boxes ``(top, left, height, width)`` in full-size pixels.
        names: for those, where each came from (for messages).
    """

    sizes: list[int]
    decoded: list[list[Tensor] | None] = field(default_factory=list)
    encoded: list[Tensor] = field(default_factory=list)
    boxes: list[Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def pin_memory(self) -> "PendingCrops":
        """The same batch in pinned host memory (called by a ``DataLoader`` with ``pin_memory``)."""
        pin = lambda tensors: [t.pin_memory() for t in tensors]  # noqa: E731
        return PendingCrops(self.sizes, [None if d is None else pin(d) for d in self.decoded], pin(self.encoded),
                            self.boxes, self.names)

    def finish(self, device: torch.device | str) -> list[Tensor]:
        """Decodes the encoded images on ``device`` in one batch and cuts their crops there.

        Returns:
            One ``B×3×s×s`` ``uint8`` batch per crop of the plan, on ``device``.

        Raises:
            DataSourceError: an image's bytes cannot be decoded (names it).
        """
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as TF

        device = torch.device(device)
        pixels: list[Tensor] = []
        if self.encoded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    pixels = decode_jpeg(self.encoded, mode=ImageReadMode.RGB, device=device)
                except RuntimeError as error:
                    raise DataSourceError(f"cannot decode one of {', '.join(self.names)} on {device}: {error}. "
                                          "Remove or replace the file, or decode in the workers "
                                          "(--decode-on workers)") from error
        crops: list[list[Tensor]] = [[] for _ in self.sizes]
        waiting = iter(zip(pixels, self.boxes))
        for done in self.decoded:
            if done is None:
                image, boxes = next(waiting)
                done = [TF.resized_crop(image, *box, [size, size], antialias=True)
                        for box, size in zip(boxes.tolist(), self.sizes)]
            for view, crop in zip(crops, done):
                view.append(crop.to(device, non_blocking=True))
        return [torch.stack(view) for view in crops]


def collate_pending(batch: list[tuple[object, int]]) -> tuple[PendingCrops, Tensor]:
    """Collates the items of ``RandomCrops(decode=False)``: crops, or ``(bytes, boxes, name, sizes)``."""
    sizes: list[int] | None = None
    pending = PendingCrops(sizes=[])
    for payload, _ in batch:
        if isinstance(payload, list):
            pending.decoded.append(payload)
            sizes = sizes or [crop.shape[-1] for crop in payload]
        else:
            encoded, boxes, name, crop_sizes = payload
            pending.decoded.append(None)
            pending.encoded.append(encoded)
            pending.boxes.append(boxes)
            pending.names.append(name)
            sizes = sizes or list(crop_sizes)
    pending.sizes = sizes or []
    return pending, torch.tensor([index for _, index in batch], dtype=torch.int64)
