"""The papers' ImageNet view recipes by name, multi-size small crops and RandAugment."""

from dataclasses import replace

import pytest
import torch

from softcontrast.cli import build_parser, resolve
from softcontrast.components.augment import (
    IMAGENET_MEAN, IMAGENET_STD, BatchAugment, ViewRecipe, apply_view, imagenet_family, moco_v2_cifar,
    sample_view_params, sce_strong, sce_weak, to_float,
)
from softcontrast.components.backbones import resnet
from softcontrast.components.multiview import SmallCrops
from softcontrast.components.randaugment import rand_augment
from softcontrast.components.view_recipes import NAMED_VIEWS, named_views, small_crop_recipes
from softcontrast.methods import SCEConfig, Setup, method_spec
from softcontrast.run_settings import DataSettings, saved_settings

# (name, view, field, expected, source): every value each named recipe must hold.
EXPECTED = [
    ("mocov2-imagenet", 0, "crop_scale", (0.2, 1.0), "MoCo v2 main_moco.py --aug-plus"),
    ("mocov2-imagenet", 0, "jitter", (0.4, 0.4, 0.4, 0.1), "MoCo v2"),
    ("mocov2-imagenet", 0, "jitter_p", 0.8, "MoCo v2"),
    ("mocov2-imagenet", 0, "gray_p", 0.2, "MoCo v2"),
    ("mocov2-imagenet", 0, "blur_p", 0.5, "MoCo v2"),
    ("mocov2-imagenet", 0, "blur_sigma", (0.1, 2.0), "MoCo v2"),
    ("mocov2-imagenet", 0, "solarize_p", 0.0, "MoCo v2"),
    ("mocov2-imagenet", 0, "flip_p", 0.5, "MoCo v2"),
    ("mocov2-imagenet", 0, "mean", IMAGENET_MEAN, "MoCo v2"),
    ("mocov2-imagenet", 1, "blur_p", 0.5, "MoCo v2: both views alike"),
    ("mocov3-imagenet", 0, "crop_scale", (0.08, 1.0), "MoCo v3 main_moco.py --crop-min 0.08"),
    ("mocov3-imagenet", 0, "jitter", (0.4, 0.4, 0.2, 0.1), "MoCo v3"),
    ("mocov3-imagenet", 0, "jitter_p", 0.8, "MoCo v3"),
    ("mocov3-imagenet", 0, "gray_p", 0.2, "MoCo v3"),
    ("mocov3-imagenet", 0, "blur_p", 1.0, "MoCo v3 view 1"),
    ("mocov3-imagenet", 0, "solarize_p", 0.0, "MoCo v3 view 1"),
    ("mocov3-imagenet", 1, "blur_p", 0.1, "MoCo v3 view 2"),
    ("mocov3-imagenet", 1, "solarize_p", 0.2, "MoCo v3 view 2"),
    ("mocov3-imagenet", 1, "std", IMAGENET_STD, "MoCo v3"),
    ("sce-imagenet", 0, "crop_scale", (0.2, 1.0), "SCE eztorch resnet50_imagenet.yaml"),
    ("sce-imagenet", 0, "jitter", (0.4, 0.4, 0.2, 0.1), "SCE (MoCo v3's pair)"),
    ("sce-imagenet", 0, "gray_p", 0.2, "SCE"),
    ("sce-imagenet", 0, "blur_p", 1.0, "SCE view 1"),
    ("sce-imagenet", 1, "crop_scale", (0.2, 1.0), "SCE"),
    ("sce-imagenet", 1, "blur_p", 0.1, "SCE view 2"),
    ("sce-imagenet", 1, "solarize_p", 0.2, "SCE view 2"),
    ("sce-imagenet", 1, "flip_p", 0.5, "SCE"),
    ("sce-imagenet", 1, "mean", IMAGENET_MEAN, "SCE"),
    ("fnc-imagenet", 0, "crop_scale", (0.08, 1.0), "FNC data.py crop_area"),
    ("fnc-imagenet", 0, "jitter", (0.8, 0.8, 0.8, 0.2), "FNC color_jitter_strength 1.0 (SimCLR 0.8s/0.2s)"),
    ("fnc-imagenet", 0, "jitter_p", 0.8, "FNC data_util.py"),
    ("fnc-imagenet", 0, "gray_p", 0.2, "FNC data_util.py"),
    ("fnc-imagenet", 0, "blur_p", 0.5, "FNC use_blur, batch_random_blur p 0.5"),
    ("fnc-imagenet", 0, "randaugment", (2, 7), "FNC use_randaugment: distort_image_with_randaugment(.., 2, 7)"),
    ("fnc-imagenet", 0, "mean", (0.0, 0.0, 0.0), "FNC: pixels in [0, 1], no normalisation"),
    ("fnc-imagenet", 0, "std", (1.0, 1.0, 1.0), "FNC"),
    ("fnc-imagenet", 5, "randaugment", (2, 7), "FNC: every view alike"),
]


@pytest.mark.parametrize("name, slot, field, expected, source", EXPECTED)
def test_each_named_recipe_holds_its_papers_values(name, slot, field, expected, source):
    recipe = named_views(name).for_view(slot)
    assert getattr(recipe, field) == pytest.approx(expected), source
    assert recipe.size == 224 and recipe.blur_kernel_size == 23  # about a tenth of 224, odd


def test_every_name_is_a_choice_of_augment_and_unknown_names_are_refused():
    assert set(NAMED_VIEWS) == {"mocov2-imagenet", "mocov3-imagenet", "sce-imagenet", "fnc-imagenet"}
    spec = method_spec("sce")
    with pytest.raises(SystemExit):
        build_parser(spec).parse_args(["--augment", "byol-imagenet"])
    with pytest.raises(KeyError, match="sce-imagenet"):
        named_views("byol-imagenet")


def test_a_named_pair_gives_the_query_view_recipe_1_and_the_key_view_recipe_2_at_the_runs_size():
    data = DataSettings(view_size=32, augment="sce-imagenet")
    first, second = named_views("sce-imagenet").recipes
    method = method_spec("sce")(resnet("resnet18", width=4), setup=Setup(view=data.view), queue_size=32)
    assert method.views.recipes == [replace(first, size=32), replace(second, size=32)]
    fnc = method_spec("fnc")(resnet("resnet18", width=4), setup=Setup(view=data.view), support_views=2,
                             memory_size=64)
    assert [r.blur_p for r in fnc.views.recipes] == [1.0, 0.1, 1.0, 0.1]  # further views alternate
    on_moco = method_spec("fnc-moco")(resnet("resnet18", width=4), setup=Setup(view=data.view), queue_size=32)
    assert on_moco.detection_augment.recipe == replace(second, size=32)  # detectors are key-like views
    chosen = DataSettings(view_size=32, augment="mocov3-imagenet", crop_min_scale=0.5, flip_p=0.0).view(sce_weak(), 1)
    assert (chosen.crop_scale, chosen.flip_p, chosen.solarize_p) == ((0.5, 1.0), 0.0, 0.2)  # flags still apply


def test_the_families_of_today_ignore_the_slot():
    for augment in ("cifar", "imagenet"):
        data = DataSettings(view_size=32, augment=augment)
        assert data.view(sce_weak(), 1) == data.view(sce_weak(), 0) == data.view(sce_weak())
    assert DataSettings(view_size=32, augment="imagenet").view(moco_v2_cifar(), 1) == imagenet_family(
        moco_v2_cifar(32))
    assert Setup(view=lambda recipe: replace(recipe, size=9)).view_at(sce_strong(), 1).size == 9  # one-argument view


def test_augment_names_resolve_and_are_saved_and_read_back():
    spec = method_spec("sce")
    args = vars(build_parser(spec).parse_args(["--dataset", "npz:x", "--augment", "sce-imagenet",
                                               "--small-crops-preset", "sce-five-crops"]))
    settings = resolve(spec, args, image_side=256)
    saved = settings.saved()
    assert saved["augment"] == "sce-imagenet" and saved["small_crops_preset"] == "sce-five-crops"
    assert saved["view_size"] == 224
    again = saved_settings(saved)
    assert again.data.augment == "sce-imagenet" and again.config.small_crops_preset == "sce-five-crops"
    old = {key: value for key, value in saved.items() if key != "small_crops_preset"}
    assert saved_settings(old).config.small_crops_preset == "none"  # runs saved before it keep one-size crops


def test_the_sce_preset_makes_its_four_crops_at_224_and_scales_their_sides_with_the_view():
    crops = SCEConfig(small_crops_preset="sce-five-crops").crops(named_views("sce-imagenet").for_view(0))
    assert crops.sizes == [192, 160, 128, 96]
    assert [r.crop_scale for r in crops.recipes] == [(0.172, 0.86), (0.143, 0.715), (0.114, 0.571), (0.086, 0.429)]
    query = named_views("sce-imagenet").for_view(0)
    # eztorch's local views: the first global view's jitter, gray and flip, blur p 0.5, solarize p 0.2
    assert all(r.blur_p == 0.5 and r.solarize_p == 0.2 for r in crops.recipes)
    assert all((r.jitter, r.jitter_p, r.gray_p, r.flip_p, r.mean, r.std, r.blur_sigma)
               == (query.jitter, query.jitter_p, query.gray_p, query.flip_p, query.mean, query.std, query.blur_sigma)
               for r in crops.recipes)
    assert [r.size for r in small_crop_recipes("sce-five-crops", sce_strong(32))] == [27, 23, 18, 14]
    with pytest.raises(ValueError, match="small_crops") as error:
        SCEConfig(small_crops=2, small_crops_preset="sce-five-crops").crops(sce_strong(32))
    assert error.value.name == "small_crops"


def test_small_crops_of_several_sizes_embed_per_size_and_are_listed_in_the_crop_plan():
    recipes = [sce_strong(12), sce_strong(12), sce_strong(8)]
    crops = SmallCrops.of(recipes)
    calls = []

    def encode(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    embedded = crops(encode, images, torch.Generator().manual_seed(0))
    assert embedded.shape == (3, 5, 3) and calls == [(10, 3, 12, 12), (5, 3, 8, 8)]
    method = method_spec("sce")(resnet("resnet18", width=4), setup=Setup(view=lambda r: replace(r, size=16)),
                                queue_size=32, small_crops_preset="sce-five-crops")
    assert [spec.size for spec in method.crop_plan()] == [16, 16, 14, 11, 9, 7]
    assert method.crop_plan()[2].scale == (0.172, 0.86)
    batch = [torch.randint(0, 256, (4, 3, spec.size, spec.size), dtype=torch.uint8) for spec in method.crop_plan()]
    loss = method(batch, torch.arange(4)).loss  # the loader workers' crops, one batch per entry
    assert torch.isfinite(loss)
    assert torch.isfinite(method(torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8), torch.arange(4)).loss)


def test_randaugment_changes_images_keeps_shape_and_dtype_and_repeats_with_its_seed():
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    out = rand_augment(images, 2, 9, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global CPU stream is left as it was
    assert out.shape == images.shape and out.dtype == images.dtype and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, images, atol=1 / 255)
    assert torch.equal(out, rand_augment(images, 2, 9, seed=torch.tensor([3])))
    assert not torch.equal(out, rand_augment(images, 2, 9, seed=4))
    same = rand_augment(images[:1].expand(6, -1, -1, -1), 2, 9, seed=3)
    assert len({tuple(image.flatten().tolist()) for image in same}) > 1  # each sample draws its own operations


def test_a_recipe_with_randaugment_applies_it_and_one_without_draws_what_it_drew_before():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    plain = ViewRecipe(size=16, jitter_p=0.0, gray_p=0.0, flip_p=0.0)
    with_ra = replace(plain, randaugment=(2, 9))
    views = BatchAugment(with_ra)(images, torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 16, 16) and views.dtype == torch.float32
    params = sample_view_params(with_ra, 4, 20, 20, "cpu", torch.Generator().manual_seed(0))
    without = apply_view(to_float(images), replace(params, randaugment_seed=None), plain)
    assert not torch.allclose(views, without, atol=1e-2)
    assert sample_view_params(plain, 4, 20, 20, "cpu", torch.Generator().manual_seed(0)).randaugment_seed is None
    with pytest.raises(ValueError, match="randaugment"):
        ViewRecipe(randaugment=(0, 7))
    with pytest.raises(ValueError, match="randaugment"):
        ViewRecipe(randaugment=(2, 11))
