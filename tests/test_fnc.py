"""FNC: exact aggregated search, the false-negative set F_i, both strategies, FNC on MoCo."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.columns import Columns, Rows
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import EMPTY_ID, Memory
from softcontrast.components.neighbors import NeighborSearch
from softcontrast.components.targets import InfoNCE, Targets
from softcontrast.components.targets.false_negatives import (
    aggregated_neighbors,
    column_false_negatives,
    max_per_id,
)
from softcontrast.evaluation import step_diagnostics
from softcontrast.methods import Setup, method_spec
from softcontrast.methods.common import DetectionSettings


def unit(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def random_step(seed, batch, views, fill, capacity=24, dim=4, in_batch=False, duplicates=0):
    """Columns over a partly filled memory whose ids collide with row ids, and rows whose
    detectors are the key and ``views − 1`` more embeddings.

    ``duplicates`` memory entries are exact copies of row keys under the row's own id
    (score 1 with the key): FNC must never pick them.
    """
    generator = torch.Generator().manual_seed(seed)
    keys = unit(batch, dim, generator=generator)
    support = torch.cat([keys[:, None], unit(batch, views - 1, dim, generator=generator)], dim=1)
    memory = Memory(capacity, dim)
    if fill:
        memory.enqueue(unit(fill, dim, generator=generator), torch.randint(0, batch + 4, (fill,), generator=generator))
    if duplicates:
        rows = torch.arange(duplicates) % batch
        memory.enqueue(keys[rows], rows)
    ids = torch.arange(batch)
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=in_batch)
    return columns, columns.rows(ids, [None], keys=keys, detectors=support)


def aggregated_scores(columns, rows, aggregation):
    """Brute force: ``agg_s(u_is · c_m)`` for every shared column (the memory of ``[k_i | memory]``,
    block and memory of ``[batch keys | memory]``), ``B×M``."""
    per_view = torch.einsum("bsd,kd->bsk", rows.detectors, columns.shared)
    return per_view.amax(dim=1) if aggregation == "max" else per_view.mean(dim=1)


def candidates(columns: Columns, rows: Rows) -> torch.Tensor:
    """``B×M`` shared columns a row may detect: neither its own image's entries nor empty slots."""
    return ~(rows.mask | rows.positive)[:, columns.lead:]


def cancelled(rows: Rows, targets: Targets) -> torch.Tensor:
    """Per row, how many columns the targets cancelled: newly masked, or non-positive with target mass."""
    added_mask = targets.mask & ~rows.mask
    attracted = (targets.target > 0) & ~rows.positive
    return (added_mask | attracted).sum(dim=1)


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
def test_false_negatives_are_the_top_k_candidate_columns_above_threshold(step, top_k, threshold, aggregation):
    """The candidates are the shared columns (the memory of ``[k_i | memory]``; the other
    images' keys and the memory of ``[batch keys | memory]``) that hold neither the row's image nor nothing."""
    columns, rows = step
    found = DetectionSettings(top_k, threshold, aggregation=aggregation).detector()(columns, rows)
    flags = DetectionSettings(top_k, threshold, aggregation=aggregation).detector().false_negatives(columns, rows)
    start = columns.lead
    assert not flags[:, :start].any()
    assert not (flags & rows.mask).any() and not (flags & rows.positive).any()
    assert (flags.sum(dim=1) <= top_k).all()
    shared_flags, allowed = flags[:, start:], candidates(columns, rows)
    scores = aggregated_scores(columns, rows, aggregation)
    for row in range(scores.shape[0]):
        above = allowed[row] & (scores[row] > threshold)
        chosen = scores[row][shared_flags[row]]
        assert (chosen > threshold).all()
        assert shared_flags[row].sum() == min(top_k, int(above.sum()))
        if chosen.numel():
            assert (scores[row][above & ~shared_flags[row]] <= chosen.min() + 1e-5).all()
    assert found.target.shape == rows.mask.shape and torch.equal(found.found, flags)


@settings_
@given(step=steps, strategy=st.sampled_from(["eliminate", "attract"]))
def test_copies_of_the_rows_own_key_and_empty_slots_are_never_false_negatives(step, strategy):
    columns, rows = step
    flags = DetectionSettings(top_k=30, threshold=-1.0, strategy=strategy).detector().false_negatives(columns, rows)
    start = columns.lead
    own = columns.ids[None, :] == rows.ids[:, None]
    empty = columns.ids == EMPTY_ID
    assert not (flags[:, start:] & (own | empty[None])).any()
    assert torch.equal(flags[:, start:], candidates(columns, rows))


@settings_
@given(step=steps, strategy=st.sampled_from(["eliminate", "attract"]))
def test_without_false_negatives_target_and_loss_are_exactly_infonce(step, strategy):
    columns, rows = step
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows.mask.shape, generator=generator)
    fnc = DetectionSettings(threshold=1.0, strategy=strategy).detector()(columns, rows)
    infonce = InfoNCE()(columns, rows)
    assert torch.equal(fnc.target, infonce.target) and torch.equal(fnc.mask, infonce.mask)
    assert torch.equal(soft_cross_entropy(logits, fnc.target, fnc.mask),
                      soft_cross_entropy(logits, infonce.target, infonce.mask))
    assert (cancelled(rows, fnc) == 0).all() and not fnc.found.any()


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 0.5))
def test_attract_is_uniform_over_positive_and_false_negatives(step, top_k, threshold):
    columns, rows = step
    builder = DetectionSettings(top_k, threshold, strategy="attract").detector()
    flags, targets = builder.false_negatives(columns, rows), builder(columns, rows)
    members = flags | rows.positive
    expected = members.float() / members.sum(dim=1, keepdim=True)
    torch.testing.assert_close(targets.target, expected)
    assert torch.equal(targets.mask, rows.mask)
    assert torch.equal(cancelled(rows, targets), flags.sum(dim=1))


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 0.5))
def test_eliminate_masks_false_negatives_and_keeps_the_one_hot_target(step, top_k, threshold):
    columns, rows = step
    builder = DetectionSettings(top_k, threshold, strategy="eliminate").detector()
    flags, targets = builder.false_negatives(columns, rows), builder(columns, rows)
    assert torch.equal(targets.mask, rows.mask | flags)
    assert torch.equal(targets.target, rows.positive_one_hot())
    assert not (targets.target.bool() & targets.mask).any()
    assert torch.equal(cancelled(rows, targets), flags.sum(dim=1))


@settings_
@given(step=steps, top_k=st.integers(1, 6), threshold=st.floats(-1.0, 1.0),
       aggregation=st.sampled_from(["max", "mean"]), backend=st.sampled_from(["faiss-flat", "auto"]))
def test_search_backends_find_the_same_false_negatives(step, top_k, threshold, aggregation, backend):
    columns, rows = step
    reference = DetectionSettings(top_k, threshold, aggregation=aggregation, search_backend="torch").detector()
    other = DetectionSettings(top_k, threshold, aggregation=aggregation, search_backend=backend).detector()
    scores = aggregated_scores(columns, rows, aggregation)
    near_tie = (scores[:, :, None] - scores[:, None, :]).abs() + torch.eye(scores.shape[1]) < 1e-5
    if not near_tie.any() and not ((scores - threshold).abs() < 1e-5).any():
        assert torch.equal(reference.false_negatives(columns, rows), other.false_negatives(columns, rows))


def test_bank_flags_memory_columns_that_hold_found_images():
    generator = torch.Generator().manual_seed(3)
    images = unit(6, 4, generator=generator)
    bank = EmbeddingBank(num_samples=6, dim=4, backend="torch")
    bank.update(images, torch.arange(6))
    memory = Memory(8, 4)
    memory.enqueue(images[[1, 2, 1, 5]], torch.tensor([1, 2, 1, 5]))
    keys, ids = images[:2], torch.tensor([0, 1])
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=False)
    rows = columns.rows(ids, [None], keys=keys, detectors=keys[:, None])
    builder = DetectionSettings(top_k=1, threshold=-1.0).detector(bank)
    flags = builder.false_negatives(columns, rows)
    scores = keys @ images.T
    for row, own in enumerate([0, 1]):
        best = max((j for j in range(6) if j != own), key=lambda j: scores[row, j])
        holds = (columns.ids == best) & ~rows.mask[row, 1:]
        assert torch.equal(flags[row, 1:], holds)
        assert not flags[row, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"top_k": 0}, "top_k"), ({"threshold": 1.5}, "threshold"), ({"threshold": -1.01}, "threshold"),
     ({"strategy": "ignore"}, "strategy"), ({"aggregation": "median"}, "aggregation"),
     ({"search_backend": "annoy"}, "search_backend")],
)
def test_bad_hyperparameters_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetectionSettings(**kwargs).detector()


def fnc_on_moco(**config):
    """FNC on MoCo v2 (the registry's ``fnc-moco``) on a width-8 ResNet-18 with 16-px views."""
    bank = config.pop("bank", None)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16), bank=bank)
    return method_spec("fnc-moco")(resnet("resnet18", width=8), setup=setup, **config)


def test_fnc_on_moco_rejects_zero_detection_views():
    with pytest.raises(ValueError, match="detection_views") as error:
        fnc_on_moco(detection_views=0)
    assert error.value.name == "detection_views"


def test_fnc_training_step_runs_and_reports_detected_false_negatives():
    torch.manual_seed(0)
    method = fnc_on_moco(detection_views=3, top_k=2, threshold=-1.0, queue_size=16)
    assert method.temperature == 0.2 and method.detection_views + 1 == 3  # the key counts as one
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    for step in range(3):
        output = method(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) + 8 * step)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_optimizer_step(step, 3)
    assert torch.isfinite(output.loss)
    assert output.rows.detectors.shape[:2] == (8, 3)
    detected = step_diagnostics(output, None)["false_negatives_per_row"]
    assert not detected.requires_grad and detected == 2  # memory filled, threshold -1: top_k per row


def test_fnc_with_a_bank_trains_and_fills_the_bank():
    torch.manual_seed(0)
    bank = EmbeddingBank(num_samples=16, dim=128, backend="torch")
    method = fnc_on_moco(detection_views=2, strategy="eliminate", queue_size=16, bank=bank, threshold=-1.0)
    for step in range(3):
        ids = torch.arange(8) + 8 * (step % 2)
        output = method(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), ids)
        output.loss.backward()
        method.after_optimizer_step(step, 3)
    assert torch.isfinite(output.loss)
    assert method.targets.bank is bank and bank.written.all()
    assert "bank.embeddings" in method.state_dict()
    assert step_diagnostics(output, None)["false_negatives_per_row"] > 0


def test_memory_search_keeps_one_index_and_asks_for_no_more_than_the_filled_slots(recording_search):
    builder = DetectionSettings(top_k=3, threshold=-1.0, search_backend="faiss-flat").detector()
    exact = DetectionSettings(top_k=3, threshold=-1.0, search_backend="torch").detector()
    recording, indexes = recording_search("faiss-flat"), []
    for seed in (5, 6):
        columns, rows = random_step(seed, batch=4, views=3, fill=32, capacity=4096, dim=8, duplicates=2)
        assert torch.equal(builder.false_negatives(columns, rows), exact.false_negatives(columns, rows))
        column_false_negatives(columns, rows.detectors, rows.ids, recording, 3, -1.0, "max")
        indexes.append(builder.search.faiss_index)
    assert indexes[0] is indexes[1] and indexes[0].ntotal == 34
    assert max(recording.asked) <= 34
