"""SANE: Self-Labeling Refinement + Momentum Mixup (Zhou et al., NeurIPS 2021)."""

from __future__ import annotations

from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe, moco_v2_cifar, to_float
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.mixers import Mixer, MomentumMixup
from softcontrast.components.targets import InfoNCE, SelfLabelingRefinery
from softcontrast.methods.base import ContrastiveMethod, StepOutput


class SANE(ContrastiveMethod):
    """SANE. ``L = L_SLR + w·L_MM``.

    * ``L_SLR = −Σ_j ŷ_ij · log softmax(q_i·Cᵀ/τ)_j`` with the refined label
      ``ŷ_i = (1 − α)·e_pos + α·top_κ(softmax(k_i·Cᵀ/τs))`` over ``C = [k_i | Q]``
      (``[batch keys | Q]`` with ``in_batch_keys``).
    * ``L_MM = −Σ_j ỹ_ij · log softmax(f(x̃_i)·C̃ᵀ/τ)_j`` for the virtual queries
      ``x̃_i = θ_i·x_i^query + (1 − θ_i)·x_π(i)^key`` and mixed labels
      ``ỹ_i = θ_i·ŷ_i + (1 − θ_i)·ŷ_π(i)`` over ``C̃ = [gathered batch keys | Q]``.

    ``slr=False`` uses one-hot labels (``α = 0``), so ``L_SLR`` is the InfoNCE loss
    of MoCo v2 and the mixup labels are mixed one-hots ("MoCo v2 + MM");
    ``mixup=False`` drops ``L_MM`` ("MoCo v2 + SLR"); both off is MoCo v2.

    Both views follow the MoCo v2 recipe by default; they must have the same size,
    since momentum mixup adds their pixels. Defaults are this library's starting
    points for small images, not values tuned in the paper.

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        alpha: ``α`` in ``[0, 1]``, weight of the refined part of the label.
        tau: ``τ`` of the online distribution.
        tau_s: ``τs`` of the key's similarity distribution.
        kappa: ``κ``, entries of the key's distribution kept.
        mixup_beta: ``β`` of ``θ ~ Beta(β, β)``.
        mixup_weight: ``w``, weight of ``L_MM``.
        slr: refine the labels; ``False`` uses one-hot labels.
        mixup: add the momentum-mixup loss.
        mixer: mixer to use instead of ``MomentumMixup(mixup_beta)`` (e.g.
            :class:`~softcontrast.components.mixers.InputMixup`).
        queue_size: K.
        momentum: EMA momentum.
        final_momentum: momentum at the end (cosine schedule); ``None`` = constant.
        query_view: query view recipe (default: MoCo v2 CIFAR).
        key_view: key view recipe (default: MoCo v2 CIFAR).
        in_batch_keys: columns ``[all batch keys | Q]`` for ``L_SLR`` too.
        symmetric: average both losses over both view orders.
        **kwargs: further :class:`ContrastiveMethod` options.

    Raises:
        ValueError: a hyperparameter outside its range, or views of different sizes
            with mixup on.
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module | None = None,
        alpha: float = 0.5,
        tau: float = 0.2,
        tau_s: float = 0.1,
        kappa: int = 10,
        mixup_beta: float = 1.0,
        mixup_weight: float = 1.0,
        slr: bool = True,
        mixup: bool = True,
        mixer: Mixer | None = None,
        queue_size: int = 4096,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        query_view: ViewRecipe | None = None,
        key_view: ViewRecipe | None = None,
        in_batch_keys: bool = False,
        symmetric: bool = False,
        **kwargs,
    ):
        query_view, key_view = query_view or moco_v2_cifar(), key_view or moco_v2_cifar()
        if mixup and query_view.size != key_view.size:
            raise ValueError(f"momentum mixup needs views of one size, got {query_view.size} and {key_view.size}")
        if not mixup_weight >= 0:
            raise ValueError(f"mixup_weight must be >= 0, got {mixup_weight}")
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            SelfLabelingRefinery(alpha, tau_s, kappa) if slr else InfoNCE(),
            query_view=query_view,
            key_view=key_view,
            queue_size=queue_size,
            temperature=tau,
            momentum=momentum,
            final_momentum=final_momentum,
            in_batch_keys=in_batch_keys,
            symmetric=symmetric,
            **kwargs,
        )
        self.mixer: Mixer | None = (mixer or MomentumMixup(mixup_beta)) if mixup else None
        self.mixup_weight = mixup_weight

    def forward(self, images: Tensor, ids: Tensor) -> StepOutput:
        """One SANE step on ``uint8`` images ``B×3×H×W`` with sample ``ids``."""
        images = to_float(images)
        query_views, key_views = self.query_augment(images), self.key_augment(images)
        self._pending = []
        parts = self.sane_losses(query_views, key_views, ids)
        if self.symmetric:
            swapped = self.sane_losses(key_views, query_views, ids)
            parts = {name: (parts[name] + swapped[name]) / 2 for name in parts}
        return StepOutput(parts["loss"], {name: value.detach() for name, value in parts.items()})

    def sane_losses(self, query_views: Tensor, key_views: Tensor, ids: Tensor) -> dict[str, Tensor]:
        """``L = L_SLR + w·L_MM`` for one view order, with its parts and metrics."""
        keys = self.embed_keys(key_views)
        self._pending.append((keys, ids))
        slr = self.contrast(query_views, keys, ids)
        parts = {**self._metrics(slr), "loss_slr": slr.loss, "loss": slr.loss}
        if self.mixer is not None:
            parts["loss_mm"] = self.mixup_loss(query_views, key_views, keys, ids)
            parts["loss"] = slr.loss + self.mixup_weight * parts["loss_mm"]
        return parts

    def mixup_loss(self, query_views: Tensor, key_views: Tensor, keys: Tensor, ids: Tensor) -> Tensor:
        """``L_MM``: virtual queries ``x̃`` against ``[batch keys | Q]`` with mixed labels ``ỹ``."""
        assert self.mixer is not None
        columns = LogitColumns.build(keys, ids, self.queue, in_batch=True)
        mixing = self.mixer.sample(keys.shape[0], keys.device)
        virtual_queries = self.online(self._prepare(self.mixer.mix_inputs(query_views, key_views, mixing)))
        mixed = self.mixer.mix_targets(self.target_builder(columns), mixing)
        logits = columns.scores(virtual_queries) / self.temperature
        return soft_cross_entropy(logits, mixed.target, mixed.mask)
