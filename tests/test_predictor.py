"""The predictor head on the online branch, the projector's last batch norm, and SyncBN.

The predictor maps the online projector's output to the anchors; the momentum encoder
is the EMA of backbone + projector only; columns are projector outputs (also the
online ones of FNC as published). Settings resolve, are saved, and old runs read as
before (no predictor, no last batch norm, SyncBN on several GPUs).
"""

import pytest
import torch
from torch import nn

from softcontrast.cli import build_parser
from softcontrast.components.backbones import Backbone, MLPHead, normalized, predictor_for, projector_for, resnet
from softcontrast.components.shuffle_bn import ShuffleBatchNorm
from softcontrast.methods import ContrastiveMethod, Setup, method_spec
from softcontrast.optim import make_optimizer
from softcontrast.run_settings import ModelSettings, make_method, rebuild_method, resolve, saved_settings
from softcontrast.settings import ADDED_SETTINGS, SettingError
from test_loss_pins import VIEW

IMAGES = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
IDS = torch.arange(8)


def method_of(name: str = "sce", predictor: bool = True, **config) -> ContrastiveMethod:
    """Registered method ``name`` on a width-4 ResNet-18 (8-px views), projector 16 → 8, predictor 8 → 32 → 8."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: VIEW)
    method = method_spec(name)(backbone, setup=setup, **config)
    if predictor:
        method.set_predictor(predictor_for(8, 32))
    return method


def test_head_shapes_and_the_projectors_last_batch_norm():
    backbone = Backbone(nn.Flatten(), 32)
    sce = projector_for(backbone, 64, 16, num_layers=3, last_batch_norm="no-affine")  # 2048→4096→4096→256, scaled
    linears = [m for m in sce.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in sce.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert [(m.num_features, m.affine) for m in norms] == [(64, True), (64, True), (16, False)]
    assert sce(torch.randn(5, 32)).shape == (5, 16)
    assert isinstance(projector_for(backbone, 64, 16).layers[-1], nn.Linear)  # "none": today's projector
    last = projector_for(backbone, 64, 16, last_batch_norm="affine").layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and last.affine
    with pytest.raises(ValueError, match="none, affine, no-affine, scale"):
        projector_for(backbone, last_batch_norm="yes")


def test_a_scale_only_last_batch_norm_learns_its_scale_and_keeps_its_shift_at_zero():
    """FNC's and SimCLR's projector ends in a batch norm with ``center=False``: a learned scale, no shift."""
    backbone = Backbone(nn.Flatten(), 32)
    head = projector_for(backbone, 64, 16, num_layers=3, last_batch_norm="scale")
    last = head.layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and last.weight.requires_grad and not last.bias.requires_grad
    optimizer = make_optimizer(head, "lars", 0.5, 1e-4, exclude_norm_bias=True)
    assert not any(p is last.bias for group in optimizer.param_groups for p in group["params"])
    for _ in range(3):
        head(torch.randn(8, 32)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(last.bias, torch.zeros(16)) and not torch.equal(last.weight, torch.ones(16))
    x = torch.randn(8, 32)
    normalized_output = nn.functional.batch_norm(head.layers[:-1](x), None, None, training=True)
    assert torch.allclose(head(x), normalized_output * last.weight, atol=1e-5)

    predictor = predictor_for(16, 64)  # 256→4096→256, scaled: BN on the hidden layer only
    assert [type(m) for m in predictor.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert predictor.layers[0].bias is None and predictor.layers[3].bias is None  # eztorch: bias False, last_bias False
    assert predictor_for(16, 64, last_bias=True).layers[3].bias is not None  # BYOL's
    assert (predictor.layers[0].in_features, predictor.layers[0].out_features, predictor.layers[3].out_features) == (
        16, 64, 16)
    assert predictor(torch.randn(5, 16)).shape == (5, 16)


def test_the_momentum_encoder_holds_no_predictor_and_follows_only_backbone_and_projector():
    method = method_of()
    assert any(key.startswith("predictor.") for key in method.state_dict())
    assert not any("predictor" in key for key in method.target_encoder.state_dict())
    online, target = list(method.online.parameters()), list(method.target_encoder.parameters())
    assert [p.shape for p in online] == [p.shape for p in target]
    method(IMAGES, IDS).loss.backward()
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.grad is not None:
                parameter.sub_(0.5 * parameter.grad)
        for parameter in method.predictor.parameters():
            parameter.add_(100.0)  # would show in the copy if the EMA ever read the predictor
    before = [p.clone() for p in target]
    momentum = method.momentum_at(0, 10)
    method.after_optimizer_step(0, 10)
    for old, new, current in zip(before, target, online):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * current, rtol=0, atol=1e-6)


def test_a_step_with_a_predictor_trains_the_predictor_and_the_encoder():
    method = method_of(in_batch_keys=True)  # the batch's keys are negatives: a loss on the first step
    output = method(IMAGES, IDS)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    for part in (method.predictor, method.online.projector, method.online.backbone):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in method.target_encoder.parameters())
    # the anchors are the predictions: another predictor gives another loss on the same step
    state = method.streams.state_dict()
    method.streams.load_state_dict(state)
    first = method(IMAGES, IDS).loss
    with torch.no_grad():
        method.predictor.layers[-1].weight.mul_(-1)
    method.streams.load_state_dict(state)
    assert not torch.isclose(method(IMAGES, IDS).loss, first)


def test_online_columns_with_a_predictor_are_the_projections_and_the_anchors_the_predictions():
    method = method_of("fnc", memory_size=0, support_views=1, top_k=2, threshold=0.0).double()
    assert method.online_columns
    images = torch.rand(8, 3, 8, 8, dtype=torch.float64)
    state = method.streams.state_dict()
    views = method.views(images, method.streams.local)
    method.streams.load_state_dict(state)
    output = method(images, IDS)
    projected = method.online(torch.cat(views), normalize=False)  # train-mode BN: the step's statistics
    columns = normalized(projected).reshape(len(views), 8, -1).transpose(0, 1).reshape(8 * len(views), -1)
    torch.testing.assert_close(output.columns.block, columns)
    anchors = normalized(method.predictor(projected))
    assert not torch.allclose(anchors, normalized(projected))
    assert output.columns.block.requires_grad
    output.loss.backward()
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_without_a_predictor_the_state_is_todays_and_an_old_checkpoint_loads():
    old = method_of(predictor=False)
    assert old.predictor is None and not any("predictor" in key for key in old.state_dict())
    old(IMAGES, IDS).loss.backward()
    state = old.state_dict()
    method_of(predictor=False).load_state_dict(state)  # strict
    with pytest.raises(RuntimeError, match="predictor"):
        method_of().load_state_dict(state)  # a run with a predictor is another run

    spec = method_spec("sce")
    saved = resolve(spec, vars(build_parser(spec).parse_args([]))).saved(64)
    for name in ("projector_last_bn", "predictor_hidden", "predictor_out", "sync_bn"):
        saved.pop(name)  # a run saved before these settings existed
    rebuilt = rebuild_method(saved, resnet("resnet18", width=16))
    assert rebuilt.predictor is None and rebuilt.sync_bn
    reference = make_method(resolve(spec, vars(build_parser(spec).parse_args([]))), resnet("resnet18", width=16))
    rebuilt.load_state_dict(reference.state_dict())
    assert set(rebuilt.state_dict()) == set(reference.state_dict())
    assert {k: saved_settings(saved).model.__dict__[k] for k in ("projector_last_bn", "predictor_hidden")} == {
        "projector_last_bn": "none", "predictor_hidden": None}
    assert {"projector_last_bn", "predictor_hidden", "sync_bn"} <= set(ADDED_SETTINGS)


def test_runs_saved_with_a_predictor_before_its_bias_was_a_setting_rebuild_with_their_bias():
    """Predictors had an output bias until ``predictor_last_bias`` (default off, as SCE's and MoCo
    v3's); a run saved before it rebuilds with one, so its checkpoints load."""
    spec = method_spec("sce")
    settings = resolve(spec, vars(build_parser(spec).parse_args(["--predictor-hidden", "32", "--projector-out", "16"])))
    saved = settings.saved()
    assert saved["predictor_last_bias"] is False and settings.model.predictor().layers[-1].bias is None
    old = {key: value for key, value in saved.items() if key != "predictor_last_bias"}
    assert saved_settings(old).model.predictor().layers[-1].bias is not None
    assert ADDED_SETTINGS["predictor_last_bias"] is True


def test_flags_resolve_build_and_are_saved():
    spec = method_spec("sce")
    argv = ["--predictor-hidden", "32", "--projector-last-bn", "no-affine", "--projector-layers", "3",
            "--projector-out", "16", "--no-sync-bn"]
    settings = resolve(spec, vars(build_parser(spec).parse_args(argv)))
    saved = settings.saved()
    assert (saved["predictor_hidden"], saved["predictor_out"], saved["projector_last_bn"], saved["sync_bn"]) == (
        32, None, "no-affine", False)
    method = make_method(settings, resnet("resnet18", width=4))
    assert isinstance(method.predictor, MLPHead) and not method.sync_bn
    assert method.predictor.layers[0].out_features == 32 and method.predictor.layers[-1].out_features == 16
    last = method.online.projector.layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine and last.num_features == 16
    assert saved_settings(saved).model == settings.model  # a saved run rebuilds with its predictor

    off = resolve(spec, vars(build_parser(spec).parse_args(["--predictor-hidden", "0"])))
    assert make_method(off, resnet("resnet18", width=4)).predictor is None
    defaults = resolve(spec, vars(build_parser(spec).parse_args([])))
    assert (defaults.model.predictor_hidden, defaults.model.projector_last_bn, defaults.run.sync_bn) == (
        None, "none", True)


@pytest.mark.parametrize(("values", "field"), [
    ({"predictor_hidden": 8, "predictor_out": 7}, "predictor_out"),
    ({"predictor_hidden": -1}, "predictor_hidden"),
    ({"projector_last_bn": "yes"}, "projector_last_bn"),
])
def test_bad_head_settings_name_their_field(values, field):
    with pytest.raises(SettingError) as error:
        ModelSettings(**values)
    assert error.value.name == field


def test_a_predictor_of_another_width_is_refused():
    with pytest.raises(SettingError, match="set predictor_out to 8") as error:
        method_of(predictor=False).set_predictor(predictor_for(8, 32, out_dim=4))
    assert error.value.name == "predictor_out"


def batch_norms(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize(("device", "processes", "sync_bn", "converted"), [
    ("cuda", 2, True, True), ("cuda", 1, True, False), ("cpu", 2, True, False), ("cuda", 2, False, False),
])
def test_sync_bn_converts_only_on_several_cuda_processes_when_asked(device, processes, sync_bn, converted):
    method = method_of()
    method.sync_bn = sync_bn
    assert method.use_sync_bn(torch.device(device), processes) is converted  # module types only: runs on the CPU
    for part in (method.online, method.predictor, method.target_encoder):
        assert (batch_norms(part) == {nn.SyncBatchNorm}) if converted else (nn.SyncBatchNorm not in batch_norms(part))


def test_under_shuffle_bn_sync_bn_leaves_the_momentum_encoder_its_own_statistics():
    method = method_of()
    method.shuffle_bn = ShuffleBatchNorm(2)
    assert method.use_sync_bn("cuda", 2)
    assert batch_norms(method.online) == batch_norms(method.predictor) == {nn.SyncBatchNorm}
    assert nn.SyncBatchNorm not in batch_norms(method.target_encoder)
