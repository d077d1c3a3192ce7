"""bfloat16 on the CPU: the convolutions whose weight gradient torch gets wrong are found
before training, the others train with right gradients, and the CLI refuses with a remedy."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from softcontrast.cli import main
from softcontrast.components.backbones import resnet
from softcontrast.components.cpu_bf16 import (
    ONLY_PADDING,
    STRIDE_WIDER_THAN_INPUT,
    cpu_bf16_fault,
    cpu_bf16_hazards,
    smallest_safe_size,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_bf16_conv  # noqa: E402
from test_imagenet_recipes import tiny_photos  # noqa: E402


def test_a_resnet50_with_the_imagenet_stem_is_refused_at_16_px_and_safe_from_17():
    network = resnet("resnet50", cifar_stem=False, width=4)
    hazards = cpu_bf16_hazards(network, [16, 32])
    assert [(h.layer, h.view_size, h.input_size) for h in hazards] == [("network.layer4.0.conv2", 16, (1, 1))]
    assert cpu_bf16_hazards(network, [17, 24, 224]) == []
    assert smallest_safe_size(network, 16) == 17
    assert cpu_bf16_hazards(resnet("resnet50", cifar_stem=True, width=4), [16]) == []  # no stride-2 stem


def test_tracing_leaves_the_network_as_it_was():
    network = resnet("resnet18", cifar_stem=False, width=4)
    network.train()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    cpu_bf16_hazards(network, [8, 16, 40])
    assert network.training and all(layer.training for layer in network.modules())
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
    assert all(not layer._forward_hooks for layer in network.modules())
    frozen = network.network.bn1.eval()  # a user's frozen batch norm keeps its own mode
    cpu_bf16_hazards(network, [16])
    assert not frozen.training and network.network.layer1.training


def test_the_rules_read_the_stride_the_kernel_the_padding_and_the_dilation():
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    assert cpu_bf16_fault(conv, 1, 1) == STRIDE_WIDER_THAN_INPUT and cpu_bf16_fault(conv, 2, 1) == STRIDE_WIDER_THAN_INPUT
    assert cpu_bf16_fault(conv, 1, 2) is None and cpu_bf16_fault(conv, 2, 2) is None
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 3, stride=3, padding=1), 2, 2) == STRIDE_WIDER_THAN_INPUT
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 1, stride=2), 1, 1) is None  # a 1×1 shortcut
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 3, stride=(2, 1), padding=1), 1, 1) is None
    # A dilated kernel on a one-pixel-high input: both of its rows read the padding above and below.
    dilated = nn.Conv2d(4, 4, 2, padding=(1, 0), dilation=2)
    assert cpu_bf16_fault(dilated, 1, 9) == ONLY_PADDING and cpu_bf16_fault(dilated, 2, 9) is None
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 2, padding=(1, 0), dilation=2, padding_mode="reflect"), 1, 9) is None
    # "same" pads 1 before and 2 after for a 2-tap kernel of dilation 3: on one pixel its taps read
    # offsets -1 and 2 (padding only); an odd kernel's centre tap always reads the input.
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 2, padding="same", dilation=3), 1, 1) == ONLY_PADDING
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 2, padding="same", dilation=3), 2, 2) is None
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 3, padding="same", dilation=3), 1, 1) is None
    assert cpu_bf16_fault(nn.Conv2d(4, 4, 3, padding="valid"), 3, 3) is None


def test_training_in_bf16_on_the_cpu_is_refused_before_any_step_with_its_remedies(tmp_path, capsys,
                                                                                  fresh_accelerate_state):
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "fnc", "--config", "fnc_imagenet", "--dataset", tiny_photos(tmp_path / "photos.npz"),
              "--view-size", "16", "--width", "4", "--batch-size", "8", "--train-subset", "16", "--epochs", "1",
              "--warmup-epochs", "0",
              "--projector-hidden", "32", "--precision", "bf16", "--cpu", "--num-workers", "0",
              "--output-dir", str(output)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "'backbone.network.layer4.0.conv2'" in error and "at 16-px views" in error
    assert "--precision no" in error and "at least 17 px" in error and error.rstrip().endswith("(set with --precision)")
    assert not output.exists() or not any(output.iterdir())


def test_no_convolution_outside_the_rules_breaks_in_bf16_on_the_cpu(tmp_path):
    """The benchmark on 600 random convolutions, each run in a child process (some crash it):
    the rules are complete on this machine, and the breakage they name is real."""
    report = cpu_bf16_conv.main(["--draws", "600", "--chunk", "200", "--output", str(tmp_path / "conv.json")])
    saved = json.loads((tmp_path / "conv.json").read_text())
    counts = saved["counts"]
    assert counts == report["counts"]
    outside = counts[cpu_bf16_conv.OUTSIDE]
    assert outside["calls"] > 200 and outside["wrong"] == outside["crashed"] == 0 and saved["rules_hold"] is True
    assert counts[STRIDE_WIDER_THAN_INPUT]["calls"] > 0 and counts["input_gradient_wrong"] == 0
    assert counts["calls"] == sum(counts[fault]["calls"] for fault in (cpu_bf16_conv.OUTSIDE, *cpu_bf16_conv.FAULTS))
