"""EMA math and the cosine momentum schedule."""

import math

import pytest
import torch
from torch import nn

from softcontrast.components.momentum import MomentumEncoder, cosine_momentum


def test_update_is_the_ema_of_the_parameters():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = MomentumEncoder(online)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    ema.update(online, 0.9)
    for old, new, current in zip(before, ema.module.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * current)


def test_the_copy_gets_no_gradient_and_runs_without_graph():
    online = nn.Linear(2, 2)
    ema = MomentumEncoder(online)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema(torch.randn(3, 2)).requires_grad


def test_momentum_one_freezes_and_zero_copies():
    online = nn.Linear(2, 2)
    ema = MomentumEncoder(online)
    frozen = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        online.weight.fill_(3.0)
    ema.update(online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, ema.module.parameters()))
    ema.update(online, 0.0)
    assert torch.equal(ema.module.weight, online.weight)


def test_schedule_endpoints_and_midpoint():
    assert cosine_momentum(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(30, 100, 0.9, 0.9) == pytest.approx(0.9)
    values = [cosine_momentum(s, 10, 0.9, 1.0) for s in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert not math.isnan(cosine_momentum(5, 0, 0.9, 1.0))


def test_schedule_rejects_momentum_outside_unit_interval():
    with pytest.raises(ValueError, match="momentum"):
        cosine_momentum(0, 10, 1.2, 1.0)
