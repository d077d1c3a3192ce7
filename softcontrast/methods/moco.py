"""MoCo v2: InfoNCE against a momentum queue (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import Backbone
from softcontrast.components.targets import InfoNCE
from softcontrast.methods.base import ContrastiveMethod
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import setting


@dataclass
class MoCoConfig(QueueSettings):
    """MoCo v2, CIFAR-10 defaults (the projector is SCE's, so the two differ only in their targets)."""

    temperature: float = setting(0.2, "τ of InfoNCE")


def build_moco(config: MoCoConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """``L = −log softmax(q·Cᵀ/τ)_pos`` with ``C = [k_i | Q]``; both views the MoCo v2 recipe."""
    views = [setup.view_at(moco_v2_cifar(), 0), setup.view_at(moco_v2_cifar(), 1)]
    return ContrastiveMethod(
        backbone, setup.projector_for(backbone), InfoNCE(), views=views, passes=config.passes,
        memory_size=config.queue_size, temperature=config.temperature, momentum=config.momentum,
        final_momentum=config.final_momentum, batch_negatives=False,
    )
