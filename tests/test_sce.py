"""SCE targets: hypothesis properties, the paper's equations in float64, bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.components.targets import InfoNCE, SimilarityTargets
from softcontrast.methods import Setup, method_spec
from softcontrast.components.backbones import resnet
from softcontrast.components.augment import for_image_size


def lay_out(keys, ids, memory, in_batch=False):
    """Columns ``[k_i | Q]`` (or ``[all batch keys | Q]``) and their query rows, one key per row."""
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=in_batch)
    return columns, columns.rows(ids, [None], keys=keys)


def positive_column(rows):
    """``B`` the column index of each row's single positive."""
    assert (rows.positive.sum(1) == 1).all()
    return rows.positive.int().argmax(1)


def random_step(seed: int, batch: int, fill: int, capacity: int, dim: int = 6, in_batch: bool = False,
                dtype=torch.float64):
    """Keys, queries and columns with a queue filled to ``fill`` slots; queue ids collide with row ids."""
    generator = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(batch, dim, generator=generator, dtype=dtype), dim=1)
    queries = F.normalize(torch.randn(batch, dim, generator=generator, dtype=dtype), dim=1)
    memory = Memory(capacity, dim).to(dtype)
    if fill:
        memory.enqueue(F.normalize(torch.randn(fill, dim, generator=generator, dtype=dtype), dim=1),
                       torch.randint(0, batch + 3, (fill,), generator=generator))
    ids = torch.arange(batch)
    return (queries, *lay_out(keys, ids, memory, in_batch))


steps = st.builds(
    random_step,
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 6),
    fill=st.integers(0, 12),
    capacity=st.just(12),
    in_batch=st.booleans(),
)
lams = st.floats(0.0, 1.0)
tau_ms = st.floats(0.01, 10.0)


@settings(max_examples=60, deadline=None)
@given(step=steps, lam=lams, tau_m=tau_ms)
def test_targets_are_distributions_that_vanish_on_masked_columns(step, lam, tau_m):
    _, columns, rows = step
    targets = SimilarityTargets(lam, tau_m)(columns, rows)
    assert (targets.target >= 0).all()
    torch.testing.assert_close(targets.target.sum(1), torch.ones(rows.keys.shape[0], dtype=targets.target.dtype))
    assert (targets.target[targets.mask] == 0).all()
    assert torch.equal(targets.mask, rows.mask)


@settings(max_examples=40, deadline=None)
@given(step=steps, tau_m=tau_ms)
def test_lambda_one_is_exactly_infonce(step, tau_m):
    queries, columns, rows = step
    sce, infonce = SimilarityTargets(1.0, tau_m)(columns, rows), InfoNCE()(columns, rows)
    assert torch.equal(sce.target, infonce.target)
    logits = columns.scores(queries) / 0.1
    assert torch.equal(soft_cross_entropy(logits, sce.target, sce.mask),
                       soft_cross_entropy(logits, infonce.target, infonce.mask))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), lam=lams, tau_m=tau_ms, in_batch=st.booleans())
def test_permuting_queue_entries_permutes_target_columns_and_keeps_the_loss(seed, lam, tau_m, in_batch):
    queries, columns, rows = random_step(seed, 4, 12, 12, in_batch=in_batch)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(seed))
    permuted_memory = Memory(12, rows.keys.shape[1]).double()
    start = columns.lead + columns.block_size
    queue_keys, queue_ids = columns.shared[-12:], columns.ids[-12:]
    permuted_memory.enqueue(queue_keys[order], queue_ids[order])
    permuted, permuted_rows = lay_out(rows.keys, rows.ids, permuted_memory, in_batch)
    builder = SimilarityTargets(lam, tau_m)
    original, shuffled = builder(columns, rows), builder(permuted, permuted_rows)
    column_order = torch.cat([torch.arange(start), start + order])
    torch.testing.assert_close(shuffled.target, original.target[:, column_order])
    assert torch.equal(shuffled.mask, original.mask[:, column_order])
    loss = soft_cross_entropy(columns.scores(queries) / 0.1, original.target, original.mask)
    loss_permuted = soft_cross_entropy(permuted.scores(queries) / 0.1, shuffled.target, shuffled.mask)
    torch.testing.assert_close(loss, loss_permuted)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.0, 0.9))
def test_small_tau_m_concentrates_mass_on_the_most_similar_negative(seed, lam):
    _, columns, rows = random_step(seed, 3, 10, 12)
    targets = SimilarityTargets(lam, 1e-4)(columns, rows)
    key_scores = columns.scores(rows.keys).masked_fill(rows.mask, float("-inf"))
    key_scores[:, 0] = float("-inf")
    has_negative = torch.isfinite(key_scores).any(1)
    nearest = key_scores.argmax(1)
    for row in torch.nonzero(has_negative).flatten().tolist():
        # Ties within 1e-3 would split the mass; the strategy's random keys make them rare.
        top2 = key_scores[row].topk(2).values
        if torch.isfinite(top2[1]) and top2[0] - top2[1] < 1e-2:
            continue
        assert targets.target[row, nearest[row]] == pytest.approx(1 - lam, abs=1e-6)
        assert targets.target[row, 0] == pytest.approx(lam, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 6), lam=st.floats(0.01, 1.0))
def test_in_batch_keys_put_the_positive_on_the_rows_own_key(seed, batch, lam):
    _, columns, rows = random_step(seed, batch, 5, 12, in_batch=True)
    positive = positive_column(rows)
    assert positive.tolist() == list(range(batch))
    own = columns.shared[positive]
    assert torch.equal(own, rows.keys)
    target = SimilarityTargets(lam, 0.05)(columns, rows).target
    assert (target[torch.arange(batch), positive] >= lam - 1e-12).all()
    other_keys = rows.mask[:, :batch] & ~torch.eye(batch, dtype=torch.bool)
    assert not other_keys.any(), "other rows' keys are negatives, never masked"


def paper_sce_loss(q, k, negatives_per_row, lam, tau, tau_m):
    """Denize et al. (2023), Eq. 3–7, written out per row in float64.

    w_ij = λ·1[i=j] + (1−λ)·s_ij with s_ij = exp(k_i·k_j/τm) / Σ_{l≠i} exp(k_i·k_l/τm)
    (s_ii = 0), and L_i = −Σ_j w_ij · log( exp(q_i·k_j/τ) / Σ_l exp(q_i·k_l/τ) ).
    """
    total = 0.0
    for i in range(q.shape[0]):
        candidates = torch.cat([k[i : i + 1], negatives_per_row[i]])
        similarity = torch.exp(candidates[1:] @ k[i] / tau_m)
        s = torch.cat([torch.zeros(1, dtype=q.dtype), similarity / similarity.sum()])
        w = (1 - lam) * s
        w[0] += lam
        log_p = torch.log(torch.exp(candidates @ q[i] / tau) / torch.exp(candidates @ q[i] / tau).sum())
        total = total - (w * log_p).sum()
    return total / q.shape[0]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lam=lams, tau=st.floats(0.05, 1.0), tau_m=st.floats(0.05, 1.0))
def test_loss_equals_the_papers_equations(seed, lam, tau, tau_m):
    queries, columns, rows = random_step(seed, 4, 12, 12)
    valid = ~rows.mask[:, 1:]
    negatives = [columns.shared[valid[i]] for i in range(4)]
    targets = SimilarityTargets(lam, tau_m)(columns, rows)
    loss = soft_cross_entropy(columns.scores(queries) / tau, targets.target, targets.mask)
    expected = paper_sce_loss(queries, rows.keys, negatives, lam, tau, tau_m)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_lambda_outside_unit_interval_is_rejected(lam):
    with pytest.raises(ValueError, match="lam") as error:
        SimilarityTargets(lam=lam, tau_m=0.05)
    assert error.value.name == "lam"


@pytest.mark.parametrize("tau_m", [0.0, -1.0])
def test_non_positive_tau_m_is_rejected(tau_m):
    with pytest.raises(ValueError, match="tau_m"):
        SimilarityTargets(lam=0.5, tau_m=tau_m)


def test_sce_step_runs_with_the_paper_defaults():
    torch.manual_seed(0)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16))
    method = method_spec("sce")(resnet("resnet18", width=8), setup=setup, queue_size=16)
    assert (method.temperature, method.targets.lam, method.targets.tau_m) == (0.1, 0.5, 0.05)
    assert method.momentum == 0.99
    for step in range(3):
        output = method(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) + 8 * step)
        output.loss.backward()
        method.after_optimizer_step(step, 3)
    assert torch.isfinite(output.loss) and output.loss > 0
