"""FNC: False Negative Cancellation (Huynh et al., WACV 2022).

:class:`FNC` is the published, multi-view objective; :class:`FNCOnMoCo` is this
library's adaptation to MoCo v2 (one anchor per image, support views only for
detection), kept as an option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from softcontrast.components.augment import ViewRecipe, moco_v2_cifar, to_float
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.distributed import gather_no_grad
from softcontrast.components.multiview import MultiViewAugment, ViewColumns, ViewMemory, embed_views
from softcontrast.components.neighbors import Backend
from softcontrast.components.targets.false_negatives import (
    FalseNegativeCancellation,
    check_choice,
    detected_false_negatives,
)
from softcontrast.components.targets.view_false_negatives import ViewFalseNegatives, view_fnc_loss
from softcontrast.evaluation import view_false_negative_diagnostics
from softcontrast.methods.base import Contrast, ContrastiveMethod, StepOutput
from softcontrast.methods.common import DetectionSettings, MomentumSettings, QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import setting

#: Column layouts of :class:`FNC`: the published one, and this library's earlier choice.
COLUMN_LAYOUTS = ("published", "library")


class FNC(ContrastiveMethod):
    """FNC as published (Huynh et al., WACV 2022): every one of ``V = 2 + S`` views an anchor.

    ``L = (scale/V)·Σ_a mean_i L_ia``, ``s = z_ia·c/T`` over the columns
    ``c = [momentum views of the global batch (the block) | memory of view entries]``;
    ``F_i = top_k {m : agg_v(ẑ_iv·c_m) > threshold}``, own image's columns excluded;
    ``P_i`` = the other ``V − 1`` views of image ``i``; the anchor's own column masked;
    attract: ``L_ia = LSE_{m≠a} s_am − mean_{P_i ∪ F_i} s``;
    eliminate: ``L_ia = LSE_{m≠a, m∉F_i} s_am − mean_{P_i} s``.

    Defaults are the official ones: ``S = 8``, ``top_k = 10``, ``threshold = 0.7``,
    ``T = 0.1``, EMA 0.999, max aggregation, ``scale = 2``. As published, the memory
    holds 16 × batch view entries in total, its head the current block: the columns
    are ``[block | memory[:−V·B]]``, ``memory_size`` of them (4096 = 16 × 256).
    Without memory (``memory_size = 0``), as published, the online views ``z`` are
    the columns and the detectors (``ẑ = z``), with gradient through both. FNC is
    active from the first step. One deviation: memory entries of the row's own image
    are masked (the official code has no sample ids and treats them as negatives).
    The online encoder embeds all ``V`` views in one pass, and so does the momentum
    encoder (with shuffle-BN when given).

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        support_views: S >= 0, views per image beyond the first two (``V = 2 + S``).
        top_k: at most this many detected view entries per image (>= 1).
        threshold: cosine a detected score must exceed, in ``[-1, 1]``.
        strategy: ``attract`` or ``eliminate``.
        aggregation: ``max`` or ``mean`` over the ``V`` momentum views.
        search_backend: :class:`~softcontrast.components.neighbors.NeighborSearch`
            backend of the search over the columns.
        bank: search this dataset-wide bank (refreshed from each image's first
            detector view ``ẑ``) instead of the columns; ``top_k`` then counts images.
        view: recipe of all ``V`` views (default: MoCo v2 CIFAR).
        memory_size: view entries in the memory, the current block included as
            published (0 = none; else at least one block, global batch × V).
        temperature: T (default 0.1).
        momentum: EMA momentum (default 0.999).
        final_momentum: momentum at the end (cosine schedule); ``None`` = constant.
        loss_scale: ``scale`` (2 as published; 1 is the plain mean over anchors).
        column_layout: ``published`` (above) or ``library``, this library's earlier
            choice: the block in front of ``memory_size`` older view entries, and
            without memory the momentum views as columns and detectors (no gradient
            through the columns).
        **kwargs: further :class:`ContrastiveMethod` options (``channels_last``, ``shuffle_bn``).
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module | None = None,
        support_views: int = 8,
        top_k: int = 10,
        threshold: float = 0.7,
        strategy: str = "attract",
        aggregation: str = "max",
        search_backend: Backend = "torch",
        bank: EmbeddingBank | None = None,
        view: ViewRecipe | None = None,
        memory_size: int = 4096,
        temperature: float = 0.1,
        momentum: float = 0.999,
        final_momentum: float | None = None,
        loss_scale: float = 2.0,
        column_layout: str = "published",
        **kwargs,
    ):
        check_choice("column_layout (--column-layout)", column_layout, COLUMN_LAYOUTS)
        if support_views < 0:
            raise ValueError(f"FNC support_views (--support-views) must be >= 0, got {support_views}")
        if memory_size < 0:
            raise ValueError(f"FNC memory_size (--memory-size) must be >= 0 view entries, got {memory_size}")
        if not loss_scale > 0:
            raise ValueError(f"FNC loss_scale (--loss-scale) must be > 0, got {loss_scale}")
        view = view or moco_v2_cifar()
        detector = ViewFalseNegatives(top_k, threshold, strategy, aggregation, search_backend, bank)
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            detector,
            query_view=view,
            key_view=view,
            queue_size=1,
            temperature=temperature,
            momentum=momentum,
            final_momentum=final_momentum,
            **kwargs,
        )
        self.support_views = support_views
        self.num_views = 2 + support_views
        self.views = MultiViewAugment([view] * self.num_views)
        self.queue = ViewMemory(memory_size, self.queue.keys.shape[1])  # view entries take the queue's place
        self.loss_scale = loss_scale
        self.column_layout = column_layout
        self.bank = bank
        self._pending_block: tuple[Tensor, Tensor, Tensor] | None = None

    def check_global_batch(self, global_batch: int) -> None:
        """Raises a ``ValueError`` when a memory is smaller than one block of view entries."""
        block = global_batch * self.num_views
        if 0 < self.queue.capacity < block:
            raise ValueError(
                f"FNC memory_size (--memory-size) {self.queue.capacity} is smaller than one block of view entries "
                f"({global_batch} images × {self.num_views} views = {block}): raise it to at least {block}, "
                "or 0 for no memory"
            )

    @property
    def online_columns(self) -> bool:
        """Whether the online views are the columns and detectors (published, no memory)."""
        return self.column_layout == "published" and self.queue.capacity == 0

    def view_columns(self, views: list[Tensor], ids: Tensor, anchors: Tensor | None = None
                     ) -> tuple[Tensor, ViewColumns]:
        """The detectors ``ẑ`` (``B×V×D``) and the columns of a step.

        Args:
            views: the ``V`` views of the batch.
            ids: ``B`` sample ids.
            anchors: the online embeddings ``z`` (``B×V×D``) when already computed.
        """
        if self.online_columns:
            if anchors is None:
                anchors = embed_views(self._encode_online, views).transpose(0, 1)
            return anchors, ViewColumns.build(anchors, ids, gradient=True)
        momentum = embed_views(self.embed_keys, views).transpose(0, 1)
        return momentum, ViewColumns.build(momentum, ids, self.queue, self.column_layout == "published")

    def forward(self, images: Tensor, ids: Tensor) -> StepOutput:
        """One step on ``uint8`` images ``B×3×H×W`` with sample ``ids``."""
        batch, num_views = images.shape[0], self.num_views
        views = self.views(to_float(images), self.streams.at(images.device).local)
        anchors = embed_views(self._encode_online, views).transpose(0, 1)  # z: B×V×D
        detectors, columns = self.view_columns(views, ids, anchors)  # ẑ: B×V×D
        found = self.target_builder.false_negatives(columns, detectors, ids)  # F_i: B×N
        layout = columns.layout(ids.repeat_interleave(num_views), columns.own_columns(batch))
        targets = self.target_builder(columns, layout, found.repeat_interleave(num_views, dim=0))
        loss = view_fnc_loss(anchors.reshape(batch * num_views, -1), columns, targets, self.temperature,
                             self.loss_scale)
        self._pending_block = columns.block_entries()
        with torch.no_grad():
            positives = (anchors[:, :, None] * detectors[:, None]).sum(-1)  # B×V×V cosines
            off_diagonal = ~torch.eye(num_views, dtype=torch.bool, device=ids.device)
            metrics = {
                "loss": loss.detach(),
                "positive_similarity": positives[:, off_diagonal].mean(),
                "queue_filled": self.queue.filled.float(),
                **view_false_negative_diagnostics(columns.ids, ids, found, layout.positive, layout.mask, targets.target,
                                                  self.diagnostic_labels),
            }
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update, then the block's view entries into the memory (and first views into the bank)."""
        self.target_encoder.update(self.online, self.momentum_at(step, total_steps))
        if self._pending_block is None:
            return
        embeddings, ids, views = self._pending_block
        self._pending_block = None
        if self.bank is not None:
            first = slice(None, None, self.num_views)  # view 0 of every image: the block is image-major
            self.bank.update(embeddings[first], ids[first])
        self.queue.enqueue(embeddings, ids, views)


class FNCOnMoCo(ContrastiveMethod):
    """FNC on MoCo v2 — this library's adaptation, not the paper's objective
    (``--variant moco``). ``L = −Σ_j target_ij · log softmax(q_i·Cᵀ/τ)_j`` with

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


@dataclass
class FNCConfig(DetectionSettings, MomentumSettings):
    """FNC as published (Huynh et al., WACV 2022), the official defaults."""

    momentum: float = setting(0.999, "EMA momentum of the momentum encoder")
    temperature: float = setting(0.1, "T of the loss")
    support_views: int = setting(8, "S, views per image beyond the first two (V = 2 + S); every view is an anchor")
    memory_size: int | None = setting(
        None, "view entries in the memory, the current block included (default 16 × the global batch, as "
              "published; 0 = none)")
    loss_scale: float = setting(2.0, "scale of the mean loss over anchors (2 as published, 1 = plain mean)")
    column_layout: str = setting(
        "published", "published: the memory counts the block, without memory the online views are the columns; "
                     "library: our earlier layout", choices=COLUMN_LAYOUTS)


@dataclass
class FNCOnMoCoConfig(DetectionSettings, QueueSettings):
    """FNC on MoCo v2: this library's adaptation (one anchor per image)."""

    temperature: float = setting(0.2, "τ of the loss")
    detection_views: int = setting(4, "momentum embeddings per image that detect false negatives, the key included")


def build_fnc(config: FNCConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    memory = 16 * setup.global_batch if config.memory_size is None else config.memory_size
    return FNC(backbone, setup.projector_for(backbone), support_views=config.support_views, top_k=config.top_k,
               threshold=config.threshold, strategy=config.strategy, aggregation=config.aggregation,
               search_backend=config.search_backend, bank=setup.bank, view=setup.view(moco_v2_cifar()),
               memory_size=memory, temperature=config.temperature, momentum=config.momentum,
               final_momentum=config.final_momentum, loss_scale=config.loss_scale,
               column_layout=config.column_layout)


def build_fnc_on_moco(config: FNCOnMoCoConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    return FNCOnMoCo(backbone, setup.projector_for(backbone), support_views=config.detection_views,
                     top_k=config.top_k, threshold=config.threshold, strategy=config.strategy,
                     aggregation=config.aggregation, search_backend=config.search_backend, bank=setup.bank,
                     view=setup.view(moco_v2_cifar()), queue_size=config.queue_size,
                     temperature=config.temperature, momentum=config.momentum,
                     final_momentum=config.final_momentum, symmetric=config.symmetric)
