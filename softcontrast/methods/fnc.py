"""FNC: False Negative Cancellation (Huynh et al., WACV 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe, moco_v2_cifar
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.distributed import gather_no_grad
from softcontrast.components.neighbors import Backend
from softcontrast.components.targets.false_negatives import FalseNegativeCancellation, detected_false_negatives
from softcontrast.methods.base import Contrast, ContrastiveMethod


class FNC(ContrastiveMethod):
    """FNC on MoCo v2. ``L = −Σ_j target_ij · log softmax(q_i·Cᵀ/τ)_j`` with

    ``score_ij = agg_s(u_is·C_j)`` over queue columns, ``u_i`` the ``S`` momentum
    support embeddings (the key is one), and
    ``F_i = top_k {j unmasked : score_ij > threshold}``;
    eliminate: ``mask ∪= F_i``, ``target_i = e_pos``;
    attract: ``target_i`` uniform over ``{pos} ∪ F_i``.

    Defaults are chosen for CIFAR-sized data on one GPU. The paper (ImageNet) uses
    ``top_k=10``, ``threshold=0.7``, ``S=8`` and attraction; here ``S=4`` (each
    support view costs one momentum forward pass, and a 4096-key queue holds far
    fewer same-class candidates than ImageNet batches need to be covered) with the
    paper's ``top_k``, threshold and strategy.

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        support_views: S, support embeddings per image, the key included (>= 1).
        top_k: at most this many false negatives per row.
        threshold: cosine a false negative's score must exceed, in ``[-1, 1]``.
        strategy: ``attract`` or ``eliminate``.
        aggregation: ``max`` or ``mean`` of the support views' similarities.
        search_backend: :class:`~softcontrast.components.neighbors.NeighborSearch`
            backend for the queue search.
        bank: search this dataset-wide bank (refreshed from the momentum keys)
            instead of the queue.
        view: recipe of query, key and support views (default: MoCo v2 CIFAR).
        support_view: recipe of the extra support views (default: ``view``).
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
        support_views: int = 4,
        top_k: int = 10,
        threshold: float = 0.7,
        strategy: str = "attract",
        aggregation: str = "max",
        search_backend: Backend = "torch",
        bank: EmbeddingBank | None = None,
        view: ViewRecipe | None = None,
        support_view: ViewRecipe | None = None,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        symmetric: bool = False,
        **kwargs,
    ):
        if support_views < 1:
            raise ValueError(f"FNC needs support_views >= 1 (the key counts as one), got {support_views}")
        view = view or moco_v2_cifar()
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            FalseNegativeCancellation(top_k, threshold, strategy, aggregation, search_backend, bank),
            query_view=view,
            key_view=view,
            queue_size=queue_size,
            temperature=temperature,
            momentum=momentum,
            final_momentum=final_momentum,
            symmetric=symmetric,
            support_views=support_views,
            support_view=support_view or view,
            **kwargs,
        )
        self.bank = bank

    def _metrics(self, contrast: Contrast) -> dict[str, Tensor]:
        metrics = super()._metrics(contrast)
        with torch.no_grad():
            found = detected_false_negatives(contrast.columns, contrast.targets)
            metrics["false_negatives_per_row"] = found.float().mean()
        return metrics

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Writes this step's gathered keys into the bank (if any), then EMA and enqueue."""
        if self.bank is not None:
            for keys, ids in self._pending:
                self.bank.update(gather_no_grad(keys), gather_no_grad(ids))
        super().after_optimizer_step(step, total_steps)
