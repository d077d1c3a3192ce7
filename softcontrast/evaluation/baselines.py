"""Baselines beside every result: raw pixels and the random-init network, under the same protocol."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import set_seed

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import Backbone
from softcontrast.components.named_backbones import BackboneSpec, backbone_spec, build_backbone
from softcontrast.data import ImageSource, ImageTensorDataset
from softcontrast.evaluation.features import extract_features, raw_pixel_features
from softcontrast.evaluation.knn import knn_feature_accuracy

#: Training images of a baseline at most: above, a seeded random subset of this size (the raw
#: pixels of ImageNet's whole training split would take 63 GB).
BASELINE_MAX_TRAIN = 50_000
#: Test images of a baseline at most: above, a seeded random subset of this size.
BASELINE_MAX_TEST = 10_000


def baseline_splits(
    train: ImageTensorDataset | ImageSource,
    test: ImageTensorDataset | ImageSource,
    seed: int = 0,
    max_train: int | None = BASELINE_MAX_TRAIN,
    max_test: int | None = BASELINE_MAX_TEST,
) -> tuple[ImageTensorDataset | ImageSource, ImageTensorDataset | ImageSource, dict[str, int] | None]:
    """The splits a baseline is measured on: each one whole, or a seeded random subset (in the
    split's order) when it holds more than ``max_train`` / ``max_test`` images (``None``: no limit).

    Returns:
        The training and test images, and ``{"train": n, "test": m}`` when either was cut
        (``None`` when both are whole).
    """
    cut = False
    if max_train is not None and len(train) > max_train:
        train, cut = train.subset(max_train, seed=seed), True
    if max_test is not None and len(test) > max_test:
        test, cut = test.subset(max_test, seed=seed), True
    return train, test, ({"train": len(train), "test": len(test)} if cut else None)


def random_init_backbone(spec: BackboneSpec | str, cifar_stem: bool = True, width: int = 64,
                         seed: int = 0) -> Backbone:
    """The untrained backbone a run of ``seed`` starts from (seeded as the examples seed it).

    Args:
        spec: the run's backbone spec, or a short ResNet name (``resnet18``, ``resnet34``, ``resnet50``)
            built with ``cifar_stem`` and ``width``.
        cifar_stem: 3×3 stem without max-pool (with a name).
        width: channels of the first stage (with a name).
        seed: the run's seed.
    """
    if isinstance(spec, str):
        spec = backbone_spec(spec, cifar_stem=cifar_stem, width=width)
    set_seed(seed)
    return build_backbone(spec)


def baseline_knn(
    train: ImageTensorDataset | ImageSource,
    test: ImageTensorDataset | ImageSource,
    random_init: torch.nn.Module | None = None,
    recipe: ViewRecipe | None = None,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    max_train: int | None = BASELINE_MAX_TRAIN,
    max_test: int | None = BASELINE_MAX_TEST,
) -> dict[str, Any]:
    """kNN accuracy of the baselines: ``raw_pixels`` and (given a network) ``random_init``.

    Above :data:`BASELINE_MAX_TRAIN` training or :data:`BASELINE_MAX_TEST` test images
    both baselines are measured on a seeded random subset (:func:`baseline_splits`), and
    the result says so: ``raw_pixels_subset: {"train": n, "test": m}``.

    Args:
        train: training split (the kNN's memory).
        test: test split.
        random_init: the untrained network, evaluated on ``recipe``'s centred view.
        recipe: the evaluation view of the random-init network.
        k: neighbours.
        temperature: kNN temperature.
        device: where the random-init network runs.
        seed: seed of the subsets.
        num_workers: loader workers of a streamed split.
        max_train: training images at most (``None``: all).
        max_test: test images at most (``None``: all).
    """
    if random_init is not None and recipe is None:
        raise ValueError("the random-init baseline needs the evaluation recipe")
    train, test, subset = baseline_splits(train, test, seed, max_train, max_test)
    raw_train, raw_test = raw_pixel_features(train, test, num_workers)
    result: dict[str, Any] = {
        "raw_pixels": knn_feature_accuracy(raw_train, train.labels, raw_test, test.labels, k, temperature)
    }
    del raw_train, raw_test
    if random_init is not None:
        network = random_init.to(device)
        features = [extract_features(network, split, recipe, device=device, num_workers=num_workers)
                    for split in (train, test)]
        result["random_init"] = knn_feature_accuracy(features[0], train.labels, features[1], test.labels, k, temperature)
    if subset is not None:
        result["raw_pixels_subset"] = subset
    return result
