"""Backbones (ResNets with an optional CIFAR stem) and projection/prediction heads."""

from __future__ import annotations

import torch.nn.functional as F
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from softcontrast.components.precision import full_precision

RESNET_LAYERS = {
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
}


class Backbone(nn.Module):
    """Any feature extractor with a known output dimension.

    Wrap any ``nn.Module`` to train it: ``Backbone(my_network, feature_dim=512)``.

    Args:
        network: module mapping ``B×3×H×W`` images to ``B×feature_dim`` features (or to
            ``B×feature_dim×1×1``: the output is flattened).
        feature_dim: size of the features.
        spec: how to build it again (:class:`~softcontrast.components.named_backbones.BackboneSpec`);
            backbones built by name carry theirs, and a run saves it as ``backbone.json``.
    """

    def __init__(self, network: nn.Module, feature_dim: int, spec: Any = None):
        super().__init__()
        self.network = network
        self.feature_dim = feature_dim
        self.spec = spec

    def forward(self, images: Tensor) -> Tensor:
        """Returns ``B×feature_dim`` features."""
        return self.network(images).flatten(1)


def resnet(name: str = "resnet18", cifar_stem: bool = True, width: int = 64) -> Backbone:
    """A torchvision ResNet without its classifier.

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        cifar_stem: replace the 7×7 stride-2 stem and max-pool by one 3×3 stride-1
            convolution (for 32×32 images).
        width: channels of the first stage (64 is the standard network; smaller
            values give narrow networks for quick CPU runs). Stages use
            ``width, 2·width, 4·width, 8·width``.

    Raises:
        ValueError: unknown name or width < 1.
    """
    if name not in RESNET_LAYERS:
        raise ValueError(f"unknown backbone {name!r}: choose one of {sorted(RESNET_LAYERS)}")
    if width < 1:
        raise ValueError(f"backbone width must be >= 1, got {width}")
    block, layers = RESNET_LAYERS[name]
    network = tv_resnet.ResNet(block, list(layers)) if width == 64 else _narrow_resnet(block, layers, width)
    if cifar_stem:
        network.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    feature_dim = network.fc.in_features
    network.fc = nn.Identity()
    from softcontrast.components.named_backbones import BackboneSpec  # the spec module builds on this one

    return Backbone(network, feature_dim, BackboneSpec(name, {}, cifar_stem, width))


def _narrow_resnet(block: type, layers: tuple[int, ...], width: int) -> tv_resnet.ResNet:
    """A torchvision ResNet whose stages have ``width·(1, 2, 4, 8)`` channels."""
    network = tv_resnet.ResNet(block, list(layers))
    network.inplanes = width
    network.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    network.bn1 = nn.BatchNorm2d(width)
    network.layer1 = network._make_layer(block, width, layers[0])
    network.layer2 = network._make_layer(block, 2 * width, layers[1], stride=2)
    network.layer3 = network._make_layer(block, 4 * width, layers[2], stride=2)
    network.layer4 = network._make_layer(block, 8 * width, layers[3], stride=2)
    network.fc = nn.Linear(8 * width * block.expansion, 1)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return network


class MLPHead(nn.Module):
    """Projection or prediction head: ``(Linear → BN → ReLU) × (layers−1) → Linear [→ BN]``.

    Args:
        in_dim: input size.
        hidden_dim: hidden size.
        out_dim: output size.
        num_layers: number of linear layers (>= 1).
        batch_norm: batch norm after each hidden linear layer.
        last_batch_norm: batch norm after the last layer.
        last_affine: give that last batch norm a learned scale and shift (SCE's and
            MoCo v3's projectors have none: ``False``).
        last_shift: with ``last_affine``, the learned shift too; ``False``: a learned scale
            only, the shift held at 0 (FNC's and SimCLR's projectors: ``center=False``).
        last_bias: a bias on the last linear layer (SCE's and MoCo v3's predictors have none).
            Before a last batch norm it changes nothing: the batch norm subtracts it again.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_affine: bool = False,
        last_shift: bool = True,
        last_bias: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP head needs at least one layer, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=last_bias))
        if last_batch_norm:
            norm = nn.BatchNorm1d(out_dim, affine=last_affine)
            if last_affine and not last_shift:
                norm.bias.requires_grad_(False)  # stays 0: the optimizer takes trainable parameters only
            layers.append(norm)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``B×in_dim`` to ``B×out_dim``."""
        return self.layers(x)


class Encoder(nn.Module):
    """Backbone → projector, giving L2-normalised embeddings.

    The momentum encoder is an EMA copy of this module, so it holds exactly what the
    momentum branch has: a method's predictor (online branch only) lives beside it,
    not in it (:class:`~softcontrast.methods.base.ContrastiveMethod`).

    Args:
        backbone: the feature extractor.
        projector: head on top of the features.
    """

    def __init__(self, backbone: Backbone, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Returns ``B×D`` L2-normalised embeddings, normalised in float32 (or float64)
        even when autocast made the projector's output bfloat16.

        With ``normalize=False``: the projector's raw output (a predictor's input), in the
        autocast dtype. A keyword rather than a second method, so that a ``torch.compile``
        wrapper of the encoder compiles both.
        """
        projected = self.projector(self.backbone(images))
        return normalized(projected) if normalize else projected


def normalized(embeddings: Tensor) -> Tensor:
    """``embeddings`` L2-normalised along the last dimension, in float32 (or float64)."""
    return F.normalize(full_precision(embeddings), dim=-1)


#: The projector's optional batch norm after its last layer: none, with a learned scale and
#: shift, without either (SCE's and MoCo v3's ImageNet projectors), or with a learned scale
#: only (FNC's and SimCLR's: ``center=False``).
LAST_BATCH_NORMS = ("none", "affine", "no-affine", "scale")


def projector_for(backbone: Backbone, hidden_dim: int = 512, out_dim: int = 128, num_layers: int = 2,
                  last_batch_norm: str = "none", hidden_batch_norm: bool = True) -> MLPHead:
    """The default projector of the methods: ``feature_dim → hidden → out`` with BN on the hidden layers.

    Args:
        backbone: gives the input size.
        hidden_dim: hidden width.
        out_dim: output width (the embedding size D).
        num_layers: linear layers.
        last_batch_norm: batch norm after the last layer, one of :data:`LAST_BATCH_NORMS`.
        hidden_batch_norm: batch norm after each hidden layer (MoCo v2's head has none).

    Raises:
        ValueError: ``last_batch_norm`` is not one of :data:`LAST_BATCH_NORMS`.
    """
    if last_batch_norm not in LAST_BATCH_NORMS:
        raise ValueError(f"the projector's last batch norm must be one of {', '.join(LAST_BATCH_NORMS)}; "
                         f"got {last_batch_norm!r}")
    return MLPHead(backbone.feature_dim, hidden_dim, out_dim, num_layers=num_layers, batch_norm=hidden_batch_norm,
                   last_batch_norm=last_batch_norm != "none", last_affine=last_batch_norm in ("affine", "scale"),
                   last_shift=last_batch_norm != "scale")


def predictor_for(dim: int, hidden_dim: int = 4096, out_dim: int | None = None, last_bias: bool = False) -> MLPHead:
    """A prediction head on the online branch (BYOL, MoCo v3, SCE on ImageNet): ``dim → hidden → out``,
    two layers with batch norm on the hidden one.

    Args:
        dim: the projector's output width D.
        hidden_dim: hidden width (SCE's ImageNet recipe: 4096).
        out_dim: output width; ``None``: ``dim``. The anchors it makes are scored against the
            momentum encoder's projector outputs, so it must equal ``dim`` to be used by a method.
        last_bias: a bias on its output layer (SCE's eztorch predictor and MoCo v3's have none;
            BYOL's has one).
    """
    return MLPHead(dim, hidden_dim, dim if out_dim is None else out_dim, num_layers=2, last_bias=last_bias)
