"""The papers' ImageNet recipes: every value checked against its source, and two steps of each on the CPU."""

import json

import numpy as np
import pytest
from torch import nn

from softcontrast.cli import build_parser, main, make_method, resolve
from softcontrast.components.backbones import resnet
from softcontrast.methods.registry import method_spec
from softcontrast.optim import scaled_lr

SCE_EZTORCH = ("eztorch configs/run/pretrain/sce/resnet50/resnet50_imagenet.yaml, model/head/mlp/"
               "projector_resnet50_mlp3_bn3.yaml, predictor_resnet50_mlp2_bn1.yaml")
SCE_VALUES = {
    "backbone": "resnet50", "cifar_stem": False, "view_size": 224, "augment": "sce-imagenet",
    "projector_layers": 3, "projector_hidden": 4096, "projector_out": 256, "projector_last_bn": "no-affine",
    "predictor_hidden": 4096, "predictor_out": 256, "predictor_last_bias": False, "temperature": 0.1, "tau_m": 0.07, "lam": 0.5,
    "queue_size": 65536, "momentum": 0.99, "final_momentum": 1.0, "symmetric": True, "shuffle_bn": False,
    "sync_bn": True, "epochs": 200, "batch_size": 4096, "optimizer": "lars", "lr": 0.3, "lr_scaling": "linear",
    "weight_decay": 1e-6, "exclude_norm_bias": False, "lars_trust_coefficient": 1e-3, "warmup_epochs": 10,
    "small_crops_preset": "none",
}
#: recipe → (method, source, expected saved settings, global learning rate at the recipe's batch)
RECIPES = {
    "sce_imagenet": ("sce", SCE_EZTORCH, SCE_VALUES, 4.8),
    "sce_imagenet-five-crops": (
        "sce", "eztorch configs/run/pretrain/sce/resnet50/resnet50_imagenet_five_crops.yaml, transform/crops/"
               "imagenet_five_crops.yaml",
        {**SCE_VALUES, "small_crops_preset": "sce-five-crops"}, 4.8),
    "fnc_imagenet": ("fnc", "google-research/fnc run.py flags, model_util.py (learning_rate_schedule, "
                            "get_optimizer, projection_head), model.py (memory, EMA)", {
        "backbone": "resnet50", "cifar_stem": False, "view_size": 224, "augment": "fnc-imagenet",
        "projector_layers": 3, "projector_hidden": 2048, "projector_hidden_bn": True, "projector_last_bn": "scale",
        "projector_out": 128, "final_momentum": None, "exclude_norm_bias": True, "lars_trust_coefficient": 1e-3, "temperature": 0.1, "support_views": 8, "memory_size": None,
        "top_k": 10, "threshold": 0.7, "momentum": 0.999, "sync_bn": True, "shuffle_bn": False, "epochs": 100,
        "batch_size": 4096, "optimizer": "lars", "lr": 0.1, "lr_scaling": "sqrt-batch", "weight_decay": 1e-4,
        "warmup_epochs": 10,
    }, 6.4),  # 0.1 × √4096: model_util.learning_rate_schedule does not divide by 256
    "moco_v2_imagenet": ("moco", "Chen et al. 2020 (MoCo v2), facebookresearch/moco main_moco.py --mlp "
                                 "--moco-t 0.2 --aug-plus --cos", {
        "backbone": "resnet50", "cifar_stem": False, "view_size": 224, "augment": "mocov2-imagenet",
        "projector_layers": 2, "projector_hidden": 2048, "projector_out": 128, "projector_hidden_bn": False,
        "temperature": 0.2, "queue_size": 65536, "momentum": 0.999, "shuffle_bn": True, "epochs": 200,
        "batch_size": 256, "optimizer": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
        "warmup_epochs": 0,
    }, 0.03),
}


def settings_of(recipe: str, *argv: str):
    spec = method_spec(RECIPES[recipe][0])
    return resolve(spec, vars(build_parser(spec).parse_args(["--config", recipe, *argv])))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_an_imagenet_recipe_holds_its_sources_values(recipe):
    method, source, expected, global_lr = RECIPES[recipe]
    settings = settings_of(recipe)
    saved = settings.saved()
    for key, value in expected.items():
        assert saved[key] == value, f"{recipe}: {key} is {saved[key]!r}, {source} says {value!r}"
    assert scaled_lr(saved["lr"], saved["batch_size"], saved["lr_scaling"]) == pytest.approx(global_lr)
    model = settings.model
    built = make_method(settings, resnet(model.backbone, cifar_stem=model.cifar_stem, width=model.width),
                        num_samples=1_281_167)
    assert built.query_size == 224
    heads = [layer for layer in built.online.projector.layers if isinstance(layer, (nn.Linear, nn.BatchNorm1d))]
    if method == "sce":  # projector_resnet50_mlp3_bn3 and predictor_resnet50_mlp2_bn1
        assert [type(layer) for layer in heads] == [nn.Linear, nn.BatchNorm1d] * 3 and not heads[-1].affine
        assert built.predictor.layers[-1].bias is None and built.predictor.layers[-1].out_features == 256
    if method == "fnc":  # projection_head: 2048-2048-2048-128, BN on each, the last with center=False
        assert [(layer.in_features, layer.out_features) for layer in heads if isinstance(layer, nn.Linear)] == [
            (2048, 2048), (2048, 2048), (2048, 128)]
        assert heads[-1].weight.requires_grad and not heads[-1].bias.requires_grad
        assert built.memory.capacity == 16 * 4096  # memory_multiplier 16 × the global batch
        assert len(built.views) == 10
    if recipe.endswith("five-crops"):
        assert [crop.size for crop in built.crop_plan()] == [224, 224, 192, 160, 128, 96]


def tiny_photos(path) -> str:
    """An npz of 32 tiny crops of scikit-learn's sample photos (24×24), with 2 classes."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    images = np.stack([photos[i % 2][10 * i:10 * i + 24, 13 * i:13 * i + 24] for i in range(32)])
    labels = np.arange(32) % 2
    np.savez(path, x_train=images, y_train=labels, x_test=images[:8], y_test=labels[:8])
    return f"npz:{path}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_an_imagenet_recipe_trains_two_steps_on_the_cpu(recipe, tmp_path, fresh_accelerate_state):
    """The recipe's structure (optimizer, heads, views, crops, memory) at a tiny size and width, under
    bf16 autocast. The views are 48 px: the five-crop recipe's smallest crops are then 21 px, wide
    enough that no strided convolution of the ImageNet stem meets torch's wrong CPU bf16 gradient
    (``tests/test_cpu_bf16.py``)."""
    method = RECIPES[recipe][0]
    tiny = ["--dataset", tiny_photos(tmp_path / "photos.npz"), "--view-size", "48", "--width", "4",
            "--batch-size", "8", "--train-subset", "16", "--epochs", "1", "--warmup-epochs", "0.5", "--projector-hidden", "32",
            "--split-bn-groups", "2", "--precision", "bf16", "--cpu", "--num-workers", "0", "--knn-k", "3", "--output-dir", str(tmp_path / "run")]
    if "predictor_hidden" in RECIPES[recipe][2]:
        tiny += ["--predictor-hidden", "32"]
    main(["train", method, "--config", recipe, *tiny])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(np.isfinite(r["loss"]) for r in steps)
    assert max(r["step"] for r in steps) == 2
