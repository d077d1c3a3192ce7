"""Random resized crops of an image at its own size, cut and resized once in a loader worker.

The box is torchvision's ``RandomResizedCrop`` box: drawn from the image's own
height and width, its area a uniform fraction ``scale`` of the image's and the log of
its aspect ratio uniform in ``log(ratio)``; ten tries, then the largest centred box
within ``ratio``. The box is then resized to the view's side with PIL's bilinear
filter, which antialiases (the filter widens with the reduction), so a crop equals
``torchvision.transforms.v2.functional.resized_crop(image, *box, [size, size])`` on
the PIL image, pixel for pixel.

JPEG files are decoded at the smallest of the scales 1, 1/2, 1/4, 1/8 that still
gives every crop of the image at least its view size in pixels (PIL's ``draft``: the
decoder skips the fine DCT coefficients). The boxes are drawn on the full-size image
first and mapped onto the reduced one, so the crops cover the same part of the scene;
only the resampling source differs (compare ``draft=False``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from softcontrast.components.augment import CropSpec  # noqa: F401 - a crop's spec, re-exported here

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


def decode_for_boxes(image: Image.Image, boxes: Sequence[Box], sizes: Sequence[int],
                     draft: bool = True) -> tuple[Image.Image, float, float]:
    """Decodes an opened image, at a reduced scale where the boxes allow (JPEG only).

    Args:
        image: an opened, not yet decoded image.
        boxes: the crops that will be cut, in full-size pixels.
        sizes: the output side of each crop.
        draft: allow decoding a JPEG at 1/2, 1/4 or 1/8 scale.

    Returns:
        The decoded RGB image and the factors from full-size to decoded pixels (x, y).
    """
    width, height = image.size
    if draft and image.format == "JPEG":
        reduction = jpeg_reduction(boxes, sizes)
        if reduction > 1:
            image.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
    image = image.convert("RGB")
    return image, image.size[0] / width, image.size[1] / height


def crop_resize(image: Image.Image, box: Box, size: int, scale_x: float = 1.0, scale_y: float = 1.0) -> Tensor:
    """Cuts ``box`` (full-size pixels) out of a decoded image and resizes it to ``size × size``.

    Args:
        image: the decoded RGB image (possibly decoded at a reduced scale).
        box: ``(top, left, height, width)`` in full-size pixels.
        size: output side.
        scale_x: decoded pixels per full-size pixel, horizontally.
        scale_y: the same, vertically.

    Returns:
        ``3 × size × size`` ``uint8``.
    """
    top, left, h, w = box
    region = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
    if scale_x == 1.0 and scale_y == 1.0:
        resized = image.crop(tuple(int(v) for v in region)).resize((size, size), Image.BILINEAR)
    else:
        resized = image.resize((size, size), Image.BILINEAR, box=region)
    return pil_to_tensor(resized)


def center_crop_resize(image: Image.Image, size: int, crop_fraction: float = 1.0, draft: bool = True) -> Tensor:
    """The evaluation view: shorter side resized to ``size / crop_fraction``, centre ``size × size`` kept.

    ``crop_fraction`` 0.875 is the usual ImageNet protocol (resize 256, centre crop 224);
    1 keeps the whole shorter side.

    Args:
        image: an opened, not yet decoded image.
        size: output side.
        crop_fraction: the kept side as a fraction of the resized shorter side.
        draft: allow decoding a JPEG at a reduced scale that still covers the output.

    Returns:
        ``3 × size × size`` ``uint8``.
    """
    width, height = image.size
    short = min(width, height)
    side = short * crop_fraction  # full-size pixels kept along the shorter side
    box_h = box_w = side
    top, left = (height - box_h) / 2, (width - box_w) / 2
    if draft and image.format == "JPEG":
        reduction = next((r for r in JPEG_REDUCTIONS if side >= r * size), 1)
        if reduction > 1:
            image.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
    image = image.convert("RGB")
    sx, sy = image.size[0] / width, image.size[1] / height
    region = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
    return pil_to_tensor(image.resize((size, size), Image.BILINEAR, box=region))


def pil_to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image as a ``3 × H × W`` ``uint8`` tensor."""
    array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
