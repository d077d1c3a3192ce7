"""LARS against a hand-written loop, parameter groups without weight decay, lr scaling, and the trainer's flags."""

import math

import pytest
import torch
from torch import nn

from softcontrast.optim import LARS, make_optimizer, param_groups, scaled_lr
from softcontrast.settings import upgrade_settings
from softcontrast.training import TrainConfig, Trainer, make_accelerator


def lars_by_hand(weights, grads, lrs, momentum, decay, eta, adapt, denominator="update"):
    """LARS written out for one tensor as plain float64 Python lists, step after step (one gradient per step)."""
    w, v = list(weights), [0.0] * len(weights)
    for grad, lr in zip(grads, lrs):
        d = [g + decay * x for g, x in zip(grad, w)]
        w_norm = math.sqrt(sum(x * x for x in w))
        if denominator == "update":
            den = math.sqrt(sum(x * x for x in d))
        else:
            den = math.sqrt(sum(g * g for g in grad)) + decay * w_norm
        ratio = eta * w_norm / den if adapt and w_norm > 0 and den > 0 else 1.0
        v = [momentum * a + lr * ratio * b for a, b in zip(v, d)]
        w = [x - a for x, a in zip(w, v)]
    return w


def run_lars(weights, grads, lrs, **options):
    param = nn.Parameter(torch.tensor(weights, dtype=torch.float64))
    optimizer = LARS([param], lr=lrs[0], **options)
    for grad, lr in zip(grads, lrs):
        param.grad = torch.tensor(grad, dtype=torch.float64)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    return param.detach().tolist()


WEIGHTS = [0.5, -1.25, 2.0, 0.75]
GRADS = [[0.1, 0.3, -0.2, 0.05], [-0.4, 0.2, 0.1, 0.3], [0.25, -0.15, 0.05, -0.35]]
LRS = [0.5, 1.0, 0.25]  # a changing rate: the rate enters the momentum buffer


@pytest.mark.parametrize("adapt", [True, False])
@pytest.mark.parametrize("denominator", ["update", "sum"])
def test_lars_steps_equal_the_hand_computed_ones(adapt, denominator):
    options = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
    expected = lars_by_hand(WEIGHTS, GRADS, LRS, options["momentum"], options["weight_decay"],
                            options["trust_coefficient"], adapt, denominator)
    got = run_lars(WEIGHTS, GRADS, LRS, adapt=adapt, denominator=denominator, **options)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got != pytest.approx(WEIGHTS)


def test_lars_groups_follow_their_own_options():
    """An included group (decay, trust ratio) and an excluded one (neither) in one optimizer, as param_groups builds."""
    included = nn.Parameter(torch.tensor(WEIGHTS, dtype=torch.float64))
    excluded = nn.Parameter(torch.tensor(WEIGHTS[::-1], dtype=torch.float64))
    optimizer = LARS([{"params": [included]}, {"params": [excluded], "weight_decay": 0.0, "adapt": False}],
                     lr=LRS[0], momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
    for grad, lr in zip(GRADS, LRS):
        included.grad = torch.tensor(grad, dtype=torch.float64)
        excluded.grad = torch.tensor(grad[::-1], dtype=torch.float64)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    assert included.tolist() == pytest.approx(lars_by_hand(WEIGHTS, GRADS, LRS, 0.9, 0.01, 0.02, True), rel=1e-12)
    plain_sgd = lars_by_hand(WEIGHTS[::-1], [g[::-1] for g in GRADS], LRS, 0.9, 0.0, 0.02, False)
    assert excluded.tolist() == pytest.approx(plain_sgd, rel=1e-12)


def test_lars_zero_weights_or_zero_gradient_take_trust_ratio_one():
    zero_weights = run_lars([0.0, 0.0, 0.0], [[0.1, -0.2, 0.3]], [0.5], momentum=0.9, trust_coefficient=1e-3)
    assert zero_weights == pytest.approx([-0.05, 0.1, -0.15], rel=1e-12)  # w − lr·g: the bias leaves zero
    unmoved = run_lars([1.0, 2.0], [[0.0, 0.0]], [0.5], momentum=0.9, trust_coefficient=1e-3)
    assert unmoved == [1.0, 2.0]
    both = run_lars([0.0, 0.0], [[0.0, 0.0]], [0.5], momentum=0.9)
    assert both == [0.0, 0.0] and all(math.isfinite(x) for x in both)


def test_lars_skips_parameters_without_gradient_and_refuses_bad_options():
    param = nn.Parameter(torch.ones(3))
    LARS([param], lr=0.1).step()
    assert param.tolist() == [1.0, 1.0, 1.0]
    for options, name in [({"lr": 0.0}, "lr"), ({"lr": 0.1, "momentum": 1.0}, "momentum"),
                          ({"lr": 0.1, "trust_coefficient": 0.0}, "trust_coefficient"),
                          ({"lr": 0.1, "denominator": "max"}, "denominator")]:
        with pytest.raises(ValueError, match=name):
            LARS([param], **options)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def test_param_groups_put_norm_and_bias_apart_only_when_asked():
    net = small_net()
    net[0].weight.requires_grad_(False)  # a frozen parameter is in no group
    (one,) = param_groups(net, 0.1, exclude_norm_bias=False)
    assert one["weight_decay"] == 0.1 and len(one["params"]) == 7
    decayed, plain = param_groups(net, 0.1, exclude_norm_bias=True)
    assert [p.shape for p in decayed["params"]] == [torch.Size([2, 4])]
    assert decayed["weight_decay"] == 0.1 and "adapt" not in decayed
    assert plain["weight_decay"] == 0.0 and plain["adapt"] is False and len(plain["params"]) == 6
    assert all(p.ndim == 1 for p in plain["params"])


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_excluded_norm_and_bias_do_not_decay(name):
    """One step with a zero gradient: only the decayed (matrix and kernel) weights change."""
    net = small_net()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.5)  # no zero weights (LARS's trust ratio is then η, not 1)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = make_optimizer(net, name, lr=0.1, weight_decay=0.5, exclude_norm_bias=True, trust_coefficient=0.1)
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for param, old in zip(net.parameters(), before):
        assert torch.equal(param, old) == (param.ndim <= 1), param.shape
    included = make_optimizer(small_net(), name, lr=0.1, weight_decay=0.5)
    for param in included.param_groups[0]["params"]:
        param.grad = torch.zeros_like(param)
    kept = [p.detach().clone() for p in included.param_groups[0]["params"]]
    included.step()
    changed = [not torch.equal(p, k) for p, k in zip(included.param_groups[0]["params"], kept)]
    assert changed == [bool(k.abs().sum()) for k in kept]  # without the flag every non-zero weight decays


def test_make_optimizer_builds_the_named_one():
    net = small_net()
    assert isinstance(make_optimizer(net, "lars", 0.1, 1e-6), LARS)
    assert isinstance(make_optimizer(net, "adamw", 0.1, 1e-6), torch.optim.AdamW)
    sgd = make_optimizer(net, "sgd", 0.1, 1e-6, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    with pytest.raises(ValueError, match="sgd, adamw, lars"):
        make_optimizer(net, "lamb", 0.1, 0.0)


def test_lr_scaling_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)  # SCE: 0.3 × 4096/256
    assert scaled_lr(0.1, 4096, "sqrt-batch") == pytest.approx(6.4)  # FNC's code: 0.1 × √4096
    assert scaled_lr(0.075, 4096, "sqrt-batch") == pytest.approx(4.8)  # SimCLR's appendix: 0.075 × √4096
    assert scaled_lr(0.1, 4096, "sqrt-per-256") == pytest.approx(0.4)  # 0.1 × √(4096/256)
    assert scaled_lr(0.1, 4096, "none") == 0.1
    assert scaled_lr(0.06, 256, "linear") == scaled_lr(0.06, 256, "sqrt-per-256") == 0.06
    with pytest.raises(ValueError, match="linear, sqrt-batch, sqrt-per-256, none"):
        scaled_lr(0.1, 256, "log")
    with pytest.raises(ValueError):
        scaled_lr(0.1, 256, "sqrt")  # which square root is no longer left to guess


def test_runs_saved_with_the_old_sqrt_scaling_keep_their_rate():
    """``sqrt`` meant lr × √(B/256) when those runs were saved: they read back as ``sqrt-per-256``."""
    assert upgrade_settings({"lr_scaling": "sqrt"})["lr_scaling"] == "sqrt-per-256"
    assert upgrade_settings({"lr_scaling": "sqrt-batch"})["lr_scaling"] == "sqrt-batch"
    assert upgrade_settings({})["lr_scaling"] == "linear"


def test_trainer_builds_the_configured_optimizer_and_lr():
    config = TrainConfig(batch_size=64, lr=0.1, lr_scaling="sqrt-per-256", optimizer="lars", exclude_norm_bias=True,
                         lars_trust_coefficient=0.002, weight_decay=1e-4, output_dir="unused")
    trainer = Trainer.__new__(Trainer)  # the optimizer needs only the config and the process count
    trainer.config, trainer.accelerator = config, make_accelerator(cpu=True)
    assert trainer._base_lr() == pytest.approx(0.05)  # 0.1 × √(64/256) on one process
    optimizer = trainer._optimizer(small_net())
    assert isinstance(optimizer, LARS) and len(optimizer.param_groups) == 2
    assert [g["trust_coefficient"] for g in optimizer.param_groups] == [0.002, 0.002]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])


def test_bad_optimizer_settings_are_named():
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="log")
    with pytest.raises(ValueError, match="lars_trust_coefficient"):
        TrainConfig(lars_trust_coefficient=0.0)


def test_runs_saved_before_the_optimizer_settings_read_as_before():
    upgraded = upgrade_settings({"optimizer": "sgd", "lr": 0.06})
    assert (upgraded["lr_scaling"], upgraded["exclude_norm_bias"]) == ("linear", False)
    defaults = TrainConfig()
    assert (defaults.lr_scaling, defaults.exclude_norm_bias, defaults.optimizer) == ("linear", False, "sgd")
    assert upgraded["lars_trust_coefficient"] == defaults.lars_trust_coefficient
