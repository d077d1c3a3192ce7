"""MoCo v2: InfoNCE against a momentum queue (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from softcontrast.components.augment import ViewRecipe, moco_v2_cifar
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.targets import InfoNCE
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import setting
from softcontrast.methods.base import ContrastiveMethod


class MoCoV2(ContrastiveMethod):
    """MoCo v2. ``L = −log softmax(q·Cᵀ/τ)_pos`` with ``C = [k_i | Q]``.

    Both views use the MoCo v2 recipe. The projector defaults to the one SCE uses
    (``feature → 512 → 128`` with BN), so the two differ only in their targets.

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        view: recipe of both views (default: MoCo v2 CIFAR).
        queue_size: K (default 4096).
        temperature: τ (default 0.2, MoCo v2).
        momentum: EMA momentum (default 0.99).
        final_momentum: momentum at the end (cosine schedule); ``None`` = constant.
        symmetric: average the loss over both view orders.
        **kwargs: further :class:`ContrastiveMethod` options.
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module | None = None,
        view: ViewRecipe | None = None,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        symmetric: bool = False,
        **kwargs,
    ):
        view = view or moco_v2_cifar()
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            InfoNCE(),
            query_view=view,
            key_view=view,
            queue_size=queue_size,
            temperature=temperature,
            momentum=momentum,
            final_momentum=final_momentum,
            symmetric=symmetric,
            **kwargs,
        )


@dataclass
class MoCoConfig(QueueSettings):
    """MoCo v2 (Chen et al. 2020), CIFAR-10 defaults."""

    temperature: float = setting(0.2, "τ of InfoNCE")


def build_moco(config: MoCoConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """``C = [k_i | Q]``, one-hot target on ``k_i``."""
    return MoCoV2(backbone, setup.projector_for(backbone), view=setup.view(moco_v2_cifar()),
                  queue_size=config.queue_size, temperature=config.temperature, momentum=config.momentum,
                  final_momentum=config.final_momentum, symmetric=config.symmetric)
