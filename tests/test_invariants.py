"""Label-refinement invariants, checked for every target builder and every mixer.

Every test draws a :class:`~strategies.Case`: a step (unit embeddings with duplicates,
near-duplicates and antipodes; a real memory at any fill level; ids that collide),
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

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.losses import masked_log_softmax, soft_cross_entropy
from softcontrast.components.memory import EMPTY_ID, Memory
from softcontrast.components.mixers import MixParams, MomentumMixup
from softcontrast.components.targets import (
    FalseNegativeCancellation,
    InfoNCE,
    Targets,
    cancel_false_negatives,
)
from softcontrast.methods.common import DetectionSettings
from strategies import (
    EXTREME_TEMPERATURES,
    FILL_LEVELS,
    Case,
    Step,
    builders,
    cases,
    degenerate_builders,
    steps,
    temperatures,
    view_steps,
)


# --- helpers -------------------------------------------------------------------------


def loss_and_grad(columns: Columns, targets: Targets, queries: torch.Tensor, tau: float,
                  reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Soft cross-entropy of ``q·Cᵀ/τ`` against the targets, and its gradient w.r.t. ``q``."""
    queries = queries.detach().clone().requires_grad_(True)
    loss = soft_cross_entropy(columns.scores(queries) / tau, targets.target, targets.mask, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), queries)
    return loss.detach(), grad


def memory_start(columns: Columns) -> int:
    """Column index of the first memory slot (after ``k_i`` or the block)."""
    return columns.lead + columns.block_size


def positive_index(rows: Rows) -> torch.Tensor:
    """``B``: the column of each row's one positive."""
    assert (rows.positive.sum(dim=1) == 1).all()
    return rows.positive.float().argmax(dim=1)


def column_vectors(columns: Columns, rows: Rows) -> torch.Tensor:
    """``B×N×D``: the embedding behind every column of every row."""
    shared = columns.shared.float()[None].expand(rows.ids.shape[0], -1, -1)
    if columns.lead == 0:
        return shared
    return torch.cat([columns.own_keys.float()[:, None], shared], dim=1)


def column_ids(columns: Columns, rows: Rows) -> torch.Tensor:
    """``B×N``: the sample id behind every column of every row (``-1`` = empty slot)."""
    return columns.column_ids(rows.ids)


def same_vector(columns: Columns, rows: Rows) -> torch.Tensor:
    """``B×N×N``: columns ``j`` and ``j'`` of a row hold the identical embedding."""
    vectors = column_vectors(columns, rows)
    return (vectors[:, :, None, :] == vectors[:, None, :, :]).all(dim=-1)


def per_identical_embedding(values: torch.Tensor, columns: Columns, rows: Rows) -> torch.Tensor:
    """``Σ`` of ``values`` over the columns holding the same embedding as each column.

    Columns with one embedding are indistinguishable to every builder and to the loss
    (same scores, same logits), so ``top-k`` may take either: invariants compare
    these sums, which do not depend on the choice.
    """
    return torch.einsum("bj,bjk->bk", values.double(), same_vector(columns, rows).double())


def selection_scores(case: Case, columns: Columns, rows: Rows) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """What a selecting builder ranks (``B×N`` scores, eligible flags, tie tolerance), else None.

    FNC ranks every shared column (``[block | memory]`` or the memory of ``[k_i | memory]``)
    other than the row's own image's entries and empty slots."""
    builder = case.builder
    if isinstance(builder, FalseNegativeCancellation):
        support = F.normalize(case.step.support.float(), dim=-1)
        per_view = torch.einsum("bsd,kd->bsk", support, F.normalize(columns.shared.float(), dim=-1))
        shared_scores = per_view.amax(dim=1) if builder.aggregation == "max" else per_view.mean(dim=1)
        scores = torch.cat([torch.full_like(rows.mask[:, : columns.lead], -2.0, dtype=torch.float),
                            shared_scores], dim=1)
        eligible = ~rows.mask & ~rows.positive
        eligible[:, : columns.lead] = False
        return scores, eligible, 1e-6
    return None


def has_selection_tie(case: Case, columns: Columns, rows: Rows) -> bool:
    """Whether FNC's top-k/threshold faces two *different* embeddings with
    (numerically) equal scores, or an FNC score at the threshold: then which one is
    chosen depends on the column order, so order invariants do not apply."""
    found = selection_scores(case, columns, rows)
    if found is None:
        return False
    scores, eligible, tolerance = found
    close = (scores[:, :, None] - scores[:, None, :]).abs() <= tolerance
    pairs = close & ~same_vector(columns, rows) & eligible[:, :, None] & eligible[:, None, :]
    if pairs.any():
        return True
    if isinstance(case.builder, FalseNegativeCancellation):
        return bool(((scores - case.builder.threshold).abs() <= tolerance)[eligible].any())
    return False


def permuted_memory(memory: Memory, order: torch.Tensor) -> Memory:
    """A memory whose slot ``s`` holds slot ``order[s]`` of ``memory`` (empty slots included)."""
    permuted = Memory(memory.capacity, memory.embeddings.shape[1]).to(memory.embeddings.dtype)
    permuted.enqueue(memory.embeddings[order], memory.ids[order], memory.views[order])
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
    columns, rows = case.step.layout()
    targets = case.targets()
    batch = case.step.keys.shape[0]
    assert targets.target.shape == targets.mask.shape == rows.mask.shape == (batch, columns.num_columns)
    assert (targets.target >= 0).all()
    torch.testing.assert_close(targets.target.sum(dim=1), torch.ones(batch, dtype=targets.target.dtype))
    assert (targets.target[targets.mask] == 0).all()

    probabilities = masked_log_softmax(columns.scores(case.step.queries) / tau, targets.mask).exp()
    assert (probabilities[targets.mask] == 0).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(batch))


# --- degenerate settings are InfoNCE ---------------------------------------------------


@pytest.mark.parametrize("source", ["degenerate-setting", "fnc-with-an-empty-memory"])
@given(data=st.data(), tau=temperatures)
def test_each_builder_reduces_to_infonce_at_its_degenerate_setting(source, data, tau):
    """SCE λ = 1, SANE µ = 0, FNC with threshold 1 (no cosine exceeds it) or with no
    candidate give InfoNCE's target and mask, hence the same loss and the same gradient
    w.r.t. the queries; with or without a mixer. FNC has no candidate with an empty memory
    in ``[k_i | memory]``; in ``[batch keys | memory]`` (every mixed case) the other images'
    batch keys are candidates too, so there the batch is one image."""
    if source == "degenerate-setting":
        case = data.draw(cases(builder=degenerate_builders()))
    else:
        fnc = st.one_of(builders("fnc-eliminate"), builders("fnc-attract"))
        case = data.draw(cases(builder=fnc, fill="empty", in_batch=False))
        assume(not case.step.in_batch or case.step.ids.shape[0] == 1)
    columns, rows = case.step.layout()
    degenerate = case.targets()
    infonce = Case(case.step, InfoNCE(), case.mixer, case.params).targets()
    assert torch.equal(degenerate.target, infonce.target)
    assert torch.equal(degenerate.mask, infonce.mask)
    loss, grad = loss_and_grad(columns, degenerate, case.step.queries, tau)
    expected_loss, expected_grad = loss_and_grad(columns, infonce, case.step.queries, tau)
    assert torch.equal(loss, expected_loss)
    assert torch.equal(grad, expected_grad)
    if case.mixer is None:  # and InfoNCE is −log softmax(q·Cᵀ/τ)_pos
        logits = (columns.scores(case.step.queries) / tau).masked_fill(rows.mask, float("-inf"))
        torch.testing.assert_close(loss, F.cross_entropy(logits, positive_index(rows)))


@pytest.mark.parametrize("strategy", ["eliminate", "attract"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_fnc_threshold_one_finds_nothing_even_for_exact_copies(strategy, aggregation):
    """Regression (found by the test above): the cosine of a unit vector with its
    exact copy often rounds above 1 in float32, and FNC with ``threshold = 1`` used
    to flag memory copies of the key held under another id. Cosines never exceed 1."""
    keys = F.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    memory = Memory(64, 8)
    memory.enqueue(keys.clone(), torch.arange(64) + 100)
    assert ((keys * keys).sum(dim=1) > 1).any(), "some rounded self-cosines must exceed 1"
    columns = Columns.build(keys[:, None], torch.arange(64), memory, batch_negatives=False)
    rows = columns.rows(torch.arange(64), [None], keys=keys, detectors=keys[:, None])
    fnc = DetectionSettings(threshold=1.0, strategy=strategy, aggregation=aggregation).detector()(columns, rows)
    infonce = InfoNCE()(columns, rows)
    assert not fnc.found.any()
    assert torch.equal(fnc.target, infonce.target) and torch.equal(fnc.mask, infonce.mask)


# --- permutations ------------------------------------------------------------------------


@given(case=cases(), tau=temperatures, data=st.data())
def test_permuting_memory_entries_permutes_columns_and_keeps_the_loss(case, tau, data):
    """Reordering the memory's slots reorders the memory columns of target and mask the
    same way and leaves the loss (per row) unchanged."""
    step = case.step
    columns, rows = step.layout()
    capacity = step.memory.capacity
    order = torch.tensor(data.draw(st.permutations(range(capacity))))
    other = Step(step.queries, step.keys, step.ids, permuted_memory(step.memory, order), step.support,
                 step.in_batch, step.fill)
    assume(not has_selection_tie(case, columns, rows))
    permuted_columns, permuted_rows = other.layout()
    start = memory_start(columns)
    column_order = torch.cat([torch.arange(start), start + order])
    original, permuted = case.targets(), case.targets(other)

    torch.testing.assert_close(per_identical_embedding(permuted.target, permuted_columns, permuted_rows),
                               per_identical_embedding(original.target, columns, rows)[:, column_order],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_identical_embedding(permuted.mask.float(), permuted_columns, permuted_rows),
                               per_identical_embedding(original.mask.float(), columns, rows)[:, column_order])
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
    other = Step(step.queries[order], step.keys[order], step.ids[order], step.memory, step.support[order],
                 step.in_batch, step.fill)
    (columns, rows), (permuted_columns, permuted_rows) = step.layout(), other.layout()
    assume(not has_selection_tie(case, columns, rows))
    params = None
    if case.params is not None:
        inverse = order.argsort()
        params = MixParams(case.params.theta[order], inverse[case.params.partner[order]], False)
    original, permuted = case.targets(), case.targets(other, params)
    column_order = torch.arange(columns.num_columns)
    if step.in_batch:
        column_order[:batch] = order

    expected_mass = per_identical_embedding(original.target, columns, rows)[order][:, column_order]
    torch.testing.assert_close(per_identical_embedding(permuted.target, permuted_columns, permuted_rows),
                               expected_mass, rtol=1e-5, atol=1e-6)
    expected_masked = per_identical_embedding(original.mask.float(), columns, rows)[order][:, column_order]
    torch.testing.assert_close(per_identical_embedding(permuted.mask.float(), permuted_columns, permuted_rows),
                               expected_masked)
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
    columns, layout = case.step.layout()
    targets = case.targets()
    ids, rows = column_ids(columns, layout), case.step.ids
    positives = layout.positive
    assert not layout.mask[positives].any()
    for row, sources in enumerate(weighted_sources(case.params, rows.shape[0])):
        for source in sources:
            assert not targets.mask[row][positives[source]].any(), "a weighted row's positive must stay unmasked"
            not_negative = ((ids[source] == rows[source]) | (ids[source] == -1)) & ~positives[source]
            assert targets.mask[row][not_negative & (targets.target[row] == 0)].all()


def test_a_mixed_row_masks_older_keys_of_its_own_image():
    """Row 0 (sample 7) mixed half-and-half with row 1 (sample 8): the memory holds an
    older key of sample 7. DESIGN: "memory entries whose id equals the row's sample id"
    are always masked, so the mixed row (half image 7) must not use it as a negative,
    although row 1 alone would."""
    keys = torch.eye(2, 3)
    memory = Memory(4, 3)
    memory.enqueue(F.normalize(torch.tensor([[1.0, 0.1, 0.0]]), dim=1), torch.tensor([7]))
    columns = Columns.build(keys[:, None], torch.tensor([7, 8]), memory, batch_negatives=True)
    rows = columns.rows(torch.tensor([7, 8]), [None], keys=keys)
    mixed = MomentumMixup(2.0, across_processes=False).mix_targets(
        InfoNCE()(columns, rows), MixParams(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])))
    older_key_of_sample_7 = memory_start(columns)
    assert columns.ids[older_key_of_sample_7] == 7
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
    """Under CPU autocast to bfloat16 or float16, or with float16 embeddings and memory
    (no autocast), targets are still distributions and the loss and its gradient
    w.r.t. the queries are finite."""
    dtype, autocast = PRECISIONS[precision]
    step = case.step if autocast else case.step.to(dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        columns = step.columns()
        targets = case.targets(step)
        loss, grad = loss_and_grad(columns, targets, step.queries, tau)
    torch.testing.assert_close(targets.target.float().sum(dim=1), torch.ones(step.keys.shape[0]),
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


# --- the rows' layout: both column layouts, two views and many ------------------------------


@given(step=steps())
def test_two_view_rows_have_one_positive_the_images_own_key_never_masked(step):
    """``[k_i | memory]``: exactly one positive, column 0 (the row's own key), never masked; a
    memory slot is masked exactly when it is empty or holds the row's image.
    ``[batch keys | memory]``: exactly one positive, the row's own key in the block; the other
    images' keys are negatives; the same memory mask."""
    columns, rows = step.layout()
    batch = step.ids.shape[0]
    assert rows.positive.shape == rows.mask.shape == (batch, columns.num_columns)
    assert (rows.positive.sum(dim=1) == 1).all()
    assert not (rows.positive & rows.mask).any()
    assert (rows.own == -1).all() and rows.per_image == 1
    start = memory_start(columns)
    if not step.in_batch:
        assert columns.lead == 1 and columns.block_size == 0
        assert rows.positive[:, 0].all()
    else:
        assert columns.lead == 0 and columns.block_size == batch
        assert torch.equal(positive_index(rows), torch.arange(batch))
        assert not rows.mask[:, :start].any()
    memory_ids = columns.ids[columns.block_size:]
    expected = (memory_ids[None, :] == step.ids[:, None]) | (memory_ids == EMPTY_ID)[None, :]
    assert torch.equal(rows.mask[:, start:], expected)
    torch.testing.assert_close(columns.scores(step.queries)[rows.positive], (step.queries * step.keys).sum(dim=1))


@given(step=view_steps())
def test_view_rows_mask_the_anchors_own_column_and_make_the_images_other_views_positive(step):
    """Every anchor row: its own column (when it is a column view) is masked and holds its
    image and view; the positives are exactly the image's other views in the block (all
    ``V`` for an anchor that is no column); empty slots and memory entries of the image
    are masked; a positive is never masked; rows are image-major."""
    columns, rows = step.layout()
    batch, views, _ = step.momentum.shape
    anchors = len(step.own_views)
    assert rows.per_image == anchors and rows.positive.shape == (batch * anchors, columns.num_columns)
    assert columns.lead == 0 and columns.block_size == batch * views
    assert torch.equal(rows.ids, step.ids.repeat_interleave(anchors))
    assert not (rows.positive & rows.mask).any()
    in_block = torch.arange(columns.num_columns) < columns.block_size
    for row in range(batch * anchors):
        image, own_view = divmod(row, anchors)[0], step.own_views[row % anchors]
        same = columns.ids == step.ids[image]
        if own_view is None:
            assert rows.own[row] == -1
            expected_positive = same & in_block
        else:
            own = int(rows.own[row])
            assert own == image * views + own_view and rows.mask[row, own] and not rows.positive[row, own]
            assert columns.ids[own] == step.ids[image] and columns.views[own] == own_view
            expected_positive = same & in_block & (torch.arange(columns.num_columns) != own)
        assert torch.equal(rows.positive[row], expected_positive)
        assert int(rows.positive[row].sum()) == views - (own_view is not None)
        masked_memory = ~in_block & (same | (columns.ids == EMPTY_ID))
        assert torch.equal(rows.mask[row] & ~in_block, masked_memory)


@given(step=st.one_of(steps().map(Step.layout), view_steps(min_views=2).map(lambda s: s.layout())),
       strategy=st.sampled_from(["attract", "eliminate"]), data=st.data())
def test_cancelled_targets_are_distributions_over_positives_and_false_negatives(step, strategy, data):
    """For any flags ``F`` (also on masked and positive columns): target rows are ≥ 0, sum
    to 1 and are zero where masked; attract spreads them equally over ``P ∪ (F unmasked)``
    and keeps the mask; eliminate spreads them over ``P`` and masks ``F`` too; a positive
    is never masked."""
    columns, rows = step
    seed = data.draw(st.integers(0, 2**32 - 1))
    found = torch.rand(rows.mask.shape, generator=torch.Generator().manual_seed(seed)) < data.draw(
        st.sampled_from((0.0, 0.3, 1.0)))
    targets = cancel_false_negatives(rows, found, strategy)
    target, mask = targets.target, targets.mask
    assert (target >= 0).all()
    torch.testing.assert_close(target.sum(dim=1), torch.ones(target.shape[0]))
    assert (target[mask] == 0).all()
    assert not (mask & rows.positive).any()
    extra = found & ~rows.mask & ~rows.positive
    members = rows.positive | extra if strategy == "attract" else rows.positive
    torch.testing.assert_close(target, members.float() / members.sum(dim=1, keepdim=True))
    assert torch.equal(mask, rows.mask | extra if strategy == "eliminate" else rows.mask)
    assert torch.equal(targets.found, found)
