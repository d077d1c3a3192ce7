"""RandAugment as a view option (FNC's default on ImageNet), image by image on the device.

RandAugment (Cubuk et al., 2020) applies ``N`` operations drawn at random from a
fixed list (shears, translations, rotation, brightness, colour, contrast, sharpness,
posterize, solarize, auto-contrast, equalize, identity), each at one global
magnitude ``M`` on a 0–10 scale. FNC's official pipeline uses ``N = 2, M = 7``
(EfficientNet's implementation, on ``uint8`` images, after the colour jitter and
before the grayscale).

Here each image gets ``torchvision.transforms.v2.RandAugment`` on its own (so every
sample draws its own operations), on ``uint8`` pixels, on whatever device the batch
is on, with ``num_magnitude_bins = 11`` so that ``M`` means the paper's 0–10 scale
and gray (128) filling the corners that geometric operations uncover, as FNC's does.
torchvision's list of operations is not EfficientNet's (no cutout, invert or
solarize-add; it adds identity and equalize).

Cost: one Python loop over the batch per view (about ``2·N`` small kernels per
image) and one host synchronisation per view to read the seed; the other view
operations are batched. It is therefore off by default and meant for the runs that
reproduce FNC.

Random draws: torchvision draws from the CPU's default generator; the view's seed,
drawn from the method's generator (:func:`~softcontrast.components.augment.sample_view_params`),
seeds it inside :func:`torch.random.fork_rng`, so a seeded run repeats and the
global CPU stream is left as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The top of RandAugment's magnitude scale (the paper's and FNC's).
MAX_MAGNITUDE = 10
#: Pixel value of the corners uncovered by shears, translations and rotations.
FILL = 128


def check_randaugment(value: tuple[int, int]) -> None:
    """Raises ``ValueError`` unless ``value`` is ``(operations >= 1, magnitude in 0..10)``, both integers."""
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"randaugment must be (number of operations, magnitude), two integers, got {value!r}")
    num_ops, magnitude = value
    if num_ops < 1 or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaugment needs >= 1 operation and a magnitude in 0..{MAX_MAGNITUDE}, got {value!r}")


def rand_augment(images: Tensor, num_ops: int, magnitude: int, seed: "Tensor | int") -> Tensor:
    """RandAugment of every image of a batch, each with its own operations.

    Args:
        images: ``B×3×H×W`` float images in ``[0, 1]``.
        num_ops: operations per image (``N``).
        magnitude: their magnitude on the 0–10 scale (``M``).
        seed: seeds the draws (a one-element tensor, read on the host, or an int).

    Returns:
        ``B×3×H×W`` float images in ``[0, 1]`` (rounded to 256 levels, as the
        operations run on ``uint8``).
    """
    from torchvision.transforms import v2  # imported on first use: most runs have no RandAugment

    check_randaugment((num_ops, magnitude))
    seed = int(seed.item()) if isinstance(seed, Tensor) else int(seed)
    pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    transform = v2.RandAugment(num_ops, magnitude, num_magnitude_bins=MAX_MAGNITUDE + 1, fill=FILL)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        augmented = torch.stack([transform(image) for image in pixels])
    return augmented.to(images.dtype).div_(255)
