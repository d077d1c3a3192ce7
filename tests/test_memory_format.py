"""Channels-last stays off on the CPU for networks whose convolutions are unsafe in it."""

import pytest
import torch

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.memory_format import channels_last_allowed, cpu_channels_last_hazards
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import ContrastiveMethod, Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator


def tiny_moco(width: int) -> ContrastiveMethod:
    torch.manual_seed(0)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 8))
    method = method_spec("moco")(resnet("resnet18", width=width), setup=setup, queue_size=16)
    method.channels_last = True
    return method


def conv_weights_channels_last(method: ContrastiveMethod) -> list[bool]:
    """For every 3×3 convolution (a 1×1 kernel is contiguous in both formats): channels-last only."""
    return [layer.weight.is_contiguous(memory_format=torch.channels_last) and not layer.weight.is_contiguous()
            for layer in method.online.modules()
            if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3)]


@pytest.mark.parametrize("width, unsafe", [
    (2, ["network.layer2.0.downsample.0", "network.layer3.0.downsample.0"]),
    (4, ["network.layer2.0.downsample.0"]),
    (8, []),
])
def test_the_unsafe_shortcut_convolutions_are_found(width, unsafe):
    assert cpu_channels_last_hazards(resnet("resnet18", width=width)) == unsafe
    assert channels_last_allowed(resnet("resnet18", width=width), "cpu", notice=False) == (not unsafe)
    assert channels_last_allowed(resnet("resnet18", width=width), "cuda", notice=False)


def train_two_steps(method: ContrastiveMethod, tmp_path) -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(epochs=1, batch_size=8, output_dir=str(tmp_path), log_every=1, checkpoint_every=0)
    Trainer(method, config, make_accelerator(cpu=True)).fit(ImageTensorDataset(images, torch.zeros(16).long(), ["a"]))


def test_the_trainer_keeps_an_unsafe_network_out_of_channels_last_on_the_cpu(tmp_path, capsys):
    method = tiny_moco(width=4)
    seen = []
    method.online.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    train_two_steps(method, tmp_path)
    assert not method.channels_last and not any(conv_weights_channels_last(method))
    assert seen and all(seen)
    notices = [line for line in capsys.readouterr().err.splitlines() if "channels_last is off" in line]
    assert len(notices) == 1 and "network.layer2.0.downsample.0" in notices[0]


def test_a_safe_network_trains_in_channels_last_on_the_cpu(tmp_path, capsys):
    method = tiny_moco(width=8)
    seen = []
    method.online.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    train_two_steps(method, tmp_path)
    assert method.channels_last and all(conv_weights_channels_last(method))
    assert seen and all(seen)
    assert "channels_last is off" not in capsys.readouterr().err


def test_a_users_own_loop_never_feeds_channels_last_views_to_an_unsafe_network_on_the_cpu():
    method = tiny_moco(width=2)
    views = torch.rand(4, 3, 8, 8)
    assert method._prepare(views).is_contiguous()
    assert tiny_moco(width=8)._prepare(views).is_contiguous(memory_format=torch.channels_last)
