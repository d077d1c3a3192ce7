"""Backbones by name (short ResNet names, ``torchvision:``, ``timm:``), any module through Python, the
spec saved with a run, and ``backbone.pt`` loading into the plain library model."""

import json

import pytest
import torch
import torchvision
from torch import nn

from softcontrast.cli import train
from softcontrast.components.backbones import Backbone, projector_for, resnet
from softcontrast.components.named_backbones import (
    BackboneSpec,
    backbone_spec,
    build_backbone,
    network_state,
    read_spec,
    save_spec,
)
from softcontrast.evaluation import command, random_init_backbone
from softcontrast.methods import Setup, method_spec
from softcontrast.run_settings import saved_settings

#: Two steps of MoCo on digits: 16 training images in batches of 8, one epoch.
TWO_STEPS = ["--cpu", "--epochs", "1", "--train-subset", "16", "--batch-size", "8", "--queue-size", "16",
             "--knn-k", "5", "--knn-test-subset", "64", "--projector-hidden", "16", "--projector-out", "8"]


def loads_into(model: nn.Module, state: dict) -> set[str]:
    """Loads ``state`` into ``model`` as the docs show (``strict=False``) and returns the missing keys."""
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    return set(result.missing_keys)


def test_a_torchvision_model_by_name_loses_its_classifier_and_loads_back_into_the_plain_model():
    torch.manual_seed(0)
    backbone = build_backbone(backbone_spec("torchvision:resnet18"))
    assert backbone.feature_dim == 512 and backbone.spec == BackboneSpec("torchvision:resnet18")
    images = torch.randn(2, 3, 32, 32)
    plain = torchvision.models.resnet18()
    assert loads_into(plain, network_state(backbone)) == {"fc.weight", "fc.bias"}
    plain.fc = nn.Identity()
    backbone.eval(), plain.eval()
    assert torch.equal(backbone(images), plain(images))  # the same network, the classifier's input


def test_a_classifier_inside_a_sequential_is_found():
    backbone = build_backbone(backbone_spec("torchvision:mobilenet_v3_small"))
    assert backbone.feature_dim == 1024
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 1024)
    missing = loads_into(torchvision.models.mobilenet_v3_small(), network_state(backbone))
    assert missing == {"classifier.3.weight", "classifier.3.bias"}


def test_a_timm_model_takes_its_kwargs_and_loads_back_into_the_plain_model():
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": 32, "patch_size": 8}
    backbone = build_backbone(backbone_spec("timm:vit_small_patch16_224", json.dumps(kwargs)))
    assert backbone.feature_dim == 384 and backbone.spec.kwargs == kwargs
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 384)
    plain = timm.create_model("vit_small_patch16_224", **kwargs)
    assert loads_into(plain, network_state(backbone)) == {"head.weight", "head.bias"}


def test_the_short_names_keep_width_and_stem_and_carry_their_spec():
    backbone = resnet("resnet18", cifar_stem=True, width=8)
    assert backbone.spec == BackboneSpec("resnet18", {}, True, 8) and backbone.feature_dim == 64
    rebuilt = build_backbone(BackboneSpec.from_dict(json.loads(json.dumps(backbone.spec.to_dict()))))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in backbone.state_dict().items()}
    assert rebuilt.network.conv1.kernel_size == (3, 3)
    assert backbone_spec("resnet50", cifar_stem=False, width=16) == BackboneSpec("resnet50", {}, False, 16)
    assert backbone_spec("torchvision:resnet50", width=16).width is None  # width is the short names' only


def test_a_named_resnet_takes_the_cifar_stem_and_a_vit_keeps_its_own():
    stemmed = build_backbone(backbone_spec("torchvision:resnet18", cifar_stem=True))
    assert stemmed.network.conv1.kernel_size == (3, 3) and isinstance(stemmed.network.maxpool, nn.Identity)
    unstemmed = build_backbone(backbone_spec("torchvision:mobilenet_v3_small", cifar_stem=True))  # no conv1 + maxpool
    assert unstemmed.network.features[0][0].stride == (2, 2)


@pytest.mark.parametrize("name, kwargs, message", [
    ("resnet99", None, "unknown backbone 'resnet99'"),
    ("keras:resnet50", None, "torchvision:<model>"),
    ("torchvision:", None, "unknown backbone"),
    ("resnet18", '{"img_size": 32}', "use torchvision:resnet18"),
    ("torchvision:resnet18", "img_size=32", "must be a JSON object"),
    ("torchvision:resnet18", "[1, 2]", "must be a JSON object"),
])
def test_bad_names_and_kwargs_say_what_to_do(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        backbone_spec(name, kwargs)


def test_a_bad_backbone_flag_stops_the_run_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as stopped:
        train("moco", ["--backbone", "resnet99", *TWO_STEPS])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "unknown backbone 'resnet99'" in line and line.endswith("(set with --backbone)")
    with pytest.raises(SystemExit):
        train("moco", ["--backbone", "torchvision:resnet18", "--backbone-kwargs", "{oops", *TWO_STEPS])
    assert capsys.readouterr().err.strip().endswith("(set with --backbone-kwargs)")


def test_an_unknown_library_model_or_argument_is_named():
    with pytest.raises(ValueError, match="torchvision:resnet_nope: Unknown model"):
        build_backbone(backbone_spec("torchvision:resnet_nope"))
    with pytest.raises(ValueError, match="torchvision:resnet18 does not take the backbone kwargs"):
        build_backbone(backbone_spec("torchvision:resnet18", '{"img_size": 32}'))
    with pytest.raises(ValueError, match="no linear classifier"):
        build_backbone(backbone_spec("torchvision:squeezenet1_0"))


def test_any_module_trains_through_the_backbone_wrapper():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    backbone = Backbone(network, feature_dim=8)
    settings = saved_settings({"method": "moco", "queue_size": 16, "view_size": 12, "dataset": "digits"})
    setup = Setup(projector=projector_for(backbone, 16, 8), view=settings.data.view, global_batch=8)
    method = method_spec("moco").build(settings.config, backbone, setup)
    method.memory.enqueue(nn.functional.normalize(torch.randn(16, 8), dim=1), torch.arange(100, 116))  # negatives
    images = (torch.rand(8, 3, 12, 12) * 255).to(torch.uint8)
    loss = method(images, torch.arange(8)).loss
    loss.backward()
    assert torch.isfinite(loss) and network[0].weight.grad.abs().sum() > 0


def test_an_old_backbone_file_with_the_network_prefix_still_loads(tmp_path):
    torch.manual_seed(0)
    old = resnet("resnet18", cifar_stem=True, width=4)
    torch.save(old.state_dict(), tmp_path / "backbone.pt")  # keys start with network.
    assert next(iter(torch.load(tmp_path / "backbone.pt"))).startswith("network.")
    loaded = command.load_backbone(tmp_path / "backbone.pt", "resnet18", cifar_stem=True, width=4)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))
    assert random_init_backbone("resnet18", True, 4, seed=0).spec == old.spec  # the old signature keeps working


def test_old_run_settings_without_a_spec_read_as_before():
    model = saved_settings({"method": "moco", "width": 8, "no_cifar_stem": True}).model
    assert model.backbone_spec() == BackboneSpec("resnet18", {}, False, 8)


@pytest.mark.parametrize("name, kwargs, feature_dim", [
    ("torchvision:resnet50", None, 2048),
    ("timm:vit_small_patch16_224", '{"img_size": 12, "patch_size": 4}', 384),
])
def test_a_named_model_trains_two_steps_through_the_cli_and_is_evaluated(tmp_path, name, kwargs, feature_dim):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    flags = ["--backbone", name, *(["--backbone-kwargs", kwargs] if kwargs else []), *TWO_STEPS]
    result = train("moco", [*flags, "--output-dir", str(tmp_path / "run")])
    assert result.epochs_done == 1 and len(result.losses) == 2
    spec = read_spec(tmp_path / "run" / "backbone.json")
    assert spec.name == name and spec.kwargs == json.loads(kwargs or "{}")
    saved = json.loads(next((tmp_path / "run").rglob("run_config.json")).read_text())
    assert BackboneSpec.from_dict(saved["backbone_spec"]) == spec

    command.main(["evaluate", str(tmp_path / "run"), "--output-dir", str(tmp_path / "eval"), "--no-plots", "--device", "cpu"])
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["backbone"]["arch"] == name and report["view_size"] == 12
    assert 0 < report["knn"]["trained"][command.HEADLINE] <= 1
    assert build_backbone(spec).feature_dim == feature_dim


def test_a_bare_backbone_is_evaluated_from_the_spec_beside_it(tmp_path):
    torch.manual_seed(0)
    spec = backbone_spec("torchvision:resnet18", cifar_stem=True)
    torch.save(network_state(build_backbone(spec)), tmp_path / "backbone.pt")
    save_spec(spec, tmp_path / "backbone.json")
    common = ["--dataset", "digits", "--train-subset", "16", "--view-size", "8", "--no-plots", "--device", "cpu"]
    command.main(["evaluate", "--backbone", str(tmp_path / "backbone.pt"), *common, "--output-dir", str(tmp_path / "a")])
    from_spec = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert from_spec["backbone"] == {"arch": "torchvision:resnet18", "width": None, "cifar_stem": True, "kwargs": {}}
    command.main(["evaluate", "--backbone", str(tmp_path / "backbone.pt"), *common, "--arch", "torchvision:resnet18",
                  "--output-dir", str(tmp_path / "b")])  # the same network named by flags
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["knn"] == from_spec["knn"]
    with pytest.raises(SystemExit):  # flags that do not describe it are refused
        command.main(["evaluate", "--backbone", str(tmp_path / "backbone.pt"), *common, "--arch", "resnet18"])
