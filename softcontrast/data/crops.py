"""Random resized crops of an image at its own size, cut and resized once in a loader worker.

The box is torchvision's ``RandomResizedCrop`` box: drawn from the image's own
height and width, its area a uniform fraction ``scale`` of the image's and the log of
its aspect ratio uniform in ``log(ratio)``; ten tries, then the largest centred box
within ``ratio``. The box is cut from the decoded ``uint8`` image and resized to the
view's side by ``torchvision.transforms.v2.functional.resized_crop`` with
``antialias=True`` (torch's ``uint8`` antialiased bilinear kernel), so a crop is
torchvision's ``resized_crop`` of the image tensor, pixel for pixel; against PIL's
bilinear resize of the same box it differs by at most one level.

Decoding: JPEG bytes decode with ``torchvision.io.decode_jpeg`` (libjpeg-turbo into
a tensor, no PIL image in between); other formats with PIL. A JPEG is decoded at the
smallest of the scales 1, 1/2, 1/4, 1/8 that still gives every crop of the image at
least its view size in pixels (PIL's ``draft``: the decoder skips the fine DCT
coefficients), as large photos allow. The boxes are drawn on the full-size image
first and mapped onto the reduced one (rounded to its pixels), so the crops cover the
same part of the scene; only the resampling source differs (compare ``draft=False``).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from softcontrast.components.augment import CropSpec  # noqa: F401 - a crop's spec, re-exported here

try:  # torchvision's JPEG decoder (deprecated in favour of TorchCodec): where it is gone, PIL decodes
    from torchvision.io import ImageReadMode, decode_jpeg as _decode_jpeg

    _RGB = ImageReadMode.RGB
except ImportError:  # pragma: no cover - a torchvision without image decoding
    _decode_jpeg = _RGB = None

#: ``(top, left, height, width)`` of a box in pixels of the full-size image.
Box = tuple[int, int, int, int]

#: Reductions a JPEG decoder can apply while decoding (PIL ``draft``).
JPEG_REDUCTIONS = (8, 4, 2, 1)


def sample_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
               rng: np.random.Generator) -> Box:
    """One random resized crop box of a ``height × width`` image, torchvision's rule.

    Args:
        height: image height.
        width: image width.
        scale: area range as a fraction of the image's area.
        ratio: aspect-ratio range (width / height).
        rng: the random source.

    Returns:
        ``(top, left, box height, box width)``.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def jpeg_reduction(boxes: Sequence[Box], sizes: Sequence[int]) -> int:
    """The largest JPEG decode reduction that leaves every box at least its output size."""
    for reduction in JPEG_REDUCTIONS:
        if all(min(h, w) >= reduction * size for (_, _, h, w), size in zip(boxes, sizes)):
            return reduction
    return 1


def decode(image: Image.Image, encoded: bytes | None = None, reduction: int = 1) -> tuple[Tensor, float, float]:
    """Decodes an opened image to a ``3×H×W`` ``uint8`` tensor, a JPEG at ``1/reduction`` scale.

    Args:
        image: the opened, not yet decoded image.
        encoded: its file's bytes, when at hand (a full-scale JPEG then decodes with
            ``torchvision.io.decode_jpeg``).
        reduction: 1, 2, 4 or 8; applies to JPEG only.

    Returns:
        The pixels and the factors from full-size to decoded pixels (x, y).
    """
    width, height = image.size
    if image.format == "JPEG" and reduction == 1 and encoded is not None and _decode_jpeg is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pixels = _decode_jpeg(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=_RGB)
            return pixels, 1.0, 1.0
        except RuntimeError:
            pass  # a JPEG flavour the tensor decoder refuses: PIL decodes it below
    if image.format == "JPEG" and reduction > 1:
        image.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
    pixels = pil_to_tensor(image)
    return pixels, pixels.shape[2] / width, pixels.shape[1] / height


def crop_resize(pixels: Tensor, box: Box, size: int, scale_x: float = 1.0, scale_y: float = 1.0) -> Tensor:
    """Cuts ``box`` (full-size pixels) out of decoded pixels and resizes it to ``size × size`` (antialiased).

    Args:
        pixels: ``3×H×W`` ``uint8``, possibly decoded at a reduced scale.
        box: ``(top, left, height, width)`` in full-size pixels.
        size: output side.
        scale_x: decoded pixels per full-size pixel, horizontally (the box is mapped and rounded).
        scale_y: the same, vertically.

    Returns:
        ``3 × size × size`` ``uint8``.
    """
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = box
    if scale_x != 1.0 or scale_y != 1.0:
        rows, columns = pixels.shape[1:]
        top, left = min(round(top * scale_y), rows - 1), min(round(left * scale_x), columns - 1)
        h, w = max(1, min(round(h * scale_y), rows - top)), max(1, min(round(w * scale_x), columns - left))
    return TF.resized_crop(pixels, top, left, h, w, [size, size], antialias=True)


def random_crops(image: Image.Image, boxes: Sequence[Box], sizes: Sequence[int], encoded: bytes | None = None,
                 draft: bool = True) -> list[Tensor]:
    """The crops ``boxes`` of an opened image, each resized to its size, decoding once at the scale they allow.

    Args:
        image: the opened, not yet decoded image.
        boxes: ``(top, left, height, width)`` in full-size pixels.
        sizes: the output side of each crop.
        encoded: the image file's bytes, when at hand.
        draft: allow decoding a JPEG at 1/2, 1/4 or 1/8 scale.
    """
    reduction = jpeg_reduction(boxes, sizes) if draft and image.format == "JPEG" else 1
    pixels, sx, sy = decode(image, encoded, reduction)
    return [crop_resize(pixels, box, size, sx, sy) for box, size in zip(boxes, sizes)]


def center_crop_resize(image: Image.Image, size: int, crop_fraction: float = 1.0, draft: bool = True,
                       encoded: bytes | None = None) -> Tensor:
    """The evaluation view: the centred square of side ``crop_fraction`` × the shorter side, resized to ``size``.

    ``crop_fraction`` 0.875 is the usual ImageNet protocol (resize 256, centre crop 224);
    1 keeps the whole shorter side.

    Args:
        image: an opened, not yet decoded image.
        size: output side.
        crop_fraction: the kept side as a fraction of the shorter side.
        draft: allow decoding a JPEG at a reduced scale that still covers the output.
        encoded: the image file's bytes, when at hand.

    Returns:
        ``3 × size × size`` ``uint8``.
    """
    width, height = image.size
    side = max(1, round(min(width, height) * crop_fraction))
    box = ((height - side) // 2, (width - side) // 2, side, side)
    return random_crops(image, [box], [size], encoded, draft)[0]


def pil_to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image as a ``3 × H × W`` ``uint8`` tensor."""
    array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
