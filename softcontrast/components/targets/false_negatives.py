"""FNC: False Negative Cancellation targets (Huynh et al., WACV 2022).

Row ``i`` has ``S`` momentum support embeddings ``u_is`` (its key is one of them).
Each queue column ``j`` gets ``score_ij = agg_s(u_is · C_j)`` (cosine, no
temperature; ``agg`` is ``max`` or ``mean``). The detected false negatives ``F_i``
are the ``top_k`` unmasked queue columns by score whose score exceeds
``threshold``. Then either

* ``eliminate``: ``mask ∪= F_i`` and the target stays ``e_pos``, or
* ``attract``: the target is uniform over ``{pos} ∪ F_i``.

With no detected false negative both are exactly InfoNCE. The search is a
:class:`~softcontrast.components.neighbors.NeighborSearch` call, exact for both
aggregations: the top-k of a max over views lies in the union of each view's
top-k, and the mean of similarities is the similarity to the mean embedding. With
the exact ``torch`` backend every column is scored and masked ones are dropped
before the top-k, so the step never reads the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.columns import LogitColumns
from softcontrast.components.neighbors import Backend, NeighborSearch, auto_backend
from softcontrast.components.precision import full_precision, similarities
from softcontrast.components.queue import EMPTY_ID
from softcontrast.components.targets.base import Targets

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
    check_choice("aggregation", aggregation, AGGREGATIONS)
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
    check_choice("aggregation", aggregation, AGGREGATIONS)
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


def queue_false_negatives(
    columns: LogitColumns, support: Tensor, search: NeighborSearch, top_k: int, threshold: float, aggregation: str
) -> Tensor:
    """``F_i`` over the queue columns, searching the queue itself.

    With the ``torch`` backend every queue column is scored and the masked ones are
    excluded before the top-k (no host read, see :func:`searches_exactly_on_device`).
    A FAISS search indexes the filled slots only and asks for ``top_k`` plus the most
    masked filled queue columns of any row (one host read), so the ``top_k`` best
    unmasked columns are always among the candidates.

    Returns:
        ``B×N`` flags of the detected false-negative columns.
    """
    queue, queue_ids, masked = queue_part(columns)
    if searches_exactly_on_device(search, queue.shape[0], queue.device):
        scores = aggregated_scores(support, queue, aggregation, search.chunk_size)
        chosen = select_false_negatives(scores, masked, top_k, threshold)
        return torch.cat([torch.zeros_like(columns.mask[:, : columns.queue_start]), chosen], dim=1)
    empty = queue_ids == EMPTY_ID
    search.reset()
    search.add(queue, torch.arange(queue.shape[0], device=queue.device).masked_fill(empty, EMPTY_ID))
    extra = int((masked & ~empty).sum(dim=1).max()) if masked.numel() else 0
    scores, slots = aggregated_neighbors(search, support, top_k + extra, aggregation)
    blocked = (slots < 0) | masked.gather(1, slots.clamp(min=0))
    chosen = select_false_negatives(scores, blocked, top_k, threshold)
    return _flag_columns(columns, torch.where(chosen, slots, queue.shape[0]))


def bank_false_negatives(
    columns: LogitColumns, support: Tensor, bank: EmbeddingBank, top_k: int, threshold: float, aggregation: str
) -> Tensor:
    """``F_i`` from a dataset-wide bank: the ``top_k`` images (other than the row's
    own) scoring above ``threshold`` against the bank, and every unmasked queue
    column that holds one of them.

    Returns:
        ``B×N`` flags of the detected false-negative columns.
    """
    scores, ids = aggregated_neighbors(bank, support, top_k + 1, aggregation)
    blocked = (ids < 0) | (ids == columns.row_ids[:, None])
    chosen = select_false_negatives(scores, blocked, top_k, threshold)
    found = ids.masked_fill(~chosen, NO_ID)
    _, queue_ids, masked = queue_part(columns)
    holds = (queue_ids[None, :, None] == found[:, None, :]).any(dim=-1) & ~masked
    return torch.cat([torch.zeros_like(columns.mask[:, : columns.queue_start]), holds], dim=1)


def queue_part(columns: LogitColumns) -> tuple[Tensor, Tensor, Tensor]:
    """The queue's keys (``K×D``), sample ids (``K``) and mask (``B×K``) in ``columns``."""
    shared_start = columns.queue_start - (columns.num_columns - columns.shared.shape[0])
    return (columns.shared[shared_start:], columns.column_ids[shared_start:],
            columns.mask[:, columns.queue_start :])


def _flag_columns(columns: LogitColumns, slots: Tensor) -> Tensor:
    """``B×N`` flags of queue ``slots`` (``B×M``; the value ``K`` means none)."""
    batch, capacity = columns.mask.shape[0], columns.num_columns - columns.queue_start
    flags = torch.zeros(batch, capacity + 1, dtype=torch.bool, device=slots.device)
    flags.scatter_(1, slots, True)
    return torch.cat([torch.zeros_like(columns.mask[:, : columns.queue_start]), flags[:, :capacity]], dim=1)


def cancel_false_negatives(positive_one_hot: Tensor, mask: Tensor, false_negatives: Tensor, strategy: str) -> Targets:
    """The FNC target and mask.

    Args:
        positive_one_hot: ``B×N`` ``e_pos``.
        mask: ``B×N`` excluded columns.
        false_negatives: ``B×N`` detected false negatives ``F_i`` (masked ones ignored).
        strategy: ``eliminate`` (``mask ∪= F_i``, target ``e_pos``) or ``attract``
            (target uniform over ``{pos} ∪ F_i``).
    """
    check_choice("strategy", strategy, STRATEGIES)
    found = false_negatives & ~mask & ~positive_one_hot.bool()
    if strategy == "eliminate":
        return Targets(positive_one_hot, mask | found)
    target = positive_one_hot + found.to(positive_one_hot.dtype)
    return Targets(target / target.sum(dim=1, keepdim=True), mask)


def detected_false_negatives(columns: LogitColumns, targets: Targets) -> Tensor:
    """Per row, how many columns FNC cancelled: newly masked, or non-positive with target mass."""
    added_mask = targets.mask & ~columns.mask
    attracted = (targets.target > 0) & ~columns.positive_one_hot().bool()
    return (added_mask | attracted).sum(dim=1)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a ``ValueError`` naming the choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"FNC {name} must be one of {', '.join(choices)}; got {value!r}")


def check_detection_settings(top_k: int, threshold: float, strategy: str, aggregation: str, backend: Backend) -> None:
    """Raises a ``ValueError`` naming the flag when a false-negative detection setting is out of range."""
    if top_k < 1:
        raise ValueError(f"FNC top_k (--top-k) must be >= 1, got {top_k}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"FNC threshold (--threshold) is a cosine and must lie in [-1, 1], got {threshold}")
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    NeighborSearch(backend)  # validates the backend name


@dataclass(frozen=True)
class FalseNegativeCancellation:
    """FNC target builder.

    ``F_i = top_k {j ∈ queue, unmasked : agg_s(u_is·C_j) > threshold}``; eliminate:
    ``mask ∪= F_i``, target ``e_pos``; attract: target uniform over ``{pos} ∪ F_i``.

    Support embeddings come as ``B×S×D`` (the key first); without them the key
    alone is the support set (``S = 1``). They are L2-normalised here.

    Args:
        top_k: at most this many false negatives per row (>= 1; paper: 10).
        threshold: a false negative's score must exceed this cosine, in
            ``[-1, 1]`` (paper: 0.7).
        strategy: ``attract`` (paper's best) or ``eliminate``.
        aggregation: ``max`` or ``mean`` over the support views.
        backend: :class:`NeighborSearch` backend for the queue search (its index,
            ``search``, is made once and refilled every step).
        bank: search this dataset-wide :class:`EmbeddingBank` instead of the
            queue; queue columns holding a found image are its false negatives.
            The paper searches the negatives of the batch; the bank is an option.
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

    def false_negatives(self, columns: LogitColumns, support: Tensor | None = None) -> Tensor:
        """``B×N`` flags of the detected false negatives ``F_i``."""
        with torch.no_grad():
            support = columns.keys[:, None] if support is None else support
            support = F.normalize(support.detach().float(), dim=-1)
            if self.bank is not None:
                return bank_false_negatives(columns, support, self.bank, self.top_k, self.threshold, self.aggregation)
            return queue_false_negatives(columns, support, self.search, self.top_k, self.threshold, self.aggregation)

    def __call__(self, columns: LogitColumns, support: Tensor | None = None) -> Targets:
        """Builds the FNC target of every row from ``B×S×D`` support embeddings."""
        found = self.false_negatives(columns, support)
        return cancel_false_negatives(columns.positive_one_hot(), columns.mask, found, self.strategy)
