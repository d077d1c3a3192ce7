"""ImageNet-like JPEG folders made from real photos, for loader benchmarks and tests.

ImageNet's training images are mostly about 500×375 (landscape) or 375×500
(portrait) JPEGs of photographs. Timing a loader on noise would be wrong twice:
noise compresses badly (large files, slow entropy decoding) and has no smooth
regions, so both the decoder and the resampler do different work than on photos.
These images are cut from the two photographs scikit-learn ships
(``load_sample_images``: china.jpg and flower.jpg, 640×427): a random crop of varied
scale with the output's aspect ratio, a random horizontal flip, a resize to the
output size, and mild brightness, contrast and colour changes, saved at JPEG quality 90.

This module is a helper of the benchmarks and their tests, not part of the package.
Run as a script, it writes a folder:

Run: ``python benchmarks/photos.py <folder> --count 500 --classes 10``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

#: ``(width, height)`` of a landscape image; portrait images are the transpose.
LANDSCAPE = (500, 375)
#: Share of portrait images (ImageNet has roughly one portrait image in five).
PORTRAIT_SHARE = 0.2
JPEG_QUALITY = 90


def sample_photos() -> list[Image.Image]:
    """The RGB photographs scikit-learn ships (china.jpg and flower.jpg)."""
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(array).convert("RGB") for array in load_sample_images().images]


def imagenet_like_image(photo: Image.Image, rng: np.random.Generator, portrait: bool) -> Image.Image:
    """One ImageNet-like image cut from ``photo``: random crop, flip, resize, mild colour change.

    Args:
        photo: a decoded RGB photograph.
        rng: the random source.
        portrait: make a 375×500 image instead of a 500×375 one.

    Returns:
        The new RGB image (not yet saved).
    """
    out_w, out_h = (LANDSCAPE[1], LANDSCAPE[0]) if portrait else LANDSCAPE
    aspect = out_w / out_h
    width, height = photo.size
    # The largest box of the output's aspect ratio that fits, scaled by a random factor.
    full_w = min(width, height * aspect)
    factor = rng.uniform(0.45, 1.0)
    box_w = full_w * factor
    box_h = box_w / aspect
    left = rng.uniform(0, width - box_w)
    top = rng.uniform(0, height - box_h)
    image = photo.resize((out_w, out_h), Image.BICUBIC, box=(left, top, left + box_w, top + box_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))


def write_imagenet_like_folder(root: Path, count: int, classes: int = 10, seed: int = 0) -> list[Path]:
    """Writes ``count`` ImageNet-like JPEGs into ``root/<class>/`` (an image folder).

    Images are dealt round-robin to ``classes`` folders named ``class_00``, ``class_01``, …;
    about one in five is portrait (375×500), the rest landscape (500×375), all JPEG quality 90.
    The same arguments write the same files.

    Args:
        root: the folder to fill (created if missing).
        count: number of images.
        classes: number of class folders.
        seed: seed of the crops, flips and colour changes.

    Returns:
        The written files, in the order they were made.

    Raises:
        ValueError: ``count`` or ``classes`` is below 1.
    """
    if count < 1 or classes < 1:
        raise ValueError(f"need at least one image and one class, got count={count}, classes={classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    written = []
    for index in range(count):
        folder = root / f"class_{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        photo = photos[int(rng.integers(len(photos)))]
        image = imagenet_like_image(photo, rng, portrait=bool(rng.random() < PORTRAIT_SHARE))
        path = folder / f"image_{index:05d}.jpg"
        image.save(path, "JPEG", quality=JPEG_QUALITY)
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Writes an ImageNet-like JPEG image folder.")
    parser.add_argument("root", type=Path, help="the folder to fill")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {len(write_imagenet_like_folder(args.root, args.count, args.classes, args.seed))} images "
          f"into {args.root}")
