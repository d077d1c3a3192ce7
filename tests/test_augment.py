"""Device views against torchvision.transforms.v2.functional, image by image."""

import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from softcontrast.components.augment import (
    BatchAugment,
    ViewRecipe,
    adjust_hue,
    apply_view,
    color_jitter,
    device_constant,
    imagenet_strong,
    moco_v2_cifar,
    sample_crop_boxes,
    sample_view_params,
)

JITTER_REFERENCE = (
    lambda image, f: TF.adjust_brightness(image, f),
    lambda image, f: TF.adjust_contrast(image, f),
    lambda image, f: TF.adjust_saturation(image, f),
    lambda image, f: TF.adjust_hue(image, f),
)


def reference_view(image, params, i, recipe):
    """torchvision's functional ops on one image with sample i's parameters."""
    top, left, height, width = params.crop[i].tolist()
    out = TF.resized_crop(image, top, left, height, width, [recipe.size, recipe.size], antialias=height <= recipe.size)
    if params.flip[i]:
        out = TF.horizontal_flip(out)
    if recipe.jitter_p > 0 and params.jitter[i]:
        for op in params.jitter_order[i].tolist():
            out = JITTER_REFERENCE[op](out, params.jitter_factors[i, op].item())
    if recipe.gray_p > 0 and params.gray[i]:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if recipe.blur_p > 0 and params.blur[i]:
        sigma = params.blur_sigma[i].item()
        out = TF.gaussian_blur(out, [recipe.blur_kernel_size] * 2, [sigma, sigma])
    if recipe.solarize_p > 0 and params.solarize[i]:
        out = TF.solarize(out, recipe.solarize_threshold)
    return out


@pytest.mark.parametrize(
    "recipe",
    [moco_v2_cifar(32), imagenet_strong(24, blur_p=0.5, solarize_p=0.5), ViewRecipe(size=20, crop_scale=(0.5, 1.0))],
    ids=["moco_v2_cifar", "imagenet_blur_solarize", "crop_to_other_size"],
)
def test_each_image_matches_torchvision_for_fixed_parameters(recipe):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(12, 3, 32, 32, generator=generator)
    params = sample_view_params(recipe, 12, 32, 32, "cpu", generator)
    views = apply_view(images, params, recipe, normalize=False)
    for i in range(12):
        expected = reference_view(images[i], params, i, recipe)
        torch.testing.assert_close(views[i], expected, atol=2e-5, rtol=1e-5, msg=f"image {i}")


def test_parameters_differ_across_the_batch():
    params = sample_view_params(moco_v2_cifar(), 64, 32, 32, "cpu", torch.Generator().manual_seed(0))
    assert len({tuple(box) for box in params.crop.tolist()}) > 32
    assert 0 < params.flip.sum() < 64
    assert params.jitter_factors[:, 0].unique().numel() == 64
    assert len({tuple(o) for o in params.jitter_order.tolist()}) > 4


def test_crop_boxes_lie_inside_the_image_and_respect_the_scale():
    boxes = sample_crop_boxes(2000, 32, 40, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(1))
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 40).all()
    area = (height * width).float() / (32 * 40)
    assert area.min() >= 0.18 and area.max() <= 1.0


def test_batch_augment_gives_different_views_of_the_same_image():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(8, -1, -1, -1)
    views = BatchAugment(moco_v2_cifar(16))(image)
    assert views.shape == (8, 3, 16, 16)
    assert views.dtype == torch.float32
    assert not torch.allclose(views[0], views[1])


def test_bad_recipe_values_are_rejected():
    with pytest.raises(ValueError, match="crop_scale"):
        ViewRecipe(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip_p"):
        ViewRecipe(flip_p=1.5)


def test_hue_rotation_matches_torchvision_on_gray_primary_and_clipped_pixels():
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(8, 3, 6, 6, generator=generator)
    images[:, :, 0, 0] = 0.5  # gray: no chroma
    images[:, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])  # primaries and ties between channels
    images[:, :, 0, 2] = torch.tensor([0.0, 1.0, 1.0])
    images[:, :, 0, 3] = torch.tensor([0.2, 0.2, 0.9])
    images[:, :, 0, 4] = 0.0
    images[:, :, 0, 5] = 1.0
    shifts = torch.tensor([-0.5, -0.3, -0.1, 0.0, 0.05, 0.25, 0.4, 0.5])
    rotated = adjust_hue(images, shifts)
    for i, shift in enumerate(shifts.tolist()):
        torch.testing.assert_close(rotated[i], TF.adjust_hue(images[i], shift), atol=2e-5, rtol=1e-5)


def test_fused_jitter_equals_the_four_operations_in_each_samples_order():
    """Every one of the 24 orders, with and without jitter, against torchvision op by op."""
    orders = torch.tensor(list(itertools.permutations(range(4)))).repeat(2, 1)
    batch = orders.shape[0]
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(batch, 3, 8, 8, generator=generator)
    apply = torch.arange(batch) < 24
    factors = torch.cat([torch.rand(batch, 3, generator=generator) * 1.2 + 0.4,
                         torch.rand(batch, 1, generator=generator) - 0.5], dim=1)
    jittered = color_jitter(images, apply, factors, orders)
    for i in range(batch):
        expected = images[i]
        for op in orders[i].tolist() if apply[i] else []:
            expected = JITTER_REFERENCE[op](expected, factors[i, op].item())
        torch.testing.assert_close(jittered[i], expected, atol=2e-5, rtol=1e-5, msg=f"sample {i}")


def test_device_constants_are_made_once_and_usable_outside_inference_mode():
    with torch.inference_mode():
        made = device_constant((0.25, 0.5), "cpu")
    assert device_constant((0.25, 0.5), "cpu") is made
    assert not made.is_inference()
    assert device_constant((0.25, 0.5), "cpu", torch.float64).dtype == torch.float64
    weight = torch.ones(2, requires_grad=True)
    (weight * made).sum().backward()
    torch.testing.assert_close(weight.grad, torch.tensor([0.25, 0.5]))
