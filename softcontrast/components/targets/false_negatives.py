"""FNC: False Negative Cancellation (Huynh et al., WACV 2022): detection and targets.

Every image ``i`` has detection embeddings ``ẑ_is`` (no gradient): its momentum
column views (FNC as published: all ``V`` views; FNC on MoCo: the key), then any
extra detection views. Each column ``m`` the image's rows may see gets
``score_im = agg_s(ẑ_is · c_m)`` (cosine, no temperature; ``agg`` is ``max`` or
``mean``), its own entries and empty slots excluded; ``F_i`` is the ``top_k`` columns
by score whose score exceeds ``threshold``, shared by all the image's anchor rows.

* attract: the target is uniform over ``P_i ∪ F_i`` (``P_i`` the row's positives);
* eliminate: ``mask ∪= F_i`` and the target is uniform over ``P_i``.

With no detected false negative both are the rows' InfoNCE target. The search is a
:class:`~softcontrast.components.neighbors.NeighborSearch` over the columns, exact
for both aggregations (the top-k of a max over views lies in the union of each view's
top-k; the mean of similarities is the similarity to the mean embedding), or a
dataset-wide :class:`~softcontrast.components.bank.EmbeddingBank`. With the exact
``torch`` backend every column is scored and blocked ones are dropped before a
fixed-width top-k, so the step never reads the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.columns import Columns, Rows
from softcontrast.components.memory import EMPTY_ID
from softcontrast.components.neighbors import (
    BACKENDS,
    Backend,
    NeighborSearch,
    auto_backend,
)
from softcontrast.components.precision import full_precision, similarities
from softcontrast.components.targets.base import Targets
from softcontrast.settings import SettingError, check_choice

STRATEGIES = ("eliminate", "attract")
AGGREGATIONS = ("max", "mean")
NO_ID = -2  # never a sample id nor the empty-slot id


def max_per_id(scores: Tensor, ids: Tensor) -> Tensor:
    """Per row, keeps each id's largest score and sets its repeats to ``-inf``.

    Args:
        scores: ``B×M`` candidate scores.
        ids: ``B×M`` candidate ids (repeats allowed).

    Returns:
        ``B×M`` scores where each id of a row keeps one entry, its maximum.
    """
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    ids_by_score = ids.gather(1, by_score)
    by_id = ids_by_score.argsort(dim=1, stable=True)
    grouped = ids_by_score.gather(1, by_id)
    repeat_grouped = torch.zeros_like(grouped, dtype=torch.bool)
    repeat_grouped[:, 1:] = grouped[:, 1:] == grouped[:, :-1]
    repeat_by_score = torch.zeros_like(repeat_grouped).scatter(1, by_id, repeat_grouped)
    repeat = torch.zeros_like(repeat_by_score).scatter(1, by_score, repeat_by_score)
    return scores.masked_fill(repeat, float("-inf"))


def aggregated_neighbors(search: NeighborSearch | EmbeddingBank, support: Tensor, k: int, aggregation: str) -> tuple[Tensor, Tensor]:
    """The ``k`` indexed entries of largest ``agg_s(u_is · x)`` for every row, exactly.

    ``max``: each view's top-k, their union, each candidate's maximum over the
    views that found it, then the top-k (a candidate of the true top-k is in the
    top-k of its best view, where its found maximum is its true maximum).
    ``mean``: one search with the mean embedding (``mean_s u_s·x = ū·x``).

    Args:
        search: the index (anything with ``search(queries, k)``).
        support: ``B×S×D`` unit support embeddings.
        k: entries per row.
        aggregation: ``max`` or ``mean``.

    Returns:
        ``(scores, ids)``, ``B×k'`` with ``k' <= k``, best first; missing entries
        have score ``-inf``.
    """
    check_choice("aggregation", aggregation, AGGREGATIONS, "FNC")
    rows, views, dim = support.shape
    if aggregation == "mean":
        return search.search(support.mean(dim=1), k)
    scores, ids = search.search(support.reshape(rows * views, dim), k)
    found = scores.shape[1]
    scores, ids = scores.reshape(rows, -1), ids.reshape(rows, -1)
    top = max_per_id(scores, ids).topk(found, dim=1)
    return top.values, ids.gather(1, top.indices).masked_fill(top.values == float("-inf"), -1)


def aggregated_scores(support: Tensor, vectors: Tensor, aggregation: str, chunk_size: int = 65_536) -> Tensor:
    """``agg_s(u_is · x̂_m)`` of every row against every vector, all computed (``B×M``).

    Args:
        support: ``B×S×D`` unit support embeddings.
        vectors: ``M×D`` vectors, L2-normalised here (as :class:`NeighborSearch` stores them).
        aggregation: ``max`` or ``mean`` over the ``S`` support views.
        chunk_size: vectors scored at once (``max`` holds ``B·S × chunk_size`` scores).
    """
    check_choice("aggregation", aggregation, AGGREGATIONS, "FNC")
    vectors = F.normalize(full_precision(vectors.detach()), dim=-1)
    if aggregation == "mean":
        return similarities(support.mean(dim=1), vectors)
    rows, views, dim = support.shape
    flat = support.reshape(rows * views, dim)
    return torch.cat([similarities(flat, chunk).reshape(rows, views, -1).amax(dim=1)
                      for chunk in vectors.split(chunk_size)], dim=1)


def searches_exactly_on_device(search: NeighborSearch, size: int, device: torch.device) -> bool:
    """Whether ``search`` resolves to the exact ``torch`` backend for an index of ``size`` vectors on ``device``.

    Then detection scores every column with :func:`aggregated_scores` and excludes
    the blocked ones before the ``top_k`` (a fixed width: no host read). A FAISS
    index is searched for ``top_k`` plus the most blocked columns of any row instead
    (one host read; FAISS reads the host anyway).
    """
    backend = search.backend
    if backend == "auto":
        backend = auto_backend(size, search.device or device, search.searches_per_build)
    return backend == "torch"


def select_false_negatives(scores: Tensor, blocked: Tensor, top_k: int, threshold: float) -> Tensor:
    """Flags the ``top_k`` unblocked candidates of each row whose score exceeds ``threshold``.

    Scores are cosines: rounding can push one past 1, so they are clamped to 1
    (``threshold = 1`` then chooses nothing, as for exact cosines).

    Args:
        scores: ``B×M`` aggregated candidate scores.
        blocked: ``B×M`` candidates that may not be chosen.
        top_k: at most this many per row.
        threshold: chosen scores are ``> threshold``.

    Returns:
        ``B×M`` boolean flags of the chosen candidates.
    """
    scores = scores.clamp(max=1.0).masked_fill(blocked, float("-inf"))
    top = scores.topk(min(top_k, scores.shape[1]), dim=1)
    return torch.zeros_like(blocked).scatter(1, top.indices, top.values > threshold)


def blocked_columns(columns: Columns, ids: Tensor) -> Tensor:
    """``B×M`` shared columns image ``i`` may not detect: its own entries (block and memory) and empty slots."""
    return (columns.ids[None, :] == ids[:, None]) | (columns.ids == EMPTY_ID)[None, :]


def _with_lead(columns: Columns, shared_flags: Tensor) -> Tensor:
    """``B×N`` flags from flags over the shared columns (the own-key column is never detected)."""
    if columns.lead == 0:
        return shared_flags
    return torch.cat([torch.zeros_like(shared_flags[:, : columns.lead]), shared_flags], dim=1)


def column_false_negatives(
    columns: Columns, detectors: Tensor, ids: Tensor, search: NeighborSearch, top_k: int, threshold: float,
    aggregation: str,
) -> Tensor:
    """``F_i`` as ``B×N`` column flags, searching the shared columns themselves.

    With the ``torch`` backend every column is scored and the blocked ones are
    excluded before the top-k (no host read, see :func:`searches_exactly_on_device`).
    A FAISS search indexes the filled columns only and asks for ``top_k`` plus the
    most blocked filled columns of any image (one host read), so the ``top_k`` best
    unblocked columns are always among the candidates.

    Args:
        columns: the step's columns.
        detectors: ``B×S×D`` unit detection embeddings of the local images.
        ids: ``B`` sample ids of the local images.
        search: the index (emptied and filled here with the columns).
        top_k: at most this many columns per image.
        threshold: detected scores are ``> threshold``.
        aggregation: ``max`` or ``mean`` over the ``S`` detection embeddings.
    """
    candidates, count = columns.shared, columns.shared.shape[0]
    blocked = blocked_columns(columns, ids)
    if searches_exactly_on_device(search, count, ids.device):
        scores = aggregated_scores(detectors, candidates, aggregation, search.chunk_size)
        return _with_lead(columns, select_false_negatives(scores, blocked, top_k, threshold))
    empty = columns.ids == EMPTY_ID
    search.reset()
    search.add(candidates, torch.arange(count, device=ids.device).masked_fill(empty, EMPTY_ID))
    extra = int((blocked & ~empty).sum(dim=1).max()) if blocked.numel() else 0
    scores, slots = aggregated_neighbors(search, detectors, top_k + extra, aggregation)
    chosen = select_false_negatives(scores, (slots < 0) | blocked.gather(1, slots.clamp(min=0)), top_k, threshold)
    flags = torch.zeros(ids.shape[0], count + 1, dtype=torch.bool, device=ids.device)
    return _with_lead(columns, flags.scatter_(1, torch.where(chosen, slots, count), True)[:, :-1])


def bank_false_negatives(
    columns: Columns, detectors: Tensor, ids: Tensor, bank: EmbeddingBank, top_k: int, threshold: float,
    aggregation: str,
) -> Tensor:
    """``F_i`` from a dataset-wide bank: the ``top_k`` other *images* scoring above
    ``threshold``, flagged on every unblocked column that holds one of them (``B×N``)."""
    scores, found = aggregated_neighbors(bank, detectors, top_k + 1, aggregation)
    chosen = select_false_negatives(scores, (found < 0) | (found == ids[:, None]), top_k, threshold)
    found = found.masked_fill(~chosen, NO_ID)
    holds = (columns.ids[None, :, None] == found[:, None, :]).any(dim=-1)
    return _with_lead(columns, holds & ~blocked_columns(columns, ids))


def cancel_false_negatives(rows: Rows, false_negatives: Tensor, strategy: str,
                           dtype: torch.dtype = torch.float32) -> Targets:
    """The FNC target and mask of every anchor row.

    Args:
        rows: positives ``P`` and mask of the rows (``R×N``).
        false_negatives: ``R×N`` flags of ``F`` (each row gets its image's set; masked
            and positive columns are ignored).
        strategy: ``attract`` (target uniform over ``P ∪ F``) or ``eliminate``
            (target uniform over ``P``, ``mask ∪= F``).
        dtype: dtype of the target.
    """
    check_choice("strategy", strategy, STRATEGIES, "FNC")
    found = false_negatives & ~rows.mask & ~rows.positive
    members = rows.positive | found if strategy == "attract" else rows.positive
    mask = rows.mask if strategy == "attract" else rows.mask | found
    target = members.to(dtype)
    return Targets(target / target.sum(dim=1, keepdim=True).clamp(min=1), mask, false_negatives)


def check_detection_settings(top_k: int, threshold: float, strategy: str, aggregation: str, backend: Backend) -> None:
    """Raises a :class:`~softcontrast.settings.SettingError` naming the setting that is out of range."""
    if top_k < 1:
        raise SettingError("top_k", f"FNC top_k must be >= 1, got {top_k}")
    if not -1.0 <= threshold <= 1.0:
        raise SettingError("threshold", f"FNC threshold is a cosine and must lie in [-1, 1], got {threshold}")
    check_choice("strategy", strategy, STRATEGIES, "FNC")
    check_choice("aggregation", aggregation, AGGREGATIONS, "FNC")
    check_choice("search_backend", backend, BACKENDS, "FNC")


@dataclass(frozen=True)
class FalseNegativeCancellation:
    """FNC target builder: detection, then cancellation.

    ``F_i = top_k {m : agg_s(ẑ_is · c_m) > threshold}`` over the columns the image's
    rows may see (its own entries and empty slots excluded), ``ẑ_i`` the rows'
    detection embeddings (``B×S×D``, L2-normalised here); ``F_i`` is shared by all the
    image's anchor rows. Attract: target uniform over ``P_i ∪ F_i``; eliminate: target
    uniform over ``P_i``, ``mask ∪= F_i``. With no detected false negative both are the
    rows' InfoNCE target. The detected flags ride along as ``Targets.found``.

    Args:
        top_k: at most this many detected columns per image (>= 1; paper 10).
        threshold: a detected score must exceed this cosine, in ``[-1, 1]`` (paper 0.7).
        strategy: ``attract`` (paper's best) or ``eliminate``.
        aggregation: ``max`` (paper) or ``mean`` over the detection embeddings.
        backend: :class:`NeighborSearch` backend of the search over the columns (its
            index, ``search``, is made once and refilled every step).
        bank: search this dataset-wide :class:`EmbeddingBank` instead (refreshed after
            each step from every image's first column view); ``top_k`` then counts
            images and every column holding a found image is in ``F_i``.
    """

    top_k: int
    threshold: float
    strategy: str
    aggregation: str
    backend: Backend
    bank: EmbeddingBank | None = None
    search: NeighborSearch = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_detection_settings(self.top_k, self.threshold, self.strategy, self.aggregation, self.backend)
        object.__setattr__(self, "search", NeighborSearch(self.backend))

    @torch.no_grad()
    def false_negatives(self, columns: Columns, rows: Rows) -> Tensor:
        """``B×N`` flags of ``F_i`` for the local images."""
        if rows.detectors is None:
            raise ValueError("FNC needs detection embeddings for its rows (Rows.detectors)")
        detectors = F.normalize(rows.detectors.detach().float(), dim=-1)
        ids = rows.ids[rows.first_of_each_image]
        if self.bank is not None:
            return bank_false_negatives(columns, detectors, ids, self.bank, self.top_k, self.threshold,
                                        self.aggregation)
        return column_false_negatives(columns, detectors, ids, self.search, self.top_k, self.threshold,
                                      self.aggregation)

    def __call__(self, columns: Columns, rows: Rows) -> Targets:
        """Targets of the anchor rows; ``Targets.found`` holds the ``B×N`` detected flags."""
        found = self.false_negatives(columns, rows)
        dtype = torch.promote_types(columns.shared.dtype, torch.float32)
        targets = cancel_false_negatives(rows, rows.per_row(found), self.strategy, dtype)
        return Targets(targets.target, targets.mask, found)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int, blocks: Sequence[Columns] = ()) -> None:
        """Refreshes the bank (if any) from the first column view of every image of the step's blocks."""
        if self.bank is None:
            return
        for columns in blocks:
            embeddings, ids, _ = columns.block_entries()
            self.bank.update(embeddings[:: columns.num_views], ids[:: columns.num_views])
