"""Baselines beside every result: raw pixels and the random-init network, under the same protocol."""

from __future__ import annotations

import torch
from accelerate.utils import set_seed

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import Backbone, resnet
from softcontrast.data import ImageSource, ImageTensorDataset
from softcontrast.evaluation.features import extract_features, raw_pixel_features
from softcontrast.evaluation.knn import knn_feature_accuracy


def random_init_backbone(arch: str, cifar_stem: bool, width: int, seed: int) -> Backbone:
    """The untrained backbone a run of ``seed`` starts from (seeded as the examples seed it).

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        cifar_stem: 3×3 stem without max-pool.
        width: channels of the first stage.
        seed: the run's seed.
    """
    set_seed(seed)
    return resnet(arch, cifar_stem=cifar_stem, width=width)


def baseline_knn(
    train: ImageTensorDataset | ImageSource,
    test: ImageTensorDataset | ImageSource,
    random_init: torch.nn.Module | None = None,
    recipe: ViewRecipe | None = None,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """kNN accuracy of the baselines: ``raw_pixels`` and (given a network) ``random_init``.

    Args:
        train: training split (the kNN's memory).
        test: test split.
        random_init: the untrained network, evaluated on ``recipe``'s centred view.
        recipe: the evaluation view of the random-init network.
        k: neighbours.
        temperature: kNN temperature.
        device: where the random-init network runs.
    """
    raw_train, raw_test = raw_pixel_features(train, test)
    result = {"raw_pixels": knn_feature_accuracy(raw_train, train.labels, raw_test, test.labels, k, temperature)}
    if random_init is not None:
        if recipe is None:
            raise ValueError("the random-init baseline needs the evaluation recipe")
        network = random_init.to(device)
        features = [extract_features(network, split, recipe, device=device) for split in (train, test)]
        result["random_init"] = knn_feature_accuracy(features[0], train.labels, features[1], test.labels, k, temperature)
    return result
