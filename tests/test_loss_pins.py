"""Losses of every method on fixed inputs, pinned (``tests/pins/losses.json``).

Each case builds a method from tiny parts, runs three whole steps (views, loss,
backward, SGD, then the method's after-step: EMA, memory, schedules) on fixed
images with seeded random streams, and compares every step's loss parts to the
pinned values to 1e-6. The pins were written by the code before the one-step
redesign (each method its own class then), so any change of a method's numbers
shows here.

Rewrite the pins (only when a change of the numbers is intended and explained)::

    python tests/test_loss_pins.py --write
"""

import json
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.multiview import SmallCrops
from softcontrast.components.shuffle_bn import ShuffleBatchNorm
from softcontrast.methods import ContrastiveMethod, Setup, method_spec

PINS = Path(__file__).parent / "pins" / "losses.json"
VIEW = ViewRecipe(size=8)
BATCH, STEPS, SAMPLES = 8, 3, 24
TOLERANCE = 1e-6


def build(name: str, bank: bool = False, **config) -> ContrastiveMethod:
    """Registered method ``name`` on a width-4 ResNet-18 with 8-px views."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: VIEW,
                  bank=EmbeddingBank(SAMPLES, 8, backend="torch") if bank else None)
    return method_spec(name)(backbone, setup=setup, **config)


def with_parts(method: ContrastiveMethod, **parts) -> ContrastiveMethod:
    for name, part in parts.items():
        setattr(method, name, part)
    return method


CASES: dict[str, Callable[[], ContrastiveMethod]] = {
    "moco": lambda: build("moco", queue_size=16),
    "moco_symmetric_split_bn": lambda: with_parts(build("moco", queue_size=16, symmetric=True),
                                                  shuffle_bn=ShuffleBatchNorm(2)),
    "sce": lambda: build("sce", queue_size=16),
    "sce_in_batch_symmetric": lambda: build("sce", queue_size=16, in_batch_keys=True, symmetric=True, lam=0.3,
                                            tau_m=0.1),
    "sce_small_crops": lambda: with_parts(build("sce", queue_size=16), small_crops=SmallCrops(2, ViewRecipe(size=4))),
    "fnc_attract": lambda: build("fnc", support_views=1, top_k=3, threshold=0.0, memory_size=48),
    "fnc_eliminate_mean": lambda: build("fnc", support_views=2, top_k=2, threshold=-0.5, memory_size=64,
                                        strategy="eliminate", aggregation="mean"),
    "fnc_no_memory": lambda: build("fnc", support_views=1, top_k=3, threshold=0.0, memory_size=0),
    "fnc_library_layout": lambda: build("fnc", support_views=1, top_k=3, threshold=0.0, memory_size=32,
                                        column_layout="library"),
    "fnc_library_no_memory": lambda: build("fnc", support_views=1, top_k=3, threshold=0.0, memory_size=0,
                                           column_layout="library", strategy="eliminate"),
    "fnc_bank": lambda: build("fnc", bank=True, support_views=1, top_k=2, threshold=0.0, memory_size=48),
    "fnc_on_moco_attract": lambda: build("fnc-moco", detection_views=2, top_k=3, threshold=0.0, queue_size=16),
    "fnc_on_moco_eliminate_symmetric": lambda: build("fnc-moco", detection_views=1, top_k=2, threshold=-0.5,
                                                     queue_size=16, strategy="eliminate", symmetric=True),
    "fnc_on_moco_bank": lambda: build("fnc-moco", bank=True, detection_views=2, top_k=2, threshold=0.0,
                                      queue_size=16),
    "sane": lambda: build("sane", queue_size=16),
    "sane_strong_per_sample": lambda: build("sane", queue_size=16, mixup_view="strong", per_sample_theta=True),
    "sane_no_mixup_symmetric": lambda: build("sane", queue_size=16, mixup=False, symmetric=True, use_q=False),
    "sane_lam_zero": lambda: build("sane", queue_size=16, lam=0.0),
}

#: Pinned per step: the loss the step back-propagates, and the loss parts a method reports.
PARTS = ("loss", "loss_c", "loss_mix")


def run_case(name: str) -> list[dict[str, float]]:
    """The loss parts of three whole steps of case ``name`` (on one thread: reductions in a fixed order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_case(name)
    finally:
        torch.set_num_threads(threads)


def _run_case(name: str) -> list[dict[str, float]]:
    method = CASES[name]()
    method.streams.reset(7, 0, torch.device("cpu"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (SAMPLES, 3, 12, 12), dtype=torch.uint8, generator=generator)
    losses = []
    for step in range(STEPS):
        ids = torch.arange(step * BATCH, (step + 1) * BATCH) % SAMPLES
        output = method(images[ids], ids)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, 10)
        parts = {"loss": float(output.loss.detach())}
        parts.update({part: float(output.metrics[part]) for part in PARTS[1:] if part in output.metrics})
        losses.append(parts)
    return losses


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_on_fixed_inputs_equal_the_pins(name):
    pinned = json.loads(PINS.read_text())[name]
    got = run_case(name)
    for step, (expected, actual) in enumerate(zip(pinned, got)):
        assert set(actual) == set(expected), f"step {step}: parts {sorted(actual)} != {sorted(expected)}"
        for part in expected:
            assert abs(actual[part] - expected[part]) <= TOLERANCE, (
                f"{name} step {step} {part}: {actual[part]:.8f} != pinned {expected[part]:.8f}")


if __name__ == "__main__" and "--write" in sys.argv:
    PINS.write_text(json.dumps({name: run_case(name) for name in sorted(CASES)}, indent=1) + "\n")
    print(f"wrote {PINS}")
