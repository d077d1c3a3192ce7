"""ContrastiveMethod: one training step composed from the components (DESIGN steps 1–8)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from softcontrast.components.augment import BatchAugment, ViewRecipe, to_float
from softcontrast.components.backbones import Backbone, Encoder
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory_format import cpu_channels_last_hazards, to_channels_last
from softcontrast.components.momentum import MomentumEncoder, cosine_momentum
from softcontrast.components.multiview import SmallCrops
from softcontrast.components.queue import MemoryQueue
from softcontrast.components.shuffle_bn import ShuffleBatchNorm, shared_permutation
from softcontrast.components.streams import RandomStreams
from softcontrast.components.targets.base import TargetBuilder, Targets
from softcontrast.evaluation import label_diagnostics


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar to back-propagate.
        metrics: detached scalars to log (no host synchronisation until read).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Contrast:
    """One query/key contrast: embeddings, columns, target and loss."""

    query: Tensor
    columns: LogitColumns
    targets: Targets
    logits: Tensor
    loss: Tensor


class ContrastiveMethod(nn.Module):
    """Momentum-queue contrastive learning with a pluggable target builder.

    Per step: make the query and key views on the device; embed the query with the
    online encoder f and the key (and support views) with the momentum encoder g;
    lay out the columns ``[k_i | Q]`` or ``[batch keys | Q]``; build
    ``(target, mask)``; loss = masked soft cross-entropy of ``q·Cᵀ/τ``. After the
    optimizer step (:meth:`after_optimizer_step`): EMA update, then enqueue the
    gathered keys and ids.

    Random draws come from :attr:`streams`: the views from its per-process
    ``local`` stream, the shuffle-BN permutation from its ``shared`` stream. The
    trainer seeds them from the run's seed and the process index and checkpoints them.

    Args:
        backbone: feature extractor of the online encoder.
        projector: head on the features (output dim D).
        target_builder: turns columns into targets.
        query_view: recipe of the online (query) view.
        key_view: recipe of the momentum (key) view.
        queue_size: K, number of queued keys.
        temperature: τ of the loss.
        momentum: base EMA momentum.
        final_momentum: momentum at the end of training (cosine schedule);
            ``None`` keeps it constant.
        in_batch_keys: columns ``[all gathered batch keys | Q]`` instead of ``[k_i | Q]``.
        symmetric: also contrast the key view's query against the query view's key
            and average the two losses (both keys are enqueued).
        support_views: S, number of momentum embeddings per image handed to the
            target builder as ``support`` (the key view counts as one; 0 = none).
        support_view: recipe of the extra support views (defaults to ``query_view``).
        channels_last: feed views in channels-last memory format (on the CPU only for
            networks where it is safe: :mod:`~softcontrast.components.memory_format`).
        shuffle_bn: encode keys with shuffle-BN / split-BN
            (:class:`~softcontrast.components.shuffle_bn.ShuffleBatchNorm`); ``None``
            encodes each batch of key views in one pass.
        small_crops: multi-crop (:class:`~softcontrast.components.multiview.SmallCrops`):
            each small crop of image ``i`` is one more query with row ``i``'s target,
            against the same columns; the loss is the mean over all queries
            (``None``: the two-view step).
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module,
        target_builder: TargetBuilder,
        query_view: ViewRecipe,
        key_view: ViewRecipe,
        queue_size: int = 4096,
        temperature: float = 0.1,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        in_batch_keys: bool = False,
        symmetric: bool = False,
        support_views: int = 0,
        support_view: ViewRecipe | None = None,
        channels_last: bool = False,
        shuffle_bn: ShuffleBatchNorm | None = None,
        small_crops: SmallCrops | None = None,
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= momentum <= 1 or (final_momentum is not None and not 0 <= final_momentum <= 1):
            raise ValueError(f"momentum must lie in [0, 1], got {momentum} (final {final_momentum})")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if support_views < 0:
            raise ValueError(f"support_views must be >= 0, got {support_views}")
        self.online = Encoder(backbone, projector)
        self.target_encoder = MomentumEncoder(self.online)
        with torch.no_grad():
            dim = self._embedding_dim()
        self.queue = MemoryQueue(queue_size, dim)
        self.target_builder = target_builder
        self.query_augment = BatchAugment(query_view)
        self.key_augment = BatchAugment(key_view)
        self.support_augment = BatchAugment(support_view or query_view)
        self.temperature = temperature
        self.momentum = momentum
        self.final_momentum = momentum if final_momentum is None else final_momentum
        self.in_batch_keys = in_batch_keys
        self.symmetric = symmetric
        self.support_views = support_views
        self.channels_last = channels_last
        self._channels_last_safe_on_cpu = not cpu_channels_last_hazards(self.online)
        self.shuffle_bn = shuffle_bn
        self.small_crops = small_crops
        self._pending: list[tuple[Tensor, Tensor]] = []
        self.diagnostic_labels: Tensor | None = None
        self.streams = RandomStreams()

    def check_global_batch(self, global_batch: int) -> None:
        """Raises a ``ValueError`` when the queue cannot hold one global batch of keys."""
        if self.queue.capacity < global_batch:
            raise ValueError(
                f"queue size {self.queue.capacity} is smaller than the global batch {global_batch}: "
                "raise the queue size or lower the batch size"
            )

    def set_diagnostic_labels(self, labels: Tensor | None) -> None:
        """Class label of every sample id (or ``None``). When set, each step also reports
        :func:`~softcontrast.evaluation.label_diagnostics`; training never reads them."""
        self.diagnostic_labels = labels

    def _embedding_dim(self) -> int:
        projector = self.online.projector
        was_training = projector.training
        dim = projector.eval()(torch.zeros(1, self.online.backbone.feature_dim)).shape[-1]
        projector.train(was_training)
        return dim

    @property
    def query_size(self) -> int:
        """Side length of the query view."""
        return self.query_augment.recipe.size

    def use_channels_last(self, device: torch.device | str) -> bool:
        """Puts the weights in channels-last when it was asked for and is safe on ``device``
        (:func:`~softcontrast.components.memory_format.to_channels_last`); otherwise turns it
        off. Returns whether it is on."""
        self.channels_last = self.channels_last and to_channels_last(self, device)
        return self.channels_last

    def _prepare(self, views: Tensor) -> Tensor:
        if self.channels_last and (views.device.type != "cpu" or self._channels_last_safe_on_cpu):
            return views.contiguous(memory_format=torch.channels_last)
        return views

    def embed_keys(self, views: Tensor) -> Tensor:
        """Momentum embeddings (no gradient) of ``views``; under shuffle-BN with a fresh
        permutation of the global batch from the shared stream."""
        views = self._prepare(views)
        if self.shuffle_bn is None:
            return self.target_encoder(views)
        permutation = shared_permutation(views.shape[0], views.device, self.streams.at(views.device).shared)
        return self.shuffle_bn(self.target_encoder, views, permutation)

    def support_embeddings(self, images: Tensor, keys: Tensor) -> Tensor | None:
        """``B×S×D`` support embeddings: the key, then ``S−1`` extra momentum views."""
        if self.support_views == 0:
            return None
        local = self.streams.at(images.device).local
        extra = [self.embed_keys(self.support_augment(images, local)) for _ in range(self.support_views - 1)]
        return torch.stack([keys, *extra], dim=1)

    def contrast(self, query_views: Tensor, keys: Tensor, ids: Tensor, support: Tensor | None = None) -> Contrast:
        """Scores the queries of ``query_views`` against the columns of ``keys``."""
        query = self.online(self._prepare(query_views))
        columns = LogitColumns.build(keys, ids, self.queue, self.in_batch_keys)
        targets = self.target_builder(columns, support)
        logits = columns.scores(query) / self.temperature
        loss = soft_cross_entropy(logits, targets.target, targets.mask)
        return Contrast(query, columns, targets, logits, loss)

    def forward(self, images: Tensor, ids: Tensor) -> StepOutput:
        """One training step on ``uint8`` images ``B×3×H×W`` with sample ``ids``."""
        images = to_float(images)
        local = self.streams.at(images.device).local
        query_views = self.query_augment(images, local)
        key_views = self.key_augment(images, local)
        keys = self.embed_keys(key_views)
        first = self.contrast(query_views, keys, ids, self.support_embeddings(images, keys))
        self._pending = [(keys, ids)]
        crops = None if self.small_crops is None else self.small_crops(self._encode_online, images, local)
        first_loss = first.loss if crops is None else self.with_small_crops(first, crops)
        if not self.symmetric:
            return StepOutput(first_loss, self._metrics(first))
        swapped_keys = self.embed_keys(query_views)
        second = self.contrast(key_views, swapped_keys, ids, self.support_embeddings(images, swapped_keys))
        self._pending.append((swapped_keys, ids))
        second_loss = second.loss if crops is None else self.with_small_crops(second, crops)
        return StepOutput((first_loss + second_loss) / 2, self._metrics(first))

    def _encode_online(self, views: Tensor) -> Tensor:
        return self.online(self._prepare(views))

    def with_small_crops(self, contrast: Contrast, crops: Tensor) -> Tensor:
        """Mean loss over the query and the ``N`` small crops (``N×B×D``), every crop of
        image ``i`` scored against ``contrast``'s columns with row ``i``'s target."""
        targets = contrast.targets
        crop_losses = [
            soft_cross_entropy(contrast.columns.scores(crop) / self.temperature, targets.target, targets.mask)
            for crop in crops
        ]
        return (contrast.loss + sum(crop_losses)) / (1 + len(crop_losses))

    def _metrics(self, contrast: Contrast) -> dict[str, Tensor]:
        with torch.no_grad():
            positive = contrast.logits.gather(1, contrast.columns.positive[:, None]) * self.temperature
            metrics = {
                "loss": contrast.loss.detach(),
                "positive_similarity": positive.mean(),
                "queue_filled": self.queue.filled.float(),
            }
            if self.diagnostic_labels is not None:
                metrics.update(label_diagnostics(contrast.columns, contrast.targets, self.diagnostic_labels))
            return metrics

    def momentum_at(self, step: int, total_steps: int) -> float:
        """EMA momentum at ``step`` of ``total_steps``."""
        return cosine_momentum(step, total_steps, self.momentum, self.final_momentum)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the momentum encoder, then enqueue this step's keys."""
        self.target_encoder.update(self.online, self.momentum_at(step, total_steps))
        for keys, ids in self._pending:
            self.queue.enqueue(keys, ids)
        self._pending = []
