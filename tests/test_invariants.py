"""Label-refinement invariants, checked for every target builder and every mixer.

Every test draws a :class:`~strategies.Case`: a step (unit embeddings with duplicates,
near-duplicates and antipodes; a real queue at any fill level; ids that collide),
a builder (InfoNCE, SCE, SANE, FNC eliminate or attract) with legal hyperparameters,
and a mixer (none, momentum mixup or input mixup) whose parameters mix the targets.
docs/invariants.md lists the invariants with the test of each.

SANE's own label properties (the weights α, β, eq. 5 by hand, the µ schedule) live
in tests/test_sane.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import masked_log_softmax, soft_cross_entropy
from softcontrast.components.mixers import MixParams, MomentumMixup
from softcontrast.components.queue import MemoryQueue
from softcontrast.components.targets import (
    FalseNegativeCancellation,
    InfoNCE,
    Targets,
)
from softcontrast.components.targets.false_negatives import queue_part
from strategies import (
    EXTREME_TEMPERATURES,
    FILL_LEVELS,
    Case,
    Step,
    builders,
    cases,
    degenerate_builders,
    temperatures,
)


# --- helpers -------------------------------------------------------------------------


def loss_and_grad(columns: LogitColumns, targets: Targets, queries: torch.Tensor, tau: float,
                  reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Soft cross-entropy of ``q·Cᵀ/τ`` against the targets, and its gradient w.r.t. ``q``."""
    queries = queries.detach().clone().requires_grad_(True)
    loss = soft_cross_entropy(columns.scores(queries) / tau, targets.target, targets.mask, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), queries)
    return loss.detach(), grad


def column_vectors(columns: LogitColumns) -> torch.Tensor:
    """``B×N×D``: the embedding behind every column of every row."""
    shared = columns.shared.float()[None].expand(columns.keys.shape[0], -1, -1)
    if columns.in_batch:
        return shared
    return torch.cat([columns.keys.float()[:, None], shared], dim=1)


def column_ids(columns: LogitColumns) -> torch.Tensor:
    """``B×N``: the sample id behind every column of every row (``-1`` = empty slot)."""
    shared = columns.column_ids[None].expand(columns.keys.shape[0], -1)
    if columns.in_batch:
        return shared
    return torch.cat([columns.row_ids[:, None], shared], dim=1)


def same_vector(columns: LogitColumns) -> torch.Tensor:
    """``B×N×N``: columns ``j`` and ``j'`` of a row hold the identical embedding."""
    vectors = column_vectors(columns)
    return (vectors[:, :, None, :] == vectors[:, None, :, :]).all(dim=-1)


def per_identical_embedding(values: torch.Tensor, columns: LogitColumns) -> torch.Tensor:
    """``Σ`` of ``values`` over the columns holding the same embedding as each column.

    Columns with one embedding are indistinguishable to every builder and to the loss
    (same scores, same logits), so ``top-k`` may take either: invariants compare
    these sums, which do not depend on the choice.
    """
    return torch.einsum("bj,bjk->bk", values.double(), same_vector(columns).double())


def selection_scores(case: Case, columns: LogitColumns) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """What a selecting builder ranks (``B×N`` scores, eligible flags, tie tolerance), else None."""
    builder = case.builder
    positive = columns.positive_one_hot().bool()
    if isinstance(builder, FalseNegativeCancellation):
        support = F.normalize(case.step.support.float(), dim=-1)
        per_view = torch.einsum("bsd,kd->bsk", support, F.normalize(queue_part(columns)[0].float(), dim=-1))
        queue_scores = per_view.amax(dim=1) if builder.aggregation == "max" else per_view.mean(dim=1)
        scores = torch.cat([torch.full_like(columns.mask[:, : columns.queue_start], -2.0, dtype=torch.float),
                            queue_scores], dim=1)
        eligible = ~columns.mask & ~positive
        eligible[:, : columns.queue_start] = False
        return scores, eligible, 1e-6
    return None


def has_selection_tie(case: Case, columns: LogitColumns) -> bool:
    """Whether FNC's top-k/threshold faces two *different* embeddings with
    (numerically) equal scores, or an FNC score at the threshold: then which one is
    chosen depends on the column order, so order invariants do not apply."""
    found = selection_scores(case, columns)
    if found is None:
        return False
    scores, eligible, tolerance = found
    close = (scores[:, :, None] - scores[:, None, :]).abs() <= tolerance
    pairs = close & ~same_vector(columns) & eligible[:, :, None] & eligible[:, None, :]
    if pairs.any():
        return True
    if isinstance(case.builder, FalseNegativeCancellation):
        return bool(((scores - case.builder.threshold).abs() <= tolerance)[eligible].any())
    return False


def permuted_queue(queue: MemoryQueue, order: torch.Tensor) -> MemoryQueue:
    """A queue whose slot ``s`` holds slot ``order[s]`` of ``queue`` (empty slots included)."""
    permuted = MemoryQueue(queue.capacity, queue.keys.shape[1]).to(queue.keys.dtype)
    permuted.enqueue(queue.keys[order], queue.ids[order])
    return permuted


def weighted_sources(params: MixParams | None, batch: int) -> list[list[int]]:
    """Per mixed row, the rows whose targets carry weight in it."""
    if params is None:
        return [[row] for row in range(batch)]
    sources = []
    for row, (theta, partner) in enumerate(zip(params.theta.tolist(), params.partner.tolist())):
        sources.append(([row] if theta > 0 else []) + ([partner] if theta < 1 else []))
    return sources


# --- rows are distributions; masked columns get nothing ------------------------------


@given(case=cases(), tau=temperatures)
def test_targets_are_distributions_and_masked_columns_get_no_target_and_no_probability(case, tau):
    """Target rows are ≥ 0 and sum to 1; masked columns carry zero target, and the
    masked softmax of any logits gives them zero probability while the row's
    probabilities still sum to 1."""
    columns = case.step.columns()
    targets = case.targets()
    batch = columns.keys.shape[0]
    assert targets.target.shape == targets.mask.shape == columns.mask.shape
    assert (targets.target >= 0).all()
    torch.testing.assert_close(targets.target.sum(dim=1), torch.ones(batch, dtype=targets.target.dtype))
    assert (targets.target[targets.mask] == 0).all()

    probabilities = masked_log_softmax(columns.scores(case.step.queries) / tau, targets.mask).exp()
    assert (probabilities[targets.mask] == 0).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(batch))


# --- degenerate settings are InfoNCE ---------------------------------------------------


@pytest.mark.parametrize("source", ["degenerate-setting", "fnc-with-an-empty-queue"])
@given(data=st.data(), tau=temperatures)
def test_each_builder_reduces_to_infonce_at_its_degenerate_setting(source, data, tau):
    """SCE λ = 1, SANE µ = 0, FNC with threshold 1 (no cosine exceeds it) or with an
    empty queue (no candidate) give InfoNCE's target and mask, hence the same loss and
    the same gradient w.r.t. the queries; with or without a mixer."""
    if source == "degenerate-setting":
        case = data.draw(cases(builder=degenerate_builders()))
    else:
        fnc = st.one_of(builders("fnc-eliminate"), builders("fnc-attract"))
        case = data.draw(cases(builder=fnc, fill="empty"))
    columns = case.step.columns()
    degenerate = case.targets()
    infonce = Case(case.step, InfoNCE(), case.mixer, case.params).targets()
    assert torch.equal(degenerate.target, infonce.target)
    assert torch.equal(degenerate.mask, infonce.mask)
    loss, grad = loss_and_grad(columns, degenerate, case.step.queries, tau)
    expected_loss, expected_grad = loss_and_grad(columns, infonce, case.step.queries, tau)
    assert torch.equal(loss, expected_loss)
    assert torch.equal(grad, expected_grad)
    if case.mixer is None:  # and InfoNCE is −log softmax(q·Cᵀ/τ)_pos
        logits = (columns.scores(case.step.queries) / tau).masked_fill(columns.mask, float("-inf"))
        torch.testing.assert_close(loss, F.cross_entropy(logits, columns.positive))


@pytest.mark.parametrize("strategy", ["eliminate", "attract"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_fnc_threshold_one_finds_nothing_even_for_exact_copies(strategy, aggregation):
    """Regression (found by the test above): the cosine of a unit vector with its
    exact copy often rounds above 1 in float32, and FNC with ``threshold = 1`` used
    to flag queue copies of the key held under another id. Cosines never exceed 1."""
    keys = F.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    queue = MemoryQueue(64, 8)
    queue.enqueue(keys.clone(), torch.arange(64) + 100)
    assert ((keys * keys).sum(dim=1) > 1).any(), "some rounded self-cosines must exceed 1"
    columns = LogitColumns.build(keys, torch.arange(64), queue)
    fnc = FalseNegativeCancellation(threshold=1.0, strategy=strategy, aggregation=aggregation)(columns)
    infonce = InfoNCE()(columns)
    assert torch.equal(fnc.target, infonce.target) and torch.equal(fnc.mask, infonce.mask)


# --- permutations ------------------------------------------------------------------------


@given(case=cases(), tau=temperatures, data=st.data())
def test_permuting_queue_entries_permutes_columns_and_keeps_the_loss(case, tau, data):
    """Reordering the queue's slots reorders the queue columns of target and mask the
    same way and leaves the loss (per row) unchanged."""
    step = case.step
    columns = step.columns()
    capacity = step.queue.capacity
    order = torch.tensor(data.draw(st.permutations(range(capacity))))
    other = Step(step.queries, step.keys, step.ids, permuted_queue(step.queue, order), step.support,
                 step.in_batch, step.fill)
    assume(not has_selection_tie(case, columns))
    permuted_columns = other.columns()
    start = columns.queue_start
    column_order = torch.cat([torch.arange(start), start + order])
    original, permuted = case.targets(), case.targets(other)

    torch.testing.assert_close(per_identical_embedding(permuted.target, permuted_columns),
                               per_identical_embedding(original.target, columns)[:, column_order],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_identical_embedding(permuted.mask.float(), permuted_columns),
                               per_identical_embedding(original.mask.float(), columns)[:, column_order])
    loss, _ = loss_and_grad(columns, original, step.queries, tau, reduction="none")
    loss_permuted, _ = loss_and_grad(permuted_columns, permuted, step.queries, tau, reduction="none")
    torch.testing.assert_close(loss_permuted, loss, rtol=1e-5, atol=1e-5)


@given(case=cases(), tau=temperatures, data=st.data())
def test_permuting_the_batch_permutes_rows_of_targets_and_losses(case, tau, data):
    """Reordering the batch (keys, ids, queries, support views; the mixer's partners
    follow their rows) reorders target rows and per-row losses; in the
    ``[batch keys | Q]`` layout the batch-key columns are reordered alike."""
    step = case.step
    batch = step.keys.shape[0]
    order = torch.tensor(data.draw(st.permutations(range(batch))))
    other = Step(step.queries[order], step.keys[order], step.ids[order], step.queue, step.support[order],
                 step.in_batch, step.fill)
    columns, permuted_columns = step.columns(), other.columns()
    assume(not has_selection_tie(case, columns))
    params = None
    if case.params is not None:
        inverse = order.argsort()
        params = MixParams(case.params.theta[order], inverse[case.params.partner[order]], False)
    original, permuted = case.targets(), case.targets(other, params)
    column_order = torch.arange(columns.num_columns)
    if step.in_batch:
        column_order[:batch] = order

    expected_mass = per_identical_embedding(original.target, columns)[order][:, column_order]
    torch.testing.assert_close(per_identical_embedding(permuted.target, permuted_columns), expected_mass,
                               rtol=1e-5, atol=1e-6)
    expected_masked = per_identical_embedding(original.mask.float(), columns)[order][:, column_order]
    torch.testing.assert_close(per_identical_embedding(permuted.mask.float(), permuted_columns), expected_masked)
    loss, _ = loss_and_grad(columns, original, step.queries, tau, reduction="none")
    loss_permuted, _ = loss_and_grad(permuted_columns, permuted, other.queries, tau, reduction="none")
    torch.testing.assert_close(loss_permuted, loss[order], rtol=1e-5, atol=1e-5)


# --- the row's own sample is never a negative --------------------------------------------


@pytest.mark.parametrize("fill", FILL_LEVELS)
@given(data=st.data())
def test_the_rows_own_sample_id_is_never_a_negative(fill, data):
    """At every fill level: the positive column is never masked, and every other column
    holding the row's sample id (an older key of the same image) or an empty slot is
    masked. A mixed row is checked against each row whose target carries weight in it:
    every such row's positive stays unmasked, and every column that row needs masked
    is masked in the mixed row unless the mixed target gives it mass."""
    case = data.draw(cases(fill=fill))
    columns = case.step.columns()
    targets = case.targets()
    ids, rows = column_ids(columns), case.step.ids
    positives = columns.positive_one_hot().bool()
    assert not columns.mask[positives].any()
    for row, sources in enumerate(weighted_sources(case.params, rows.shape[0])):
        for source in sources:
            assert not targets.mask[row, columns.positive[source]], "a weighted row's positive must stay unmasked"
            not_negative = ((ids[source] == rows[source]) | (ids[source] == -1)) & ~positives[source]
            assert targets.mask[row][not_negative & (targets.target[row] == 0)].all()


def test_a_mixed_row_masks_older_keys_of_its_own_image():
    """Row 0 (sample 7) mixed half-and-half with row 1 (sample 8): the queue holds an
    older key of sample 7. DESIGN: "queue entries whose id equals the row's sample id"
    are always masked, so the mixed row (half image 7) must not use it as a negative,
    although row 1 alone would."""
    keys = torch.eye(2, 3)
    queue = MemoryQueue(4, 3)
    queue.enqueue(F.normalize(torch.tensor([[1.0, 0.1, 0.0]]), dim=1), torch.tensor([7]))
    columns = LogitColumns.build(keys, torch.tensor([7, 8]), queue, in_batch=True)
    mixed = MomentumMixup(across_processes=False).mix_targets(
        InfoNCE()(columns), MixParams(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])))
    older_key_of_sample_7 = columns.queue_start
    assert mixed.mask[0, older_key_of_sample_7]


# --- finite under low precision and at extreme temperatures -------------------------------

PRECISIONS = {
    "bfloat16-autocast": (torch.bfloat16, True),
    "float16-autocast": (torch.float16, True),
    "float16-inputs": (torch.float16, False),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@given(case=cases(), tau=temperatures)
def test_loss_and_gradient_are_finite_in_half_precision(precision, case, tau):
    """Under CPU autocast to bfloat16 or float16, or with float16 embeddings and queue
    (no autocast), targets are still distributions and the loss and its gradient
    w.r.t. the queries are finite."""
    dtype, autocast = PRECISIONS[precision]
    step = case.step if autocast else case.step.to(dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        columns = step.columns()
        targets = case.targets(step)
        loss, grad = loss_and_grad(columns, targets, step.queries, tau)
    torch.testing.assert_close(targets.target.float().sum(dim=1), torch.ones(columns.keys.shape[0]),
                               rtol=0, atol=1e-3)
    assert (targets.target[targets.mask] == 0).all()
    assert torch.isfinite(loss) and loss >= -1e-3
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("tau", EXTREME_TEMPERATURES)
@given(data=st.data())
def test_loss_and_gradient_are_finite_at_extreme_temperatures(tau, data):
    """With the logit temperature and the builder's own temperature (SCE τm, SANE τ·τ′) at
    0.01 or 10, the loss is finite and ≥ 0 and its gradient is finite."""
    extreme = st.sampled_from(EXTREME_TEMPERATURES)
    case = data.draw(cases(builder=st.one_of(*(builders(kind, temperature=extreme) for kind in
                                                ("infonce", "sce", "sane", "fnc-eliminate", "fnc-attract")))))
    columns = case.step.columns()
    targets = case.targets()
    loss, grad = loss_and_grad(columns, targets, case.step.queries, tau, reduction="none")
    assert torch.isfinite(loss).all() and (loss >= -1e-5).all()
    assert torch.isfinite(grad).all()


# --- soft cross-entropy is minimised at its target --------------------------------------


@given(case=cases(), data=st.data())
def test_soft_cross_entropy_is_minimised_where_the_prediction_equals_the_target(case, data):
    """For any logits the gradient of the soft cross-entropy w.r.t. the logits is
    ``(softmax − target)/B`` on unmasked columns and 0 on masked ones. With logits
    ``log target`` on the target's support (the rest masked) it is 0, the loss is the
    target's entropy, and moving the logits never lowers it."""
    targets = case.targets()
    target, mask = targets.target, targets.mask
    batch = target.shape[0]
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1)))
    noise = torch.randn(target.shape, generator=generator)

    logits = noise.clone().requires_grad_(True)
    soft_cross_entropy(logits, target, mask).backward()
    expected = (masked_log_softmax(noise, mask).exp() - target) / batch
    torch.testing.assert_close(logits.grad, expected.masked_fill(mask, 0.0))

    support = (target > 0) & ~mask
    at_target = torch.where(support, target.clamp(min=1e-30).log(), noise).requires_grad_(True)
    loss = soft_cross_entropy(at_target, target, ~support)
    loss.backward()
    torch.testing.assert_close(at_target.grad, torch.zeros_like(target), rtol=0, atol=1e-6)
    entropy = -(target * target.clamp(min=1e-30).log()).sum(dim=1).mean()
    torch.testing.assert_close(loss, entropy)
    moved = at_target.detach() + data.draw(st.sampled_from((1e-2, 1.0))) * noise
    assert soft_cross_entropy(moved, target, ~support) >= loss - 1e-5
