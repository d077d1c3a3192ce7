"""FNC: exact aggregated search, the false-negative set F_i, both strategies, the method."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.augment import for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.neighbors import NeighborSearch
from softcontrast.components.queue import MemoryQueue
from softcontrast.components.targets import FalseNegativeCancellation, InfoNCE
from softcontrast.components.targets.false_negatives import (
    aggregated_neighbors,
    detected_false_negatives,
    max_per_id,
    queue_false_negatives,
    queue_part,
)
from softcontrast.methods import FNCOnMoCo as FNC


def unit(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def random_step(seed, batch, views, fill, capacity=24, dim=4, in_batch=False, duplicates=0):
    """Columns over a partly filled queue whose ids collide with row ids, plus support.

    ``duplicates`` queue entries are exact copies of row keys under the row's own id
    (score 1 with the key): FNC must never pick them.
    """
    generator = torch.Generator().manual_seed(seed)
    keys = unit(batch, dim, generator=generator)
    support = torch.cat([keys[:, None], unit(batch, views - 1, dim, generator=generator)], dim=1)
    queue = MemoryQueue(capacity, dim)
    if fill:
        queue.enqueue(unit(fill, dim, generator=generator), torch.randint(0, batch + 4, (fill,), generator=generator))
    if duplicates:
        rows = torch.arange(duplicates) % batch
        queue.enqueue(keys[rows], rows)
    return LogitColumns.build(keys, torch.arange(batch), queue, in_batch), support


def aggregated_scores(columns, support, aggregation):
    """Brute force: ``agg_s(u_is · C_j)`` for every queue column, ``B×K``."""
    per_view = torch.einsum("bsd,kd->bsk", support, queue_part(columns)[0])
    return per_view.amax(dim=1) if aggregation == "max" else per_view.mean(dim=1)


steps = st.builds(
    random_step,
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 5),
    views=st.integers(1, 4),
    fill=st.integers(0, 24),
    in_batch=st.booleans(),
    duplicates=st.integers(0, 3),
)
settings_ = settings(max_examples=40, deadline=None)


@settings_
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), views=st.integers(1, 5), size=st.integers(1, 60),
       k=st.integers(1, 12), aggregation=st.sampled_from(["max", "mean"]),
       backend=st.sampled_from(["torch", "faiss-flat"]))
def test_aggregated_search_equals_top_k_of_the_full_score_matrix(seed, rows, views, size, k, aggregation, backend):
    generator = torch.Generator().manual_seed(seed)
    index, support = unit(size, 8, generator=generator), unit(rows, views, 8, generator=generator)
    search = NeighborSearch(backend)
    search.add(index)
    scores, ids = aggregated_neighbors(search, support, k, aggregation)
    full = torch.einsum("bsd,kd->bsk", support, index)
    full = full.amax(dim=1) if aggregation == "max" else full.mean(dim=1)
    expected = full.topk(min(k, size), dim=1).values
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.gather(1, ids), scores, atol=1e-5, rtol=0)
    assert all(len(set(row)) == len(row) for row in ids.tolist())


@settings_
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), width=st.integers(1, 12))
def test_max_per_id_keeps_each_ids_largest_score_once(seed, rows, width):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, width, generator=generator)
    ids = torch.randint(0, 4, (rows, width), generator=generator)
    kept = max_per_id(scores, ids)
    for row in range(rows):
        finite = kept[row].isfinite()
        assert sorted(ids[row][finite].tolist()) == sorted(set(ids[row].tolist()))
        for value in set(ids[row].tolist()):
            assert kept[row][finite & (ids[row] == value)].item() == scores[row][ids[row] == value].max().item()


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 1.0), aggregation=st.sampled_from(["max", "mean"]))
def test_false_negatives_are_the_top_k_unmasked_queue_columns_above_threshold(step, top_k, threshold, aggregation):
    columns, support = step
    found = FalseNegativeCancellation(top_k, threshold, aggregation=aggregation)(columns, support)
    flags = FalseNegativeCancellation(top_k, threshold, aggregation=aggregation).false_negatives(columns, support)
    start = columns.queue_start
    assert not flags[:, :start].any()
    assert not (flags & columns.mask).any()
    assert (flags.sum(dim=1) <= top_k).all()
    queue_flags, allowed = flags[:, start:], ~columns.mask[:, start:]
    scores = aggregated_scores(columns, support, aggregation)
    for row in range(scores.shape[0]):
        above = allowed[row] & (scores[row] > threshold)
        chosen = scores[row][queue_flags[row]]
        assert (chosen > threshold).all()
        assert queue_flags[row].sum() == min(top_k, int(above.sum()))
        if chosen.numel():
            assert (scores[row][above & ~queue_flags[row]] <= chosen.min() + 1e-5).all()
    assert found.target.shape == columns.mask.shape


@settings_
@given(step=steps, strategy=st.sampled_from(["eliminate", "attract"]))
def test_copies_of_the_rows_own_key_and_empty_slots_are_never_false_negatives(step, strategy):
    columns, support = step
    flags = FalseNegativeCancellation(top_k=30, threshold=-1.0, strategy=strategy).false_negatives(columns, support)
    start = columns.queue_start
    _, queue_ids, _ = queue_part(columns)
    own = queue_ids[None, :] == columns.row_ids[:, None]
    empty = queue_ids == -1
    assert not (flags[:, start:] & (own | empty[None])).any()
    assert torch.equal(flags[:, start:], ~columns.mask[:, start:])


@settings_
@given(step=steps, strategy=st.sampled_from(["eliminate", "attract"]))
def test_without_false_negatives_target_and_loss_are_exactly_infonce(step, strategy):
    columns, support = step
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(columns.mask.shape, generator=generator)
    fnc = FalseNegativeCancellation(threshold=1.0, strategy=strategy)(columns, support)
    infonce = InfoNCE()(columns)
    assert torch.equal(fnc.target, infonce.target) and torch.equal(fnc.mask, infonce.mask)
    assert torch.equal(soft_cross_entropy(logits, fnc.target, fnc.mask),
                      soft_cross_entropy(logits, infonce.target, infonce.mask))
    assert (detected_false_negatives(columns, fnc) == 0).all()


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 0.5))
def test_attract_is_uniform_over_positive_and_false_negatives(step, top_k, threshold):
    columns, support = step
    builder = FalseNegativeCancellation(top_k, threshold, strategy="attract")
    flags, targets = builder.false_negatives(columns, support), builder(columns, support)
    members = flags | columns.positive_one_hot().bool()
    expected = members.float() / members.sum(dim=1, keepdim=True)
    torch.testing.assert_close(targets.target, expected)
    assert torch.equal(targets.mask, columns.mask)
    assert torch.equal(detected_false_negatives(columns, targets), flags.sum(dim=1))


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 0.5))
def test_eliminate_masks_false_negatives_and_keeps_the_one_hot_target(step, top_k, threshold):
    columns, support = step
    builder = FalseNegativeCancellation(top_k, threshold, strategy="eliminate")
    flags, targets = builder.false_negatives(columns, support), builder(columns, support)
    assert torch.equal(targets.mask, columns.mask | flags)
    assert torch.equal(targets.target, columns.positive_one_hot())
    assert not (targets.target.bool() & targets.mask).any()
    assert torch.equal(detected_false_negatives(columns, targets), flags.sum(dim=1))


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 1.0),
       aggregation=st.sampled_from(["max", "mean"]), backend=st.sampled_from(["faiss-flat", "auto"]))
def test_search_backends_find_the_same_false_negatives(step, top_k, threshold, aggregation, backend):
    columns, support = step
    reference = FalseNegativeCancellation(top_k, threshold, aggregation=aggregation, backend="torch")
    other = FalseNegativeCancellation(top_k, threshold, aggregation=aggregation, backend=backend)
    scores = aggregated_scores(columns, support, aggregation)
    near_tie = (scores[:, :, None] - scores[:, None, :]).abs() + torch.eye(scores.shape[1]) < 1e-5
    if not near_tie.any() and not ((scores - threshold).abs() < 1e-5).any():
        assert torch.equal(reference.false_negatives(columns, support), other.false_negatives(columns, support))


def test_bank_flags_queue_columns_that_hold_found_images():
    generator = torch.Generator().manual_seed(3)
    images = unit(6, 4, generator=generator)
    bank = EmbeddingBank(num_samples=6, dim=4, backend="torch")
    bank.update(images, torch.arange(6))
    queue = MemoryQueue(8, 4)
    queue.enqueue(images[[1, 2, 1, 5]], torch.tensor([1, 2, 1, 5]))
    keys = images[:2]
    columns = LogitColumns.build(keys, torch.tensor([0, 1]), queue)
    builder = FalseNegativeCancellation(top_k=1, threshold=-1.0, bank=bank)
    flags = builder.false_negatives(columns, keys[:, None])
    scores = keys @ images.T
    for row, own in enumerate([0, 1]):
        best = max((j for j in range(6) if j != own), key=lambda j: scores[row, j])
        holds = (queue_part(columns)[1] == best) & ~columns.mask[row, 1:]
        assert torch.equal(flags[row, 1:], holds)
        assert not flags[row, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"top_k": 0}, "top_k"), ({"threshold": 1.5}, "threshold"), ({"threshold": -1.01}, "threshold"),
     ({"strategy": "ignore"}, "strategy"), ({"aggregation": "median"}, "aggregation"),
     ({"backend": "annoy"}, "backend")],
)
def test_bad_hyperparameters_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FalseNegativeCancellation(**kwargs)


def test_fnc_method_rejects_zero_support_views():
    with pytest.raises(ValueError, match="support_views"):
        FNC(resnet("resnet18", width=8), support_views=0)


def test_fnc_training_step_runs_and_reports_detected_false_negatives():
    torch.manual_seed(0)
    view = for_image_size(moco_v2_cifar(), 16)
    method = FNC(resnet("resnet18", width=8), support_views=3, top_k=2, threshold=-1.0, queue_size=16, view=view)
    assert method.temperature == 0.2 and method.support_views == 3
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    for step in range(3):
        output = method(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) + 8 * step)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_optimizer_step(step, 3)
    assert torch.isfinite(output.loss)
    detected = output.metrics["false_negatives_per_row"]
    assert not detected.requires_grad and detected == 2  # queue filled, threshold -1: top_k per row


def test_fnc_with_a_bank_trains_and_fills_the_bank():
    torch.manual_seed(0)
    view = for_image_size(moco_v2_cifar(), 16)
    bank = EmbeddingBank(num_samples=16, dim=128, backend="torch")
    method = FNC(resnet("resnet18", width=8), support_views=2, strategy="eliminate", queue_size=16, view=view,
                 bank=bank, threshold=-1.0)
    for step in range(3):
        ids = torch.arange(8) + 8 * (step % 2)
        output = method(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), ids)
        output.loss.backward()
        method.after_optimizer_step(step, 3)
    assert torch.isfinite(output.loss)
    assert method.bank.written.all()
    assert "bank.embeddings" in method.state_dict()
    assert output.metrics["false_negatives_per_row"] > 0


def test_queue_search_keeps_one_index_and_asks_for_no_more_than_the_filled_slots(recording_search):
    builder = FalseNegativeCancellation(top_k=3, threshold=-1.0, backend="faiss-flat")
    exact = FalseNegativeCancellation(top_k=3, threshold=-1.0, backend="torch")
    recording, indexes = recording_search("faiss-flat"), []
    for seed in (5, 6):
        columns, support = random_step(seed, batch=4, views=3, fill=32, capacity=4096, dim=8, duplicates=2)
        assert torch.equal(builder.false_negatives(columns, support), exact.false_negatives(columns, support))
        queue_false_negatives(columns, support, recording, 3, -1.0, "max")
        indexes.append(builder.search.faiss_index)
    assert indexes[0] is indexes[1] and indexes[0].ntotal == 34
    assert max(recording.asked) <= 34
