"""SCE: Similarity Contrastive Estimation (Denize et al., WACV 2023)."""

from __future__ import annotations

from torch import nn

from softcontrast.components.augment import ViewRecipe, sce_strong, sce_weak
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.targets import SimilarityTargets
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
