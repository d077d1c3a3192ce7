"""Views of a whole batch, made on the device with per-sample random parameters.

A :class:`ViewRecipe` names the random transformations of one view. Making a view
is two steps, so that the random part and the pixel math can be checked apart:

1. :func:`sample_view_params` draws every sample's parameters at once (tensors on
   the device, no host synchronisation);
2. :func:`apply_view` applies them to a float batch in one pass.

For fixed parameters each image equals ``torchvision.transforms.v2.functional``
applied to it alone (crop + bilinear resize, flip, colour jitter in the sampled
order, grayscale, Gaussian blur, solarize). RandAugment, off by default, is
torchvision's, image by image (:mod:`softcontrast.components.randaugment`). One
documented difference: the crop is
resized with plain bilinear interpolation, which equals torchvision's antialiased
resize whenever the crop is not larger than the output (always true for CIFAR
recipes); for larger crops it equals ``antialias=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softcontrast.components.randaugment import check_randaugment, rand_augment

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    """One crop of an image: output side, area range and aspect-ratio range (torchvision's meaning).

    Attributes:
        size: side of the square output in pixels.
        scale: range of the box's area as a fraction of the image's area.
        ratio: range of the box's aspect ratio (width / height).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"crop size must be >= 1, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {self.ratio}")


@dataclass(frozen=True)
class ViewRecipe:
    """The random transformations of one view.

    Attributes:
        size: output side length.
        crop_scale: area range of the random resized crop (fraction of the image).
        crop_ratio: aspect-ratio range of the crop.
        flip_p: probability of a horizontal flip.
        jitter: maximal brightness, contrast, saturation and hue changes.
        jitter_p: probability of colour jitter.
        gray_p: probability of grayscale.
        blur_p: probability of Gaussian blur.
        blur_sigma: range of the blur's standard deviation (pixels).
        blur_kernel_fraction: blur kernel size as a fraction of ``size`` (made odd).
        solarize_p: probability of solarization.
        solarize_threshold: solarization threshold in ``[0, 1]``.
        mean: per-channel mean for normalisation.
        std: per-channel std for normalisation.
        randaugment: ``(number of operations, magnitude)`` of RandAugment, the magnitude
            on the paper's 0–10 scale, applied after the colour jitter and before the
            grayscale (FNC's order); ``None`` (the default): off.
    """

    size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD
    randaugment: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"view size must be >= 1, got {self.size}")
        if self.randaugment is not None:
            check_randaugment(self.randaugment)
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability and must lie in [0, 1], got {value}")
        if min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")

    @property
    def crop(self) -> CropSpec:
        """The crop part of the view (what a loader worker cuts from a streamed image)."""
        return CropSpec(self.size, self.crop_scale, self.crop_ratio)

    @property
    def blur_kernel_size(self) -> int:
        """Odd kernel size of the Gaussian blur."""
        k = max(3, int(round(self.blur_kernel_fraction * self.size)))
        return k if k % 2 == 1 else k + 1


def moco_v2_cifar(size: int = 32) -> ViewRecipe:
    """MoCo v2 CIFAR view: crop 0.2–1, flip, jitter 0.4/0.4/0.4/0.1 p=0.8, gray p=0.2."""
    return ViewRecipe(size=size)


def sce_weak(size: int = 32) -> ViewRecipe:
    """SCE weak (key) view: random resized crop and flip only."""
    return ViewRecipe(size=size, jitter_p=0.0, gray_p=0.0)


def sce_strong(size: int = 32) -> ViewRecipe:
    """SCE strong (query) view on CIFAR: the MoCo v2 CIFAR recipe."""
    return moco_v2_cifar(size)


def imagenet_strong(size: int = 224, blur_p: float = 1.0, solarize_p: float = 0.0) -> ViewRecipe:
    """ImageNet view (BYOL-style): crop 0.08–1, flip, jitter 0.4/0.4/0.2/0.1 p=0.8,
    gray p=0.2, Gaussian blur and solarize with the given probabilities."""
    return ViewRecipe(
        size=size,
        crop_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=blur_p,
        solarize_p=solarize_p,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def imagenet_family(recipe: ViewRecipe) -> ViewRecipe:
    """A method's view with MoCo v2's ImageNet additions (ours to name: the ``imagenet`` view family).

    MoCo v2's ImageNet views are its CIFAR views plus Gaussian blur (σ 0.1–2, kernel
    about 10 % of the side) with p 0.5, normalised with ImageNet's mean and std. Here the
    blur is added with p 0.5 to views that jitter colour (a weak view, crop and flip
    only, stays weak), and every view takes ImageNet's statistics; crops, flips and
    jitter stay the method's. The papers' own ImageNet views are recipes of their own.
    """
    blur_p = 0.5 if recipe.jitter_p > 0 and recipe.blur_p == 0 else recipe.blur_p
    return replace(recipe, blur_p=blur_p, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def for_image_size(recipe: ViewRecipe, size: int) -> ViewRecipe:
    """The same recipe producing views of side ``size``."""
    return replace(recipe, size=size)


@dataclass
class ViewParams:
    """Per-sample parameters of one view (all tensors have batch size first).

    Attributes:
        crop: ``B×4`` integer boxes ``(top, left, height, width)``; ``None`` for images
            cropped already (in loader workers).
        flip: ``B`` flags.
        jitter: ``B`` flags: apply colour jitter.
        jitter_factors: ``B×4`` brightness, contrast, saturation factors and hue shift.
        jitter_order: ``B×4`` order in which the four jitter operations run.
        gray: ``B`` flags.
        blur: ``B`` flags.
        blur_sigma: ``B`` standard deviations.
        solarize: ``B`` flags.
        randaugment_seed: a one-element ``int64`` tensor seeding the view's RandAugment
            draws; ``None`` when the recipe has no RandAugment.
    """

    crop: Tensor | None
    flip: Tensor
    jitter: Tensor
    jitter_factors: Tensor
    jitter_order: Tensor
    gray: Tensor
    blur: Tensor
    blur_sigma: Tensor
    solarize: Tensor
    randaugment_seed: Tensor | None = None


_CONSTANTS: dict[tuple, Tensor] = {}


def device_constant(values: tuple, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A constant tensor made once per ``(values, device, dtype)`` and then reused.

    Copying Python numbers to a GPU waits for the copy, a host synchronisation in
    every step; the step's constants (crop fallback, hue sectors, normalisation) are
    therefore made on first use only. Callers must not modify the result in place.

    Args:
        values: the numbers (a tuple, possibly nested).
        device: where the tensor lives.
        dtype: its dtype.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (values, device, dtype)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        with torch.inference_mode(False):
            tensor = _CONSTANTS[key] = torch.tensor(values, device=device, dtype=dtype)
    return tensor


def _uniform(low: float, high: float, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """Random resized crop boxes, torchvision's rule, for a whole batch at once.

    Each sample tries ``attempts`` (area, log-aspect) draws and keeps the first that
    fits; samples with none fall back to the largest centred crop within ``ratio``.

    Returns:
        ``B×4`` ``int64`` boxes ``(top, left, height, width)``.
    """
    area = height * width
    target = torch.rand(batch, attempts, device=device, generator=generator) * (scale[1] - scale[0]) + scale[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(batch, attempts, device=device, generator=generator) * (log_hi - log_lo) + log_lo)
    w = torch.round(torch.sqrt(target * area * aspect))
    h = torch.round(torch.sqrt(target * area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    u = torch.rand(batch, 2, device=device, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    fallback = device_constant(((height - fh) // 2, (width - fw) // 2, fh, fw), device, top.dtype)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(found[:, None], boxes, fallback).long()


def sample_view_params(
    recipe: ViewRecipe,
    batch: int,
    height: int,
    width: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    crop: bool = True,
) -> ViewParams:
    """Draws every sample's random parameters for one view.

    Args:
        recipe: the view's transformations.
        batch: number of images.
        height: input height.
        width: input width.
        device: where the parameters live (the images' device).
        generator: optional random generator on ``device``.
        crop: draw crop boxes (``False``: the images were cropped in loader workers).
    """
    device = torch.device(device)
    coin = lambda p: torch.rand(batch, device=device, generator=generator) < p  # noqa: E731
    b, c, s, h = recipe.jitter
    factors = torch.stack(
        [
            _uniform(max(0.0, 1 - b), 1 + b, batch, device, generator),
            _uniform(max(0.0, 1 - c), 1 + c, batch, device, generator),
            _uniform(max(0.0, 1 - s), 1 + s, batch, device, generator),
            _uniform(-h, h, batch, device, generator),
        ],
        dim=1,
    )
    order = torch.rand(batch, 4, device=device, generator=generator).argsort(dim=1)
    boxes = None  # drawn after the jitter's parameters: the order of the draws is part of a seeded run
    if crop:
        boxes = sample_crop_boxes(batch, height, width, recipe.crop_scale, recipe.crop_ratio, device, generator)
    return ViewParams(
        crop=boxes,
        flip=coin(recipe.flip_p),
        jitter=coin(recipe.jitter_p),
        jitter_factors=factors,
        jitter_order=order,
        gray=coin(recipe.gray_p),
        blur=coin(recipe.blur_p),
        blur_sigma=_uniform(recipe.blur_sigma[0], recipe.blur_sigma[1], batch, device, generator),
        solarize=coin(recipe.solarize_p),
        # drawn last and only with RandAugment: recipes without it draw what they drew before
        randaugment_seed=(None if recipe.randaugment is None else
                          torch.randint(0, 2**62, (1,), device=device, generator=generator)),
    )


def resized_crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crops each image to its box and resizes it to ``size × size`` (bilinear).

    Args:
        images: ``B×C×H×W`` float images.
        boxes: ``B×4`` boxes ``(top, left, height, width)``.
        size: output side.
    """
    _, _, height, width = images.shape
    boxes = boxes.to(images.dtype)
    top, left, box_h, box_w = boxes.unbind(dim=1)
    steps = torch.arange(size, device=images.device, dtype=images.dtype) + 0.5
    ys = top[:, None] + (steps[None] * box_h[:, None] / size - 0.5).clamp(min=0)
    xs = left[:, None] + (steps[None] * box_w[:, None] / size - 0.5).clamp(min=0)
    ys = torch.minimum(ys, (top + box_h - 1)[:, None])
    xs = torch.minimum(xs, (left + box_w - 1)[:, None])
    grid_y = (2 * ys + 1) / height - 1
    grid_x = (2 * xs + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _per_sample(values: Tensor) -> Tensor:
    return values[:, None, None, None]


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, one channel (``B×1×H×W``)."""
    r, g, b = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Scales intensities by a per-sample factor."""
    return (images * _per_sample(factor)).clamp(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blends each image with its mean gray level."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, _per_sample(factor))


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blends each image with its grayscale version."""
    return _blend(images, grayscale(images), _per_sample(factor))


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotates hue by a per-sample shift in ``[-0.5, 0.5]`` (fraction of a turn).

    The HSV round trip in closed form: with ``v = max(r, g, b)``, chroma
    ``c = v − min(r, g, b)`` and ``h`` the hue in sixths of a turn (shifted by
    ``6·shift``), channel ``n ∈ (5, 3, 1)`` for ``(r, g, b)`` becomes
    ``v − c · clamp(min(k, 4 − k), 0, 1)`` with ``k = (n + h) mod 6``. Saturation and
    value are unchanged, as in the HSV formulation.
    """
    r, g, b = images.unbind(dim=1)
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    sixths = torch.where(
        value == r,
        (g - b) / safe,
        torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    sixths = sixths + 6.0 * shift.to(images.dtype)[:, None, None]
    sectors = device_constant((5.0, 3.0, 1.0), images.device, images.dtype)[None, :, None, None]
    k = torch.remainder(sectors + sixths[:, None], 6.0)
    return value[:, None] - chroma[:, None] * torch.minimum(k, 4.0 - k).clamp(0, 1)


def color_jitter(images: Tensor, apply: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Brightness, contrast, saturation and hue, each sample in its own order.

    Brightness, contrast and saturation are all the blend
    ``clamp(o + f·(x − o), 0, 1)`` with ``o`` black, the mean gray level and the
    grayscale image respectively, so each of the four positions costs one blend
    (every sample with its own operation's ``f`` and ``o``) and one hue rotation.

    Args:
        images: ``B×3×H×W`` float images in ``[0, 1]``.
        apply: ``B`` flags: samples to jitter.
        factors: ``B×4`` factors of the four operations.
        order: ``B×4`` permutation of ``0..3`` per sample.
    """
    for position in range(4):
        operation = order[:, position]
        gray = grayscale(images)
        mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
        other = torch.where(_per_sample(operation == 2), gray, mean * _per_sample(operation == 1).to(images.dtype))
        blend = apply & (operation != 3)
        factor = torch.where(blend, factors.gather(1, operation[:, None]).squeeze(1), torch.ones_like(factors[:, 0]))
        blended = torch.lerp(other.expand_as(images), images, _per_sample(factor.to(images.dtype))).clamp_(0, 1)
        hued = adjust_hue(images, factors[:, 3])
        images = torch.where(_per_sample(apply & (operation == 3)), hued, blended)
    return images


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with per-sample sigma and reflect padding."""
    batch, channels, height, width = images.shape
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None].to(images.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad = kernel_size // 2
    flat = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def solarize(images: Tensor, threshold: float) -> Tensor:
    """Inverts every pixel at or above ``threshold``."""
    return torch.where(images >= threshold, 1.0 - images, images)


def apply_view(images: Tensor, params: ViewParams, recipe: ViewRecipe, normalize: bool = True) -> Tensor:
    """Applies sampled parameters to a batch.

    Args:
        images: ``B×3×H×W`` float images in ``[0, 1]``.
        params: per-sample parameters from :func:`sample_view_params`.
        recipe: the view's recipe (size, blur kernel, normalisation).
        normalize: subtract ``recipe.mean`` and divide by ``recipe.std``.

    Returns:
        ``B×3×size×size`` views.
    """
    if params.crop is None:
        if images.shape[-2:] != (recipe.size, recipe.size):
            raise ValueError(f"images cropped in the loader are {tuple(images.shape[-2:])}, the view is {recipe.size}")
        views = images
    else:
        views = resized_crop(images, params.crop, recipe.size)
    views = torch.where(_per_sample(params.flip), views.flip(-1), views)
    if recipe.jitter_p > 0:
        views = color_jitter(views, params.jitter, params.jitter_factors, params.jitter_order)
    if recipe.randaugment is not None:
        if params.randaugment_seed is None:
            raise ValueError("the recipe has RandAugment but its parameters carry no seed: draw them with "
                             "sample_view_params for this recipe")
        views = rand_augment(views, *recipe.randaugment, seed=params.randaugment_seed)
    if recipe.gray_p > 0:
        views = torch.where(_per_sample(params.gray), grayscale(views).expand_as(views), views)
    if recipe.blur_p > 0:
        blurred = gaussian_blur(views, params.blur_sigma, recipe.blur_kernel_size)
        views = torch.where(_per_sample(params.blur), blurred, views)
    if recipe.solarize_p > 0:
        views = torch.where(_per_sample(params.solarize), solarize(views, recipe.solarize_threshold), views)
    return normalize_channels(views, recipe) if normalize else views


def normalize_channels(images: Tensor, recipe: ViewRecipe) -> Tensor:
    """Subtracts ``recipe.mean`` and divides by ``recipe.std`` per channel."""
    mean = device_constant(recipe.mean, images.device, images.dtype)[None, :, None, None]
    std = device_constant(recipe.std, images.device, images.dtype)[None, :, None, None]
    return (images - mean) / std


def to_float(images: Tensor) -> Tensor:
    """``uint8`` images to float in ``[0, 1]``."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class BatchAugment(nn.Module):
    """Makes one random view of a batch on the batch's device.

    Args:
        recipe: the view's transformations.
    """

    def __init__(self, recipe: ViewRecipe):
        super().__init__()
        self.recipe = recipe

    def forward(self, images: Tensor, generator: torch.Generator | None = None, cropped: bool = False) -> Tensor:
        """Returns a normalised float view of ``uint8`` (or ``[0, 1]`` float) images.

        Args:
            images: ``B×3×H×W`` images.
            generator: draws the per-sample parameters (on the images' device; a
                method passes its per-process stream); default: the global generator.
            cropped: the images are this view's crops already (cut in loader workers,
                ``B×3×size×size``); the rest of the recipe is applied.
        """
        images = to_float(images)
        batch, _, height, width = images.shape
        params = sample_view_params(self.recipe, batch, height, width, images.device, generator, crop=not cropped)
        return apply_view(images, params, self.recipe)


def center_view(images: Tensor, recipe: ViewRecipe) -> Tensor:
    """The deterministic evaluation view: resize to ``recipe.size`` and normalise."""
    images = to_float(images)
    if images.shape[-1] != recipe.size or images.shape[-2] != recipe.size:
        images = F.interpolate(images, size=(recipe.size, recipe.size), mode="bilinear", antialias=True)
    return normalize_channels(images, recipe)
