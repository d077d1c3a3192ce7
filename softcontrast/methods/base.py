"""ContrastiveMethod: the one training step every method is a preset of (DESIGN steps 1–8).

views → embeddings → columns → targets → optional mixed term → loss; after the
optimizer step: EMA, the parts' own hooks (bank refresh, refinery schedule), memory
update. The two-view step (MoCo v2, SCE, SANE), the multi-view step (FNC as
published, SCE multi-crop) and FNC on MoCo are settings of this one step, not
subclasses of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from softcontrast.components.augment import BatchAugment, CropSpec, ViewRecipe, to_float
from softcontrast.components.backbones import Backbone, Encoder, normalized
from softcontrast.components.columns import Columns, Rows, own_view_indices
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import EMPTY_ID, NO_COLUMN, Memory
from softcontrast.components.memory_format import (
    cpu_channels_last_hazards,
    to_channels_last,
)
from softcontrast.components.mixers import Mixer, MixParams
from softcontrast.components.momentum import MomentumEncoder, cosine_momentum
from softcontrast.components.multiview import MultiViewAugment, SmallCrops, embed_views
from softcontrast.components.shuffle_bn import ShuffleBatchNorm, shared_permutation
from softcontrast.components.streams import RandomStreams
from softcontrast.components.targets.base import TargetBuilder, Targets
from softcontrast.settings import SettingError


@dataclass(frozen=True)
class Pass:
    """One contrast of a step: which views are anchors and which make the columns.

    Attributes:
        anchors: view indices embedded by the online encoder; each is an anchor row.
        columns: view indices whose momentum embeddings form the block of columns.
            An anchor that is also a column view has its own column masked.
    """

    anchors: tuple[int, ...]
    columns: tuple[int, ...]


#: The two-view step: the query view (0) against the key view (1).
TWO_VIEW = (Pass((0,), (1,)),)
#: The symmetric two-view step: both view orders, losses averaged.
SYMMETRIC = (Pass((0,), (1,)), Pass((1,), (0,)))


class MixedTerm(nn.Module):
    """The optional second term ``L = (1 − λ)·L(x, y) + λ·L(x′, y′)`` (SANE, eq. 9).

    ``y′`` mixes the ``labels`` builder's targets and ``x′`` the anchor view with a
    partner's ``source`` view (:class:`~softcontrast.components.mixers.Mixer`); without a
    mixer, ``x′ = x`` and ``y′`` is the labels' target. A module, so that state of the
    labels (SANE's ``µ``) is in the method's ``state_dict`` and checkpoints.

    Args:
        weight: ``λ`` in ``[0, 1]``.
        labels: builds ``y′`` before mixing (SANE's refinery).
        mixer: draws ``θ`` and partners and mixes inputs and targets, or ``None``.
        source: the view whose partner pixels are mixed in (``None``: the pass's
            column view, e.g. the partner's key view).
    """

    def __init__(self, weight: float, labels: TargetBuilder, mixer: Mixer | None = None, source: int | None = None):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise SettingError("lam", f"the mixed term's weight λ must lie in [0, 1], got {weight}")
        self.weight = float(weight)
        self.labels = labels
        self.mixer = mixer
        self.source = source

    @property
    def mixes(self) -> bool:
        """Whether the step draws a mixing (a mixer and ``λ > 0``)."""
        return self.mixer is not None and self.weight > 0


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar to back-propagate.
        metrics: detached scalars to log (no host synchronisation until read).
        columns: the first contrast's columns (for diagnostics).
        rows: its anchor rows.
        targets: the targets that repair its labels (SANE: the refined labels).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    columns: Columns | None = None
    rows: Rows | None = None
    targets: Targets | None = None


class ContrastiveMethod(nn.Module):
    """The one step: momentum-encoder contrastive learning with pluggable parts.

    Per step: make the ``V`` views on the device (:attr:`views`); for each
    :class:`Pass`, embed its anchor views with the online encoder f and its column
    views with the momentum encoder g (or, with ``online_columns``, use the anchors);
    lay out :class:`~softcontrast.components.columns.Columns` ``[block | memory]`` (or
    ``[k_i | memory]``) and the anchor :class:`~softcontrast.components.columns.Rows`;
    build ``(target, mask)``; loss ``= scale × masked soft cross-entropy of z·Cᵀ/τ``
    (small crops are extra anchors with their image's target, and the optional
    :class:`MixedTerm` a second term); the step's loss is the mean over passes. After the optimizer
    step (:meth:`after_optimizer_step`): EMA update, the parts' hooks, then the
    gathered blocks into the memory.

    Random draws come from :attr:`streams`: the views from its per-process ``local``
    stream, the shuffle-BN permutation and the mixing from its ``shared`` stream.

    With a predictor (BYOL, MoCo v3, SCE's ImageNet recipe), the online branch is
    backbone → projector → predictor for every anchor (views, small crops, mixed
    inputs), while the momentum encoder stays the EMA of backbone + projector: the
    predictor is not part of :attr:`online`, so it is neither copied nor followed by
    the EMA. Columns are always projector outputs: the momentum encoder's, or, with
    ``online_columns``, the online projector's (with gradient) — never the predictor's,
    as in MoCo v3, where predictions are compared with projections.

    Args:
        backbone: feature extractor of the online encoder.
        projector: head on the features (output dim D).
        targets: turns columns and rows into targets.
        views: the recipe of every view of an image, drawn in this order.
        passes: the contrasts of the step (default: query view 0 against key view 1).
        memory_size: entries in the memory (0 = none).
        temperature: τ of the loss.
        momentum: base EMA momentum.
        final_momentum: momentum at the end of training (cosine schedule); ``None``
            keeps it constant.
        batch_negatives: columns ``[block | memory]``; ``False``: ``[k_i | memory]``.
        memory_counts_block: the memory's size counts the block (FNC as published).
        online_columns: the online anchors are the columns and detectors, with
            gradient (FNC as published without memory; passes with anchors = columns).
        detection_views: extra momentum views per image that only detect false
            negatives (each one more momentum pass per contrast).
        detection_view: their recipe (default: the first column view's).
        small_crops: multi-crop: extra anchors, drawn once per step and never columns,
            scored in every pass against its columns with its rows' targets (passes of one
            anchor view).
        loss_scale: factor of the loss (FNC as published: 2).
        mixed: the optional second term.
        channels_last: feed views in channels-last memory format (on the CPU only for
            networks where it is safe: :mod:`~softcontrast.components.memory_format`).
        shuffle_bn: encode the column views with shuffle-BN / split-BN; ``None``
            encodes each batch of views in one pass.
        predictor: a head on the online projector's output for the anchors
            (:func:`~softcontrast.components.backbones.predictor_for`), or ``None``; its
            output width must be the projector's (:meth:`set_predictor`).
        sync_bn: use :class:`torch.nn.SyncBatchNorm` when trained on several CUDA
            processes (:meth:`use_sync_bn`; the trainer calls it).
        memory_setting: the config field that sets the memory size (named in errors).
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module,
        targets: TargetBuilder,
        views: Sequence[ViewRecipe],
        passes: Sequence[Pass] = TWO_VIEW,
        *,
        memory_size: int,
        temperature: float,
        momentum: float,
        final_momentum: float | None = None,
        batch_negatives: bool = True,
        memory_counts_block: bool = False,
        online_columns: bool = False,
        detection_views: int = 0,
        detection_view: ViewRecipe | None = None,
        small_crops: SmallCrops | None = None,
        loss_scale: float = 1.0,
        mixed: MixedTerm | None = None,
        channels_last: bool = False,
        shuffle_bn: ShuffleBatchNorm | None = None,
        predictor: nn.Module | None = None,
        sync_bn: bool = True,
        memory_setting: str = "queue_size",
    ):
        super().__init__()
        if not temperature > 0:
            raise SettingError("temperature", f"temperature must be > 0, got {temperature}")
        if not 0 <= momentum <= 1:
            raise SettingError("momentum", f"momentum must lie in [0, 1], got {momentum}")
        if final_momentum is not None and not 0 <= final_momentum <= 1:
            raise SettingError("final_momentum", f"final momentum must lie in [0, 1], got {final_momentum}")
        if memory_size < 0:
            raise SettingError(memory_setting, f"{memory_setting} must be >= 0 entries, got {memory_size}")
        if not loss_scale > 0:
            raise SettingError("loss_scale", f"loss_scale must be > 0, got {loss_scale}")
        if detection_views < 0:
            raise ValueError(f"detection_views must be >= 0, got {detection_views}")
        self.passes = tuple(passes)
        for plan in self.passes:
            if not plan.anchors or not plan.columns or max(plan.anchors + plan.columns) >= len(views):
                raise ValueError(f"a pass names views outside the {len(views)} views: {plan}")
            if online_columns and plan.anchors != plan.columns:
                raise ValueError("online columns need passes whose anchors are their columns")
            if small_crops is not None and len(plan.anchors) != 1:
                raise ValueError("small crops take the targets of one anchor view per pass")
        for number, plan in enumerate(self.passes):  # each anchor's own column view, or -1; moves with the method
            own = [plan.columns.index(a) if a in plan.columns else None for a in plan.anchors]
            self.register_buffer(f"own_views_{number}", own_view_indices(own), persistent=False)
        self.online = Encoder(backbone, projector)
        self.target_encoder = MomentumEncoder(self.online)  # backbone + projector: never the predictor
        with torch.no_grad():
            dim = self._embedding_dim()
        #: The online branch's prediction head (a submodule, in the state, only when set).
        self.predictor: nn.Module | None = None
        if predictor is not None:
            self.set_predictor(predictor)
        #: Convert batch norm to SyncBatchNorm on several CUDA processes (:meth:`use_sync_bn`).
        self.sync_bn = sync_bn
        self.memory = Memory(memory_size, dim)
        self.memory_setting = memory_setting
        self.targets = targets
        bank = getattr(targets, "bank", None)
        if isinstance(bank, nn.Module):  # FNC's dataset-wide bank: in checkpoints, moved with the method
            self.bank = bank
        self.views = MultiViewAugment(views)
        first_column = views[self.passes[0].columns[0]]
        self.detection_views = detection_views
        self.detection_augment = BatchAugment(detection_view or first_column)
        self.small_crops = small_crops
        self.mixed = mixed
        self.temperature = temperature
        self.momentum = momentum
        self.final_momentum = momentum if final_momentum is None else final_momentum
        self.batch_negatives = batch_negatives
        self.memory_counts_block = memory_counts_block
        self.online_columns = online_columns
        self.loss_scale = loss_scale
        self.channels_last = channels_last
        self._channels_last_safe_on_cpu = not cpu_channels_last_hazards(self.online)
        self.shuffle_bn = shuffle_bn
        self._pending: list[Columns] = []
        self.streams = RandomStreams()
        self.clock: Callable[[str], None] | None = None
        self._register_load_state_dict_pre_hook(upgrade_state_dict)

    # -- what the trainer and the evaluation read -------------------------------------------

    @property
    def query_view(self) -> ViewRecipe:
        """Recipe of the first anchor view (the evaluation's view size and normalisation)."""
        return self.views.recipes[self.passes[0].anchors[0]]

    @property
    def query_size(self) -> int:
        """Side length of the first anchor view."""
        return self.query_view.size

    def crop_plan(self) -> list[CropSpec]:
        """The crops of one image a step takes, in order, when loader workers cut them.

        The ``V`` views, then the small crops, then each pass's detection views. A step
        given a list of cropped batches (one per entry, ``B×3×s×s``) applies the rest
        of each view's recipe to them; given one ``B×3×H×W`` batch it crops them itself.
        """
        plan = [recipe.crop for recipe in self.views.recipes]
        if self.small_crops is not None:
            plan += [recipe.crop for recipe in self.small_crops.recipes]
        plan += [self.detection_augment.recipe.crop] * (self.detection_views * len(self.passes))
        return plan

    def block_size(self, global_batch: int) -> int:
        """Entries one step writes to the memory per pass: the global batch × column views."""
        return global_batch * len(self.passes[0].columns)

    def check_global_batch(self, global_batch: int) -> None:
        """Raises a :class:`SettingError` when a memory cannot hold one block of the global batch."""
        block = self.block_size(global_batch)
        capacity = self.memory.capacity
        if capacity < block and (capacity > 0 or not self.batch_negatives):
            raise SettingError(
                self.memory_setting,
                f"{self.memory_setting} {capacity} is smaller than one block of the global batch "
                f"({global_batch} images × {len(self.passes[0].columns)} column views = {block}): "
                f"raise {self.memory_setting} to at least {block}" + (", or 0 for no memory" if self.batch_negatives
                                                                     else "") + ", or lower the batch size",
            )

    def _embedding_dim(self) -> int:
        return _output_dim(self.online.projector, self.online.backbone.feature_dim)

    def set_predictor(self, predictor: nn.Module) -> None:
        """Puts ``predictor`` on the online branch (call before the optimizer is made).

        Raises:
            SettingError: its output width is not the projector's (its predictions are scored
                against projector outputs); names ``predictor_out``.
        """
        with torch.no_grad():
            dim = self._embedding_dim()
            out = _output_dim(predictor, dim)
        if out != dim:
            raise SettingError("predictor_out", f"the predictor maps to {out} dimensions, but the columns it is scored "
                                                f"against are the projector's {dim}: set predictor_out to {dim}")
        self.predictor = predictor

    def use_sync_bn(self, device: torch.device | str, processes: int) -> bool:
        """Converts batch norm to :class:`torch.nn.SyncBatchNorm` when :attr:`sync_bn` is on and the
        run has several processes on CUDA; returns whether it did.

        Without shuffle-BN the whole method is converted (online encoder, predictor and momentum
        encoder: global batch statistics, SCE's recipe); under shuffle-BN only the online
        encoder and the predictor, as the momentum encoder's groups keep their own statistics.
        On the CPU (gloo) there is no SyncBatchNorm: each process keeps its own batch
        statistics, whatever :attr:`sync_bn` says.
        """
        if not (self.sync_bn and processes > 1 and torch.device(device).type == "cuda"):
            return False
        if self.shuffle_bn is None:
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        else:
            self.online = nn.SyncBatchNorm.convert_sync_batchnorm(self.online)
            if self.predictor is not None:
                self.predictor = nn.SyncBatchNorm.convert_sync_batchnorm(self.predictor)
        return True

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

    def encode(self, views: Tensor) -> Tensor:
        """Online anchor embeddings (with gradient) of ``views``: the predictor's output when
        there is a predictor, else the projector's."""
        if self.predictor is None:
            return self.online(self._prepare(views))
        return normalized(self.predictor(self.online(self._prepare(views), normalize=False)))

    def _encode_with_columns(self, views: Tensor) -> Tensor:
        """``B×2D``: the anchor embeddings of ``views`` (:meth:`encode`) beside their online
        projector embeddings (the columns of ``online_columns`` with a predictor), both with gradient."""
        projected = self.online(self._prepare(views), normalize=False)
        return torch.cat([normalized(self.predictor(projected)), normalized(projected)], dim=-1)

    def embed_keys(self, views: Tensor) -> Tensor:
        """Momentum embeddings (no gradient) of ``views``; under shuffle-BN with a fresh
        permutation of the global batch from the shared stream."""
        views = self._prepare(views)
        if self.shuffle_bn is None:
            return self.target_encoder(views)
        permutation = shared_permutation(views.shape[0], views.device, self.streams.at(views.device).shared)
        return self.shuffle_bn(self.target_encoder, views, permutation)

    def _tick(self, stage: str) -> None:
        if self.clock is not None:
            self.clock(stage)

    # -- the step ------------------------------------------------------------------------------

    def forward(self, images: "Tensor | Sequence[Tensor]", ids: Tensor) -> StepOutput:
        """One training step on ``uint8`` images ``B×3×H×W`` with sample ``ids``.

        ``images`` may instead be the batches of :meth:`crop_plan`, cropped in loader workers.
        Set :attr:`clock` to a callable to have it called with each stage's name
        (``views``, ``columns``, ``targets``, ``loss``) when the stage ends.
        """
        if isinstance(images, Tensor):
            images = to_float(images)
            view_input, small_input, detect_input = images, images, None
            first = images
        else:
            images = [to_float(crops) for crops in images]
            if len(images) != len(self.crop_plan()):
                raise ValueError(f"{len(images)} cropped batches, but the step takes {len(self.crop_plan())} "
                                 "(method.crop_plan())")
            count, small = len(self.views), self.small_crops.count if self.small_crops is not None else 0
            view_input, small_input, detect_input = images[:count], images[count:count + small], images[count + small:]
            first = images[0]
        streams = self.streams.at(first.device)
        views = self.views(view_input, streams.local)
        mixing = None
        if self.mixed is not None and self.mixed.mixes:
            mixing = self.mixed.mixer.sample(first.shape[0], first.device, streams)
        self._tick("views")
        self._pending = []
        crops = None
        outputs = []
        for number, plan in enumerate(self.passes):
            detect = (first if detect_input is None else
                      detect_input[number * self.detection_views:(number + 1) * self.detection_views])
            columns, rows, anchors = self._columns(number, plan, views, detect, ids, streams.local)
            if number == 0 and self.small_crops is not None:
                crops = self.small_crops(self.encode, small_input, streams.local)
            outputs.append(self._contrast(plan, views, columns, rows, anchors, crops, mixing))
            self._pending.append(columns)
        if len(outputs) == 1:
            return outputs[0]
        first = outputs[0]
        metrics = {name: sum(output.metrics[name] for output in outputs) / len(outputs) for name in first.metrics}
        return StepOutput(sum(output.loss for output in outputs) / len(outputs), metrics, first.columns, first.rows,
                          first.targets)

    def _columns(self, number: int, plan: Pass, views: list[Tensor], detect: "Tensor | list[Tensor]", ids: Tensor,
                 local: torch.Generator) -> tuple[Columns, Rows, Tensor]:
        """Embeds one pass's views; its columns, anchor rows and ``R×D`` anchor embeddings.

        ``detect``: the images the detection views are cut from, or their crops (one per view).
        """
        batch = ids.shape[0]
        anchor_views = [views[v] for v in plan.anchors]
        if self.online_columns and self.predictor is not None:  # anchors: predictions; columns: projections
            anchors, block = embed_views(self._encode_with_columns, anchor_views).transpose(0, 1).chunk(2, dim=-1)
        else:
            anchors = embed_views(self.encode, anchor_views).transpose(0, 1)  # B×A×D
            block = anchors
        if not self.online_columns:
            block = embed_views(self.embed_keys, [views[v] for v in plan.columns]).transpose(0, 1)  # B×C×D
        if isinstance(detect, Tensor):
            extra = [self.embed_keys(self.detection_augment(detect, local)) for _ in range(self.detection_views)]
        else:
            extra = [self.embed_keys(self.detection_augment(crops, local, cropped=True)) for crops in detect]
        detectors = torch.cat([block, torch.stack(extra, dim=1)], dim=1) if extra else block
        columns = Columns.build(block, ids, self.memory, self.batch_negatives, self.memory_counts_block,
                                gradient=self.online_columns)
        keys = block[:, 0] if len(plan.columns) == 1 else None
        rows = columns.rows(ids, getattr(self, f"own_views_{number}"), keys, detectors)
        self._tick("columns")
        return columns, rows, anchors.reshape(batch * len(plan.anchors), -1)

    def _contrast(self, plan: Pass, views: list[Tensor], columns: Columns, rows: Rows, anchors: Tensor,
                  crops: Tensor | None, mixing: MixParams | None) -> StepOutput:
        """The loss of one pass, its parts and metrics."""
        targets = self.targets(columns, rows)
        self._tick("targets")
        logits = columns.scores(anchors) / self.temperature
        loss = soft_cross_entropy(logits, targets.target, targets.mask)
        if crops is not None:
            crop_losses = [soft_cross_entropy(columns.scores(crop) / self.temperature, targets.target, targets.mask)
                           for crop in crops]
            loss = (loss + sum(crop_losses)) / (1 + len(crop_losses))
        loss = self.loss_scale * loss
        metrics: dict[str, Tensor] = {}
        repaired = targets
        if self.mixed is not None:
            loss, repaired, metrics = self._mixed_term(plan, views, columns, rows, logits, loss, mixing)
        self._tick("loss")
        with torch.no_grad():
            positive = rows.positive_one_hot(logits.dtype)
            similarity = (logits * self.temperature * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
            metrics = {"loss": loss.detach(), **metrics, "positive_similarity": similarity.mean(),
                       "queue_filled": self.memory.filled.float()}
        return StepOutput(loss, metrics, columns, rows, repaired)

    def _mixed_term(self, plan: Pass, views: list[Tensor], columns: Columns, rows: Rows, logits: Tensor,
                    loss_c: Tensor, mixing: MixParams | None) -> tuple[Tensor, Targets, dict[str, Tensor]]:
        """``(1 − λ)·L(x, y) + λ·L(x′, y′)``, the labels ``y′`` are built from, and the parts."""
        mixed = self.mixed
        labels = mixed.labels(columns, rows)
        metrics = {"loss_c": loss_c.detach(), **getattr(mixed.labels, "metrics", dict)()}
        if mixed.weight == 0:
            return loss_c, labels, metrics
        if mixed.mixer is None:
            mixed_logits, target = logits, labels
        else:
            source = views[plan.columns[0] if mixed.source is None else mixed.source]
            virtual = mixed.mixer.mix_inputs(views[plan.anchors[0]], source, mixing)
            mixed_logits = columns.scores(self.encode(virtual)) / self.temperature
            target = mixed.mixer.mix_targets(labels, mixing)
        loss_mix = soft_cross_entropy(mixed_logits, target.target, target.mask)
        metrics["loss_mix"] = loss_mix.detach()
        return (1 - mixed.weight) * loss_c + mixed.weight * loss_mix, labels, metrics

    # -- after the optimizer step ----------------------------------------------------------------

    def momentum_at(self, step: int, total_steps: int) -> float:
        """EMA momentum at ``step`` of ``total_steps``."""
        return cosine_momentum(step, total_steps, self.momentum, self.final_momentum)

    def step_parts(self) -> list[object]:
        """The parts with an ``after_optimizer_step`` hook: the target builders."""
        parts: list[object] = [self.targets]
        if self.mixed is not None:
            parts.append(self.mixed.labels)
        return parts

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the momentum encoder, the parts' hooks, then the step's blocks into the memory."""
        self.target_encoder.update(self.online, self.momentum_at(step, total_steps))
        blocks, self._pending = self._pending, []
        for part in self.step_parts():
            hook = getattr(part, "after_optimizer_step", None)
            if hook is not None:
                hook(step, total_steps, blocks)
        for columns in blocks:
            self.memory.enqueue(*columns.block_entries())


def _output_dim(head: nn.Module, in_dim: int) -> int:
    """The output width of ``head`` on ``in_dim`` inputs (one zero row, in eval mode)."""
    was_training = head.training
    weight = next(head.parameters(), None)
    device = weight.device if weight is not None else None
    dim = head.eval()(torch.zeros(1, in_dim, device=device)).shape[-1]
    head.train(was_training)
    return dim


#: State of checkpoints written before the one-step redesign: old key → today's key.
RENAMED_STATE = {"queue.keys": "memory.embeddings", "queue.embeddings": "memory.embeddings", "queue.ids": "memory.ids",
                 "queue.views": "memory.views", "queue.pointer": "memory.pointer", "queue.filled": "memory.filled",
                 "target_builder.mu": "mixed.labels.mu"}


def upgrade_state_dict(state: dict[str, Tensor], prefix: str, *args: object) -> None:
    """Renames, in place, the state of a method saved before the one-step redesign (its
    queue or view memory, SANE's ``µ``): :data:`RENAMED_STATE`. A queue of keys had no view
    indices: filled slots are view 0."""
    for old, new in RENAMED_STATE.items():
        if prefix + old in state and prefix + new not in state:
            state[prefix + new] = state.pop(prefix + old)
    ids, views = prefix + "memory.ids", prefix + "memory.views"
    if ids in state and views not in state:
        state[views] = torch.where(state[ids] == EMPTY_ID, NO_COLUMN, 0)
