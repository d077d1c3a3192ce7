"""Backbones by name, and the backbone spec a run saves to rebuild its network.

A name is one of the short ResNet names (``resnet18``, ``resnet34``, ``resnet50``, which
take ``width`` and ``cifar_stem``), ``torchvision:<model>`` (any torchvision
classification model) or ``timm:<model>`` (any timm model; timm is the optional
``timm`` extra). A named model loses its classifier (the last ``nn.Linear`` of a
torchvision model; ``num_classes=0`` for timm) and its feature size is read from the
layer removed. Any other ``nn.Module`` is wrapped from Python with
:class:`~softcontrast.components.backbones.Backbone`.

``backbone.pt`` holds the named model's own ``state_dict`` (no wrapper prefix), so it loads
into the plain torchvision or timm model with ``load_state_dict(..., strict=False)``,
only the classifier's weights missing; ``backbone.json`` beside it holds the
:class:`BackboneSpec`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from softcontrast.components.backbones import RESNET_LAYERS, Backbone, resnet

#: Prefixes of the names of models from a library.
LIBRARIES = ("torchvision", "timm")
#: The file beside ``backbone.pt`` that holds its :class:`BackboneSpec`.
SPEC_FILE = "backbone.json"
#: The key prefix of ``backbone.pt`` files saved before the spec (the wrapper's ``network.``).
OLD_PREFIX = "network."


class MissingExtraError(ImportError, ValueError):
    """A ``timm:`` backbone without timm installed (the message says what to install)."""


@dataclass(frozen=True)
class BackboneSpec:
    """What builds a backbone again: its name, the model's keyword arguments and the ResNet options.

    Attributes:
        name: ``resnet18`` / ``resnet34`` / ``resnet50``, ``torchvision:<model>`` or ``timm:<model>``.
        kwargs: keyword arguments of the named model's constructor (``{"img_size": 32}``).
        cifar_stem: the 3×3 stride-1 stem without max-pool (short names; a named model with a
            ResNet stem — ``conv1`` and ``maxpool`` — takes it too, others ignore it).
        width: channels of the first stage (short names only; ``None`` for named models).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False
    width: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as saved in ``backbone.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "BackboneSpec":
        """The spec of a saved ``backbone.json``."""
        return cls(str(saved["name"]), dict(saved.get("kwargs") or {}), bool(saved.get("cifar_stem", False)),
                   saved.get("width"))


def parse_kwargs(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The model keyword arguments of a setting: a JSON object (``'{"img_size": 32}'``), a mapping or ``None``.

    Raises:
        ValueError: the text is not a JSON object.
    """
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"backbone kwargs must be a JSON object such as '{{\"img_size\": 32}}'; got {text!r} "
                         f"({error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"backbone kwargs must be a JSON object such as '{{\"img_size\": 32}}'; got {text!r}")
    return value


def backbone_spec(name: str, kwargs: str | Mapping[str, Any] | None = None, cifar_stem: bool = False,
                  width: int = 64) -> BackboneSpec:
    """The spec of a backbone named as on the command line (``width`` kept for short names only).

    Raises:
        ValueError: an unknown name, or kwargs given to a short ResNet name.
    """
    kwargs = parse_kwargs(kwargs)
    library, _, model = name.partition(":")
    if name in RESNET_LAYERS:
        if kwargs:
            raise ValueError(f"{name} takes --width and --cifar-stem, not backbone kwargs; use "
                             f"torchvision:{name} to pass the model's own arguments")
        return BackboneSpec(name, {}, bool(cifar_stem), int(width))
    if library in LIBRARIES and model:
        return BackboneSpec(name, kwargs, bool(cifar_stem), None)
    raise ValueError(f"unknown backbone {name!r}: choose {', '.join(sorted(RESNET_LAYERS))}, "
                     "torchvision:<model> (e.g. torchvision:resnet50) or timm:<model> (e.g. timm:vit_small_patch16_224)")


def build_backbone(spec: BackboneSpec) -> Backbone:
    """The untrained backbone of ``spec`` (its classifier removed), carrying the spec (``backbone.spec``).

    Raises:
        ValueError: an unknown name, or a model without a linear classifier to remove.
        MissingExtraError: a ``timm:`` name without timm installed (an ``ImportError`` and a ``ValueError``).
    """
    if spec.name in RESNET_LAYERS:
        return resnet(spec.name, cifar_stem=spec.cifar_stem, width=spec.width or 64)
    else:
        library, _, model = spec.name.partition(":")
        if library == "torchvision":
            network, feature_dim = _torchvision_model(model, spec.kwargs)
        elif library == "timm":
            network, feature_dim = _timm_model(model, spec.kwargs)
        else:
            backbone_spec(spec.name)  # raises the error naming the choices
            raise AssertionError("unreachable")
        if spec.cifar_stem:
            _cifar_stem(network)
    return Backbone(network, feature_dim, spec)


def _torchvision_model(model: str, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """A torchvision classification model without its last linear layer, and that layer's input size."""
    import torchvision

    try:
        network = torchvision.models.get_model(model, weights=None, **kwargs)
    except ValueError as error:
        raise ValueError(f"torchvision:{model}: {error}; see torchvision.models.list_models()") from None
    except TypeError as error:
        raise ValueError(f"torchvision:{model} does not take the backbone kwargs {kwargs} ({error})") from None
    last = None
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"torchvision:{model} has no linear classifier to remove; build it in Python and wrap it "
                         "with Backbone(module, feature_dim)")
    parent_name, _, child = last.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    feature_dim = getattr(parent, child).in_features
    setattr(parent, child, nn.Identity())
    return network, feature_dim


def _timm_model(model: str, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """A timm model built with ``num_classes=0`` (pooled features), and its feature size."""
    try:
        import timm
    except ImportError:
        raise MissingExtraError(f"timm:{model} needs timm: pip install 'softcontrast[timm]'") from None
    if not timm.is_model(model):
        raise ValueError(f"timm:{model} is not a timm model; see timm.list_models()")
    try:
        network = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ValueError(f"timm:{model} does not take the backbone kwargs {kwargs} ({error})") from None
    return network, int(getattr(network, "head_hidden_size", None) or network.num_features)


def _cifar_stem(network: nn.Module) -> None:
    """Replaces a ResNet stem (``conv1`` + ``maxpool``) by one 3×3 stride-1 convolution; other models keep theirs."""
    conv, pool = getattr(network, "conv1", None), getattr(network, "maxpool", None)
    if isinstance(conv, nn.Conv2d) and isinstance(pool, nn.MaxPool2d):
        network.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()


def network_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The ``state_dict`` saved as ``backbone.pt``: the wrapped model's own (no ``network.`` prefix)."""
    return getattr(backbone, "network", backbone).state_dict()


def load_network_state(backbone: Backbone, state: Mapping[str, torch.Tensor]) -> None:
    """Loads a ``backbone.pt`` into ``backbone`` (strict), also an old one whose keys start with ``network.``.

    Raises:
        RuntimeError: the weights do not fit the network (missing, unexpected or misshapen keys).
    """
    if state and all(key.startswith(OLD_PREFIX) for key in state):
        state = {key[len(OLD_PREFIX):]: value for key, value in state.items()}
    backbone.network.load_state_dict(state)


def save_spec(spec: BackboneSpec, path: str | Path) -> Path:
    """Writes ``spec`` as JSON to ``path`` (``backbone.json``)."""
    path = Path(path)
    path.write_text(json.dumps(spec.to_dict(), indent=2))
    return path


def read_spec(path: str | Path) -> BackboneSpec | None:
    """The spec saved in ``path`` (``backbone.json``), ``None`` when there is none (runs from before specs)."""
    path = Path(path)
    return BackboneSpec.from_dict(json.loads(path.read_text())) if path.is_file() else None
