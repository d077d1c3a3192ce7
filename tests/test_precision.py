"""bf16 autocast leaves the label math in fp32 (DESIGN, "Performance").

Logits, targets, refinery distributions and false-negative scores are computed in
fp32 from fp32-upcast embeddings; the queue and the memory stay fp32. For every
method, the column/target/loss stage is run on the same fp32 embeddings with and
without ``torch.autocast("cpu", torch.bfloat16)`` and must agree to 1e-3 relative;
whole steps under autocast must give fp32 logits and targets and keep fp32 unit keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.mixers import MixParams
from softcontrast.components.neighbors import NeighborSearch
from softcontrast.components.targets import FalseNegativeCancellation
from softcontrast.components.targets.false_negatives import aggregated_neighbors, aggregated_scores
from softcontrast.methods import ContrastiveMethod, Setup, method_spec

BATCH, DIM, QUEUE, VIEWS, SUPPORT = 6, 16, 24, 3, 3
VIEW = ViewRecipe(size=8)
RELATIVE = 1e-3

METHODS = {
    "moco": ("moco", dict(queue_size=QUEUE)),
    "sce": ("sce", dict(queue_size=QUEUE)),
    "fnc-attract": ("fnc", dict(support_views=VIEWS - 2, top_k=3, threshold=0.2, memory_size=QUEUE)),
    "fnc-eliminate": ("fnc", dict(support_views=VIEWS - 2, top_k=3, threshold=0.2, strategy="eliminate",
                                  memory_size=QUEUE)),
    "fnc-on-moco": ("fnc-moco", dict(detection_views=SUPPORT, top_k=3, threshold=0.2, queue_size=QUEUE)),
    "sane": ("sane", dict(mu_start=2.0, mu_end=2.0, queue_size=QUEUE)),
}


def tiny(name: str) -> ContrastiveMethod:
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    method, overrides = METHODS[name]
    setup = Setup(projector=projector_for(backbone, 16, DIM), view=lambda recipe: VIEW)
    return method_spec(method)(backbone, setup=setup, **overrides)


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def near(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors close to ``x``: queries resemble their keys, so the losses are of a trained step's size."""
    return F.normalize(x + 0.6 * torch.randn(x.shape, generator=generator), dim=-1)


def filled(method, generator: torch.Generator):
    """The method with its queue (or view memory) full of fp32 unit keys, some with the batch's ids."""
    ids = torch.randint(0, 3 * BATCH, (QUEUE,), generator=generator)
    if is_view_step(method):
        method.memory.enqueue(unit(QUEUE, DIM, generator=generator), ids, ids % VIEWS)
    else:
        method.memory.enqueue(unit(QUEUE, DIM, generator=generator), ids)
    return method


def is_view_step(method: ContrastiveMethod) -> bool:
    """FNC as published: every view an anchor and a column."""
    return len(method.passes[0].columns) > 1


def detects(method: ContrastiveMethod) -> bool:
    return isinstance(method.targets, FalseNegativeCancellation)


# --- the stage after the encoders, on fixed fp32 embeddings ------------------------------------


def queue_stage(method, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """MoCo v2, SCE and FNC on MoCo: columns ``[k_i | Q]``, the method's target, its loss."""
    keys = unit(BATCH, DIM, generator=generator)
    queries = near(keys, generator)
    support = torch.stack([keys, *(near(keys, generator) for _ in range(SUPPORT - 1))], dim=1)
    ids = torch.arange(BATCH)

    def stage():
        columns = Columns.build(keys[:, None], ids, method.memory, method.batch_negatives)
        rows = columns.rows(ids, [None], keys=keys, detectors=support)
        targets = method.targets(columns, rows)
        parts = {"found": method.targets.false_negatives(columns, rows)} if detects(method) else {}
        logits = columns.scores(queries) / method.temperature
        loss = soft_cross_entropy(logits, targets.target, targets.mask, reduction="none")
        return {**parts, "target": targets.target, "mask": targets.mask, "logits": logits, "loss": loss}

    return stage


def sane_stage(method: ContrastiveMethod, generator: torch.Generator):
    """SANE: ``p``, ``q`` and ``ȳ`` over ``[batch keys | Q]``, the mixed label and eq. 9."""
    keys = unit(BATCH, DIM, generator=generator)
    queries, virtual = near(keys, generator), near(keys, generator)
    ids = torch.arange(BATCH)
    mixing = MixParams(torch.full((BATCH,), 0.3), torch.roll(torch.arange(BATCH), 1))

    def stage():
        columns = Columns.build(keys[:, None], ids, method.memory, batch_negatives=True)
        rows = columns.rows(ids, [None], keys=keys)
        refined = method.mixed.labels(columns, rows)
        mixed = method.mixed.mixer.mix_targets(refined, mixing)
        logits = columns.scores(queries) / method.temperature
        mixed_logits = columns.scores(virtual) / method.temperature
        lam = method.mixed.weight
        loss = ((1 - lam) * soft_cross_entropy(logits, rows.positive_one_hot(), rows.mask, "none")
                + lam * soft_cross_entropy(mixed_logits, mixed.target, mixed.mask, reduction="none"))
        return {"target": refined.target, "mixed_target": mixed.target, "logits": logits, "loss": loss}

    return stage


def view_stage(method: ContrastiveMethod, generator: torch.Generator):
    """FNC as published: view columns, detected false negatives, targets, loss."""
    momentum = unit(BATCH, VIEWS, DIM, generator=generator)
    anchors = near(momentum, generator).reshape(BATCH * VIEWS, DIM)
    ids = torch.arange(BATCH)
    builder = method.targets

    def stage():
        columns = Columns.build(momentum, ids, method.memory, memory_counts_block=method.memory_counts_block)
        rows = columns.rows(ids, list(range(VIEWS)), detectors=momentum)
        found = builder.false_negatives(columns, rows)
        targets = builder(columns, rows)
        logits = columns.scores(anchors) / method.temperature
        loss = method.loss_scale * soft_cross_entropy(logits, targets.target, targets.mask)
        return {"found": found, "target": targets.target, "mask": targets.mask, "logits": logits, "loss": loss}

    return stage


def stage_of(name: str, generator: torch.Generator):
    method = filled(tiny(name), generator)
    if name == "sane":
        return sane_stage(method, generator)
    if is_view_step(method):
        return view_stage(method, generator)
    return queue_stage(method, generator)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_leaves_targets_logits_and_loss_at_fp32(name):
    """On the same fp32 embeddings, every target (SCE's similarity distribution, SANE's
    refined and mixed labels, FNC's detected false negatives and targets), every logit
    and every row's loss under bf16 autocast is the fp32 one to 1e-3 relative, in fp32.
    Before the fix the column matmul ran in bf16: SCE's target was 6% off."""
    stage = stage_of(name, torch.Generator().manual_seed(3))
    expected = stage()
    with bf16():
        actual = stage()
    if name.startswith("fnc"):
        assert expected["found"].any(), "the example must detect false negatives"
    for part, value in expected.items():
        assert actual[part].dtype == value.dtype, part
        if value.is_floating_point():
            assert value.dtype == torch.float32, part
            torch.testing.assert_close(actual[part], value, rtol=RELATIVE, atol=1e-7, msg=part)
        else:
            assert torch.equal(actual[part], value), part


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_false_negative_scores_under_bf16_autocast_are_the_fp32_scores(aggregation):
    """FNC's detection scores ``agg_s(u_is · x)`` from the exact (torch) search: fp32 and
    equal to the scores without autocast, to 1e-3 relative. Before the fix the search's
    matmul ran in bf16 and returned bf16 scores."""
    generator = torch.Generator().manual_seed(4)
    search = NeighborSearch("torch", chunk_size=7)
    search.add(unit(QUEUE, DIM, generator=generator))
    support = unit(BATCH, SUPPORT, DIM, generator=generator)
    expected = aggregated_neighbors(search, support, 5, aggregation)
    with bf16():
        actual = aggregated_neighbors(search, support, 5, aggregation)
    assert actual[0].dtype == expected[0].dtype == torch.float32
    torch.testing.assert_close(actual[0], expected[0], rtol=RELATIVE, atol=1e-7)
    assert torch.equal(actual[1], expected[1])


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_false_negative_scores_of_every_column_under_bf16_autocast_are_the_fp32_scores(aggregation):
    """The sync-free exact detection scores every column (:func:`aggregated_scores`):
    fp32 and equal to the scores without autocast, to 1e-3 relative."""
    generator = torch.Generator().manual_seed(5)
    vectors, support = unit(QUEUE, DIM, generator=generator), unit(BATCH, SUPPORT, DIM, generator=generator)
    expected = aggregated_scores(support, vectors, aggregation, chunk_size=7)
    with bf16():
        actual = aggregated_scores(support, vectors, aggregation, chunk_size=7)
    assert actual.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=RELATIVE, atol=1e-7)


# --- whole steps under autocast -----------------------------------------------------------------


def images(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (BATCH, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def assert_fp32_unit_rows(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_whole_steps_under_bf16_autocast_keep_the_label_math_and_the_queue_in_fp32(name):
    """Two training steps under bf16 autocast: the loss is fp32; the queue (or view memory)
    stays fp32 and holds keys normalised in fp32 (unit to 1e-6, where a bf16 normalisation
    is off by ~1e-3). MoCo, SCE and FNC on MoCo: the step's query embeddings, logits and
    targets are fp32, the logits are the fp32 product of those embeddings and the step's
    loss is the fp32 loss of them. SANE: the refined label of the step is fp32 and is the
    fp32 label of the step's columns."""
    method = tiny(name)
    ids = torch.arange(BATCH)
    refined = []
    if name == "sane":
        hook = method.mixed.labels.register_forward_hook(
            lambda module, inputs, output: refined.append((inputs, output)))
    for step in range(2):
        with bf16():
            output = method(images(step), ids + step * BATCH)
        assert output.loss.dtype == torch.float32
        output.loss.backward()
        method.after_optimizer_step(step, 10)
    memory = method.memory.embeddings
    filled_rows = method.memory.ids >= 0
    assert filled_rows.any()
    assert memory.dtype == torch.float32
    assert_fp32_unit_rows(memory[filled_rows])

    if name in ("moco", "sce", "fnc-on-moco"):
        queries = []
        hook = method.online.register_forward_hook(lambda module, inputs, output: queries.append(output))
        with torch.no_grad(), bf16():
            output = method(images(5), ids)
            query = queries[0]
            logits = output.columns.scores(query) / method.temperature
        hook.remove()
        assert_fp32_unit_rows(query)
        assert output.targets.target.dtype == logits.dtype == torch.float32
        expected = output.columns.scores(query.double()) / method.temperature  # float64, without autocast
        assert expected.dtype == torch.float64
        torch.testing.assert_close(logits.double(), expected, rtol=RELATIVE, atol=1e-6)
        loss = soft_cross_entropy(logits, output.targets.target, output.targets.mask)
        torch.testing.assert_close(output.loss, loss, rtol=RELATIVE, atol=1e-6)
    if name == "sane":
        hook.remove()
        assert refined
        for (columns, rows), targets in refined:
            assert targets.target.dtype == torch.float32
            torch.testing.assert_close(targets.target, method.mixed.labels(columns, rows).target, rtol=RELATIVE,
                                       atol=1e-7)
