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

from softcontrast.components.augment import ViewRecipe, to_float
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.mixers import MixParams
from softcontrast.components.multiview import ViewColumns
from softcontrast.components.neighbors import NeighborSearch
from softcontrast.components.targets.false_negatives import aggregated_neighbors, aggregated_scores
from softcontrast.components.targets.view_false_negatives import view_fnc_loss
from softcontrast.methods import FNC, SANE, SCE, FNCOnMoCo, MoCoV2

BATCH, DIM, QUEUE, VIEWS, SUPPORT = 6, 16, 24, 3, 3
VIEW = ViewRecipe(size=8)
RELATIVE = 1e-3

METHODS = {
    "moco": lambda backbone, head: MoCoV2(backbone, head, view=VIEW, queue_size=QUEUE),
    "sce": lambda backbone, head: SCE(backbone, head, query_view=VIEW, key_view=VIEW, queue_size=QUEUE),
    "fnc-attract": lambda backbone, head: FNC(backbone, head, support_views=VIEWS - 2, top_k=3, threshold=0.2,
                                              view=VIEW, memory_size=QUEUE),
    "fnc-eliminate": lambda backbone, head: FNC(backbone, head, support_views=VIEWS - 2, top_k=3, threshold=0.2,
                                                strategy="eliminate", view=VIEW, memory_size=QUEUE),
    "fnc-on-moco": lambda backbone, head: FNCOnMoCo(backbone, head, support_views=SUPPORT, top_k=3, threshold=0.2,
                                                    view=VIEW, queue_size=QUEUE),
    "sane": lambda backbone, head: SANE(backbone, head, mu_start=2.0, mu_end=2.0, query_view=VIEW, key_view=VIEW,
                                        queue_size=QUEUE),
}


def tiny(name: str):
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    return METHODS[name](backbone, projector_for(backbone, 16, DIM))


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
    if isinstance(method, FNC):
        method.queue.enqueue(unit(QUEUE, DIM, generator=generator), ids, ids % VIEWS)
    else:
        method.queue.enqueue(unit(QUEUE, DIM, generator=generator), ids)
    return method


# --- the stage after the encoders, on fixed fp32 embeddings ------------------------------------


def queue_stage(method, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """MoCo v2, SCE and FNC on MoCo: columns ``[k_i | Q]``, the method's target, its loss."""
    keys = unit(BATCH, DIM, generator=generator)
    queries = near(keys, generator)
    support = torch.stack([keys, *(near(keys, generator) for _ in range(SUPPORT - 1))], dim=1)
    ids = torch.arange(BATCH)

    def stage():
        columns = LogitColumns.build(keys, ids, method.queue, method.in_batch_keys)
        targets = method.target_builder(columns, support if method.support_views else None)
        parts = {"found": method.target_builder.false_negatives(columns, support)} if method.support_views else {}
        logits = columns.scores(queries) / method.temperature
        loss = soft_cross_entropy(logits, targets.target, targets.mask, reduction="none")
        return {**parts, "target": targets.target, "mask": targets.mask, "logits": logits, "loss": loss}

    return stage


def sane_stage(method: SANE, generator: torch.Generator):
    """SANE: ``p``, ``q`` and ``ȳ`` over ``[batch keys | Q]``, the mixed label and eq. 9."""
    keys = unit(BATCH, DIM, generator=generator)
    queries, virtual = near(keys, generator), near(keys, generator)
    ids = torch.arange(BATCH)
    mixing = MixParams(torch.full((BATCH,), 0.3), torch.roll(torch.arange(BATCH), 1))

    def stage():
        columns = LogitColumns.build(keys, ids, method.queue, in_batch=True)
        refined = method.refinery(columns)
        mixed = method.mixer.mix_targets(refined, mixing)
        logits = columns.scores(queries) / method.temperature
        mixed_logits = columns.scores(virtual) / method.temperature
        loss = ((1 - method.lam) * soft_cross_entropy(logits, columns.positive_one_hot(), columns.mask, "none")
                + method.lam * soft_cross_entropy(mixed_logits, mixed.target, mixed.mask, reduction="none"))
        return {"target": refined.target, "mixed_target": mixed.target, "logits": logits, "loss": loss}

    return stage


def view_stage(method: FNC, generator: torch.Generator):
    """FNC as published: view columns, detected false negatives, targets, loss."""
    momentum = unit(BATCH, VIEWS, DIM, generator=generator)
    anchors = near(momentum, generator).reshape(BATCH * VIEWS, DIM)
    ids = torch.arange(BATCH)
    builder = method.target_builder

    def stage():
        columns = ViewColumns.build(momentum, ids, method.queue)
        found = builder.false_negatives(columns, momentum, ids)
        layout = columns.layout(ids.repeat_interleave(VIEWS), columns.own_columns(BATCH))
        targets = builder(columns, layout, found.repeat_interleave(VIEWS, dim=0))
        logits = columns.scores(anchors) / method.temperature
        loss = view_fnc_loss(anchors, columns, targets, method.temperature, method.loss_scale)
        return {"found": found, "target": targets.target, "mask": targets.mask, "logits": logits, "loss": loss}

    return stage


def stage_of(name: str, generator: torch.Generator):
    method = filled(tiny(name), generator)
    if name == "sane":
        return sane_stage(method, generator)
    if name.startswith("fnc-") and name != "fnc-on-moco":
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
    targets are fp32 and the logits are the fp32 product of those embeddings. SANE: the
    refined label of the step is fp32 and is the fp32 label of the step's columns."""
    method = tiny(name)
    ids = torch.arange(BATCH)
    refined = []
    if name == "sane":
        hook = method.refinery.register_forward_hook(lambda module, inputs, output: refined.append((inputs[0], output)))
    for step in range(2):
        with bf16():
            output = method(images(step), ids + step * BATCH)
        assert output.loss.dtype == torch.float32
        output.loss.backward()
        method.after_optimizer_step(step, 10)
    memory = method.queue.embeddings if isinstance(method, FNC) else method.queue.keys
    filled_rows = method.queue.ids >= 0
    assert filled_rows.any()
    assert_fp32_unit_rows(memory[filled_rows])

    if name in ("moco", "sce", "fnc-on-moco"):
        pixels = to_float(images(5))
        with torch.no_grad(), bf16():
            views, keys = method.query_augment(pixels), method.embed_keys(method.key_augment(pixels))
            support = method.support_embeddings(pixels, keys)
            contrast = method.contrast(views, keys, ids, support)
        assert_fp32_unit_rows(contrast.query)
        assert contrast.targets.target.dtype == contrast.logits.dtype == torch.float32
        expected = contrast.columns.scores(contrast.query) / method.temperature
        torch.testing.assert_close(contrast.logits, expected, rtol=RELATIVE, atol=1e-6)
    if name == "sane":
        hook.remove()
        assert refined
        for columns, targets in refined:
            assert targets.target.dtype == torch.float32
            torch.testing.assert_close(targets.target, method.refinery(columns).target, rtol=RELATIVE, atol=1e-7)
