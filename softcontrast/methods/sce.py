"""SCE: Similarity Contrastive Estimation (Denize et al., WACV 2023)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from softcontrast.components.augment import ViewRecipe, sce_strong, sce_weak
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.multiview import SmallCrops
from softcontrast.components.targets import SimilarityTargets
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import setting
from softcontrast.methods.base import ContrastiveMethod


class SCE(ContrastiveMethod):
    """SCE. ``L = −Σ_j [λ·e_pos + (1−λ)·s_i]_j · log softmax(q_i·Cᵀ/τ)_j`` with
    ``s_i = softmax_{j≠pos}(k_i·C_j/τm)``.

    The query view is strong, the key view weak (crop + flip), as in the paper's
    CIFAR recipe; ``symmetric=True`` also swaps them.

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        lam: λ, weight of the one-hot part (default 0.5).
        tau: τ of the online distribution (default 0.1).
        tau_m: τm of the similarity distribution (default 0.05).
        queue_size: K (default 4096).
        momentum: EMA momentum (default 0.99).
        final_momentum: momentum at the end (cosine schedule); ``None`` = constant.
        query_view: strong view recipe (default: SCE strong CIFAR).
        key_view: weak view recipe (default: SCE weak CIFAR).
        in_batch_keys: columns ``[all batch keys | Q]``.
        symmetric: average over both view orders.
        **kwargs: further :class:`ContrastiveMethod` options.
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module | None = None,
        lam: float = 0.5,
        tau: float = 0.1,
        tau_m: float = 0.05,
        queue_size: int = 4096,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        query_view: ViewRecipe | None = None,
        key_view: ViewRecipe | None = None,
        in_batch_keys: bool = False,
        symmetric: bool = False,
        **kwargs,
    ):
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            SimilarityTargets(lam=lam, tau_m=tau_m),
            query_view=query_view or sce_strong(),
            key_view=key_view or sce_weak(),
            queue_size=queue_size,
            temperature=tau,
            momentum=momentum,
            final_momentum=final_momentum,
            in_batch_keys=in_batch_keys,
            symmetric=symmetric,
            **kwargs,
        )


@dataclass
class SCEConfig(QueueSettings):
    """SCE (Denize et al., WACV 2023), the official CIFAR-10 defaults."""

    lam: float = setting(0.5, "λ in [0, 1], weight of the one-hot part of the target")
    temperature: float = setting(0.1, "τ of the online distribution")
    tau_m: float = setting(0.05, "τm of the similarity target")
    in_batch_keys: bool = setting(False, "columns [all batch keys | queue] instead of [k_i | queue]")
    small_crops: int = setting(0, "multi-crop: small crops per image, each one more query with the image's target")
    small_crop_size: int | None = setting(None, "side of the small crops (default: view size × 96/224)")
    small_crop_scale: tuple[float, float] = setting((0.05, 0.14), "crop area range of the small crops")


def build_sce(config: SCEConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    query_view, key_view = setup.view(sce_strong()), setup.view(sce_weak())
    crops = None
    if config.small_crops:
        size = config.small_crop_size or max(1, round(query_view.size * 96 / 224))
        crops = SmallCrops(config.small_crops, replace(query_view, size=size, crop_scale=tuple(config.small_crop_scale)))
    return SCE(backbone, setup.projector_for(backbone), lam=config.lam, tau=config.temperature, tau_m=config.tau_m,
               queue_size=config.queue_size, momentum=config.momentum, final_momentum=config.final_momentum,
               query_view=query_view, key_view=key_view, in_batch_keys=config.in_batch_keys,
               symmetric=config.symmetric, small_crops=crops)
