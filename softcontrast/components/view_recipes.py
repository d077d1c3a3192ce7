"""The papers' ImageNet view recipes by name, and SCE's multi-size multi-crop.

A named recipe (``--augment NAME``) replaces a method's own views: a method asks
for its view number ``slot`` (0: the query/anchor view, 1: the key/column view, then
any further views) and gets ``recipes[slot % len(recipes)]`` — for an asymmetric
pair, view 0 gets recipe 1 and view 1 recipe 2; FNC's ``2 + S`` views alternate
between them (its own recipe is one, so every view gets it). Small crops and other
views derived from the query view (SANE's strong mix-up view) derive from recipe 1 (a
small-crop preset sets its crops' blur and solarize probabilities).
The run's view size replaces the recipe's 224, and ``--crop-min-scale`` /
``--flip-p``, when given, still apply on top.

Sources of the values (DESIGN, "The papers' ImageNet recipes"):

* ``mocov2-imagenet`` — MoCo v2 (facebookresearch/moco ``main_moco.py``, ``--aug-plus``):
  crop 0.2–1, jitter 0.4/0.4/0.4/0.1 p 0.8, gray p 0.2, blur σ 0.1–2 p 0.5, flip,
  ImageNet mean/std; both views alike.
* ``mocov3-imagenet`` — MoCo v3 (facebookresearch/moco-v3 ``main_moco.py``): crop
  0.08–1 (its ``--crop-min``), jitter 0.4/0.4/0.2/0.1 p 0.8, gray p 0.2, flip,
  ImageNet mean/std; view 1 blur p 1.0, view 2 blur p 0.1 and solarize p 0.2.
* ``sce-imagenet`` — SCE's official ImageNet config (eztorch
  ``resnet50_imagenet.yaml``): MoCo v3's pair with crop 0.2–1.
* ``fnc-imagenet`` — FNC (google-research/fnc ``data_util.py``, ``run.py`` flags): crop
  0.08–1, flip, SimCLR colour jitter of strength 1.0 (0.8/0.8/0.8/0.2, p 0.8),
  RandAugment (2 operations, magnitude 7), gray p 0.2, blur σ 0.1–2 p 0.5 (kernel a
  tenth of the side), no mean/std normalisation (pixels in ``[0, 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from softcontrast.components.augment import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe

#: The side the papers' recipes are written for; other view sizes scale crop sides by ``size / 224``.
REFERENCE_SIZE = 224


@dataclass(frozen=True)
class NamedViews:
    """A named view recipe: one recipe for every view, or a pair.

    Attributes:
        name: the ``--augment`` value.
        recipes: recipe 1 (query/anchor view), recipe 2 (key/column view) if any.
        source: where the values come from.
    """

    name: str
    recipes: tuple[ViewRecipe, ...]
    source: str

    def for_view(self, slot: int) -> ViewRecipe:
        """The recipe of a method's view number ``slot`` (0: query/anchor, 1: key/column, ...)."""
        if slot < 0:
            raise ValueError(f"a view's slot must be >= 0, got {slot}")
        return self.recipes[slot % len(self.recipes)]


def mocov2_imagenet(size: int = REFERENCE_SIZE) -> ViewRecipe:
    """MoCo v2's ImageNet view (``--aug-plus``), both views alike."""
    return ViewRecipe(size=size, crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                      blur_p=0.5, blur_sigma=(0.1, 2.0), flip_p=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def mocov3_pair(size: int = REFERENCE_SIZE, crop_min: float = 0.08) -> tuple[ViewRecipe, ViewRecipe]:
    """MoCo v3's asymmetric pair: view 1 always blurred, view 2 rarely blurred and sometimes solarized."""
    first = ViewRecipe(size=size, crop_scale=(crop_min, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
                       blur_p=1.0, blur_sigma=(0.1, 2.0), flip_p=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return first, replace(first, blur_p=0.1, solarize_p=0.2)


def fnc_imagenet(size: int = REFERENCE_SIZE) -> ViewRecipe:
    """FNC's ImageNet view: SimCLR's views with colour strength 1.0, RandAugment (2, 7), no normalisation."""
    return ViewRecipe(size=size, crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2,
                      blur_p=0.5, blur_sigma=(0.1, 2.0), flip_p=0.5, randaugment=(2, 7),
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


#: Every named recipe of ``--augment`` (besides ``auto``, ``cifar`` and ``imagenet``).
NAMED_VIEWS: dict[str, NamedViews] = {
    "mocov2-imagenet": NamedViews("mocov2-imagenet", (mocov2_imagenet(),), "MoCo v2 main_moco.py --aug-plus"),
    "mocov3-imagenet": NamedViews("mocov3-imagenet", mocov3_pair(), "MoCo v3 main_moco.py"),
    "sce-imagenet": NamedViews("sce-imagenet", mocov3_pair(crop_min=0.2), "SCE eztorch resnet50_imagenet.yaml"),
    "fnc-imagenet": NamedViews("fnc-imagenet", (fnc_imagenet(),), "FNC data_util.py and run.py flags"),
}


def named_views(name: str) -> NamedViews:
    """The named recipe ``name``.

    Raises:
        KeyError: no recipe of that name (the message lists them).
    """
    if name not in NAMED_VIEWS:
        raise KeyError(f"unknown view recipe {name!r}; named recipes: {', '.join(NAMED_VIEWS)}")
    return NAMED_VIEWS[name]


@dataclass(frozen=True)
class SmallCropPreset:
    """Named small crops of several sizes.

    Attributes:
        crops: ``(side, crop scale)`` of every small crop, written for 224-px views.
        blur_p: the small crops' blur probability (their other values are the query view's).
        solarize_p: the small crops' solarize probability.
        source: where the values come from.
    """

    crops: tuple[tuple[int, tuple[float, float]], ...]
    blur_p: float
    solarize_p: float
    source: str


#: Named multi-crop presets (``--small-crops-preset``).
SMALL_CROP_PRESETS: dict[str, SmallCropPreset] = {
    # SCE's official ImageNet multi-crop: 2 global crops + these 4. Their views
    # (contrastive/imagenet_five_crops_sce.yaml, views 3-6) are the first global view's
    # jitter, gray and flip with blur p 0.5 and solarize p 0.2.
    "sce-five-crops": SmallCropPreset(
        crops=((192, (0.172, 0.86)), (160, (0.143, 0.715)), (128, (0.114, 0.571)), (96, (0.086, 0.429))),
        blur_p=0.5, solarize_p=0.2,
        source="eztorch resnet50_imagenet_five_crops.yaml, crops/imagenet_five_crops.yaml, "
               "contrastive/imagenet_five_crops_sce.yaml"),
}


def small_crop_recipes(preset: str, query_view: ViewRecipe) -> list[ViewRecipe]:
    """The small crops of ``preset``: the query view's recipe at each crop's side and scale, with the
    preset's blur and solarize probabilities.

    Sides are the preset's times ``query_view.size / 224`` (rounded, at least 1), so at
    224-px views they are the paper's.

    Raises:
        KeyError: no preset of that name (the message lists them).
    """
    if preset not in SMALL_CROP_PRESETS:
        raise KeyError(f"unknown small-crop preset {preset!r}; presets: {', '.join(SMALL_CROP_PRESETS)}")
    factor = query_view.size / REFERENCE_SIZE
    chosen = SMALL_CROP_PRESETS[preset]
    return [replace(query_view, size=max(1, round(side * factor)), crop_scale=scale, blur_p=chosen.blur_p,
                    solarize_p=chosen.solarize_p)
            for side, scale in chosen.crops]
