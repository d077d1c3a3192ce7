"""FNC as published (Huynh et al., WACV 2022): false negatives among view entries.

Every image ``i`` has ``V`` views; ``z_ia`` (online) are the anchors, ``ẑ_iv``
(momentum) the detection embeddings, ``c_m`` the :class:`ViewColumns`.

* Detection (no gradient): ``score_im = agg_v(ẑ_iv · c_m)`` (``agg`` = max, or mean),
  the image's own columns excluded; ``F_i`` = the ``top_k`` columns (view entries)
  by score whose score exceeds ``threshold``. ``F_i`` is shared by all ``V`` anchors.
* ``P_i``: the other ``V − 1`` views of image ``i`` in the current block.
* attract: ``L_ia = LSE_{m≠a} s_am − (Σ_{p∈P_i} s_ap + Σ_{f∈F_i} s_af)/(|P_i| + |F_i|)``.
* eliminate: ``L_ia = LSE_{m≠a, m∉F_i} s_am − mean_{p∈P_i} s_ap``.
* ``L = (scale/V)·Σ_a mean_i L_ia`` (paper: scale 2; 1 is the plain mean).

``s = z_ia·c/T``. The search is a
:class:`~softcontrast.components.neighbors.NeighborSearch` over the columns (exact for
both aggregations), or a dataset-wide :class:`~softcontrast.components.bank.EmbeddingBank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.multiview import ViewColumns, ViewLayout
from softcontrast.components.neighbors import Backend, NeighborSearch
from softcontrast.components.queue import EMPTY_ID
from softcontrast.components.targets.base import Targets
from softcontrast.components.targets.false_negatives import (
    NO_ID,
    STRATEGIES,
    aggregated_neighbors,
    aggregated_scores,
    check_choice,
    check_detection_settings,
    searches_exactly_on_device,
    select_false_negatives,
)


def blocked_columns(columns: ViewColumns, ids: Tensor) -> Tensor:
    """``B×N`` columns image ``i`` may not detect: its own views (block and memory) and empty slots."""
    return (columns.ids[None, :] == ids[:, None]) | (columns.ids == EMPTY_ID)[None, :]


def view_false_negatives(
    columns: ViewColumns, momentum: Tensor, ids: Tensor, search: NeighborSearch, top_k: int, threshold: float,
    aggregation: str,
) -> Tensor:
    """``F_i`` as ``B×N`` column flags, searching the columns themselves.

    With the ``torch`` backend every column is scored and the blocked ones are
    excluded before the top-k (no host read, see :func:`searches_exactly_on_device`).
    A FAISS search indexes the filled columns only and asks for ``top_k`` plus the
    most blocked filled columns of any image (one host read), so the ``top_k`` best
    unblocked columns are always among the candidates.

    Args:
        columns: the step's view columns.
        momentum: ``B×V×D`` unit momentum embeddings ``ẑ_iv`` of the local images.
        ids: ``B`` sample ids of the local images.
        search: the index (emptied and filled here with the columns).
        top_k: at most this many view entries per image.
        threshold: detected scores are ``> threshold``.
        aggregation: ``max`` or ``mean`` over the ``V`` views.
    """
    blocked = blocked_columns(columns, ids)
    if searches_exactly_on_device(search, columns.num_columns, ids.device):
        scores = aggregated_scores(momentum, columns.embeddings, aggregation, search.chunk_size)
        return select_false_negatives(scores, blocked, top_k, threshold)
    empty = columns.ids == EMPTY_ID
    search.reset()
    search.add(columns.embeddings, torch.arange(columns.num_columns, device=ids.device).masked_fill(empty, EMPTY_ID))
    extra = int((blocked & ~empty).sum(dim=1).max())
    scores, slots = aggregated_neighbors(search, momentum, top_k + extra, aggregation)
    chosen = select_false_negatives(scores, (slots < 0) | blocked.gather(1, slots.clamp(min=0)), top_k, threshold)
    flags = torch.zeros(ids.shape[0], columns.num_columns + 1, dtype=torch.bool, device=ids.device)
    return flags.scatter_(1, torch.where(chosen, slots, columns.num_columns), True)[:, :-1]


def bank_view_false_negatives(
    columns: ViewColumns, momentum: Tensor, ids: Tensor, bank: EmbeddingBank, top_k: int, threshold: float,
    aggregation: str,
) -> Tensor:
    """``F_i`` from a dataset-wide bank: the ``top_k`` other *images* scoring above
    ``threshold``, flagged on every column that holds one of them (``B×N``)."""
    scores, found = aggregated_neighbors(bank, momentum, top_k + 1, aggregation)
    chosen = select_false_negatives(scores, (found < 0) | (found == ids[:, None]), top_k, threshold)
    found = found.masked_fill(~chosen, NO_ID)
    holds = (columns.ids[None, :, None] == found[:, None, :]).any(dim=-1)
    return holds & ~blocked_columns(columns, ids)


def view_fnc_targets(layout: ViewLayout, false_negatives: Tensor, strategy: str,
                     dtype: torch.dtype = torch.float32) -> Targets:
    """Target and mask of every anchor row.

    Args:
        layout: positives ``P`` and mask of the rows (``R×N``).
        false_negatives: ``R×N`` flags of ``F`` (each row gets its image's set).
        strategy: ``attract`` (target uniform over ``P ∪ F``) or ``eliminate``
            (target uniform over ``P``, ``mask ∪= F``).
        dtype: dtype of the target.
    """
    check_choice("strategy", strategy, STRATEGIES)
    found = false_negatives & ~layout.mask & ~layout.positive
    members = layout.positive | found if strategy == "attract" else layout.positive
    mask = layout.mask if strategy == "attract" else layout.mask | found
    target = members.to(dtype)
    return Targets(target / target.sum(dim=1, keepdim=True).clamp(min=1), mask)


def view_fnc_loss(anchors: Tensor, columns: ViewColumns, targets: Targets, temperature: float,
                  scale: float = 2.0) -> Tensor:
    """``(scale/V)·Σ_a mean_i L_ia`` = ``scale ×`` the mean over anchor rows of the
    soft cross-entropy of ``z·cᵀ/T`` against the target."""
    logits = columns.scores(anchors) / temperature
    return scale * soft_cross_entropy(logits, targets.target, targets.mask)


@dataclass(frozen=True)
class ViewFalseNegatives:
    """The published FNC detection and targets, over :class:`ViewColumns`.

    Args:
        top_k: at most this many view entries per image (>= 1; paper 10).
        threshold: a detected score must exceed this cosine, in ``[-1, 1]`` (paper 0.7).
        strategy: ``attract`` or ``eliminate``.
        aggregation: ``max`` (paper) or ``mean`` over the image's ``V`` momentum views.
        backend: :class:`NeighborSearch` backend of the search over the columns (its
            index, ``search``, is made once and refilled every step).
        bank: search this dataset-wide bank instead; then ``top_k`` counts images and
            every column holding a found image is in ``F_i``.
    """

    top_k: int = 10
    threshold: float = 0.7
    strategy: str = "attract"
    aggregation: str = "max"
    backend: Backend = "torch"
    bank: EmbeddingBank | None = None
    search: NeighborSearch = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_detection_settings(self.top_k, self.threshold, self.strategy, self.aggregation, self.backend)
        object.__setattr__(self, "search", NeighborSearch(self.backend))

    @torch.no_grad()
    def false_negatives(self, columns: ViewColumns, momentum: Tensor, ids: Tensor) -> Tensor:
        """``B×N`` flags of ``F_i`` for the local images (``momentum``: ``B×V×D``)."""
        momentum = F.normalize(momentum.detach().float(), dim=-1)
        if self.bank is not None:
            return bank_view_false_negatives(columns, momentum, ids, self.bank, self.top_k, self.threshold,
                                             self.aggregation)
        return view_false_negatives(columns, momentum, ids, self.search, self.top_k, self.threshold,
                                    self.aggregation)

    def __call__(self, columns: ViewColumns, layout: ViewLayout, found: Tensor) -> Targets:
        """Targets of the anchor rows; ``found`` is ``R×N`` (each row its image's ``F_i``)."""
        dtype = torch.promote_types(columns.embeddings.dtype, torch.float32)
        return view_fnc_targets(layout, found, self.strategy, dtype)
