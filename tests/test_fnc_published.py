"""FNC as published: the multi-view objective against plain loops, its invariants, the method."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.components.multiview import embed_views
from softcontrast.components.targets.false_negatives import column_false_negatives
from softcontrast.evaluation import step_diagnostics
from softcontrast.cli import build_parser, make_method, resolve
from softcontrast.methods import Setup, method_spec
from softcontrast.methods.common import DetectionSettings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def unit(*shape, generator, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def step(seed, images, views, fill, capacity, dim=4, own_copies=0, dtype=torch.float32):
    """Anchors ``B×V×D``, momentum ``B×V×D``, ids and a memory whose ids collide with the batch."""
    generator = torch.Generator().manual_seed(seed)
    anchors = unit(images, views, dim, generator=generator, dtype=dtype)
    momentum = unit(images, views, dim, generator=generator, dtype=dtype)
    ids = torch.arange(images) * 2
    memory = Memory(capacity, dim).to(dtype)
    if fill:
        memory.enqueue(unit(fill, dim, generator=generator, dtype=dtype),
                       torch.randint(0, 2 * images + 3, (fill,), generator=generator),
                       torch.randint(0, views, (fill,), generator=generator))
    if own_copies:  # exact copies of the batch's own views, under their own ids: never false negatives
        rows = torch.arange(own_copies) % images
        memory.enqueue(momentum[rows, 0], ids[rows], torch.zeros(own_copies, dtype=torch.long))
    return anchors, momentum, ids, memory


def library_loss(anchors, momentum, ids, memory, builder, temperature, scale=2.0, memory_counts_block=True,
                 gradient=False):
    """The step's FNC loss: every view an anchor and a column (its own masked), the momentum
    views the detectors; ``scale ×`` the soft cross-entropy of ``z·cᵀ/T`` against the target."""
    images, views, dim = anchors.shape
    columns = Columns.build(momentum, ids, memory, memory_counts_block=memory_counts_block, gradient=gradient)
    rows = columns.rows(ids, list(range(views)), detectors=momentum)
    targets = builder(columns, rows)
    logits = columns.scores(anchors.reshape(images * views, dim)) / temperature
    loss = scale * soft_cross_entropy(logits, targets.target, targets.mask)
    return loss, columns, targets.found, rows, targets


def slots(memory):
    """Every memory slot as (embedding, id), in slot order."""
    return [(memory.embeddings[m], int(memory.ids[m])) for m in range(memory.capacity)]


def loop_loss(anchors, momentum, ids, older, top_k, threshold, strategy, temperature, aggregation="max"):
    """DESIGN's equations with plain Python loops: columns ``[momentum views | older]``, detectors
    ``momentum``, ``older`` a list of (embedding, id); differentiable in the anchors and columns."""
    images, views, _ = anchors.shape
    columns = [(momentum[g, v], int(ids[g]), ("block", g, v)) for g in range(images) for v in range(views)]
    columns += [(embedding, int(column_id), ("memory", m)) for m, (embedding, column_id) in enumerate(older)]
    total = 0.0
    for i in range(images):
        scores = []
        for n, (c, column_id, _) in enumerate(columns):
            if column_id == int(ids[i]) or column_id == -1:
                continue
            per_view = [float((momentum[i, v] @ c).detach()) for v in range(views)]
            scores.append((max(per_view) if aggregation == "max" else sum(per_view) / views, n))
        scores.sort(reverse=True)
        found = {n for score, n in scores[:top_k] if score > threshold}
        for a in range(views):
            own = i * views + a
            s = {n: anchors[i, a] @ c / temperature for n, (c, _, _) in enumerate(columns)}
            positives = [n for n, (_, cid, where) in enumerate(columns)
                         if where[0] == "block" and cid == int(ids[i]) and n != own]
            allowed = [n for n, (_, cid, where) in enumerate(columns)
                       if n != own and cid != -1 and not (where[0] == "memory" and cid == int(ids[i]))]
            if strategy == "eliminate":
                allowed = [n for n in allowed if n not in found]
                pulled = positives
            else:
                pulled = positives + sorted(found)
            lse = torch.log(sum(torch.exp(s[n]) for n in allowed))
            total += lse - sum(s[n] for n in pulled) / len(pulled)
    return 2.0 / views * total / images


@pytest.mark.parametrize("strategy", ["attract", "eliminate"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_loss_equals_the_equations_in_plain_loops_in_float64(strategy, aggregation):
    anchors, momentum, ids, memory = step(seed=7, images=3, views=3, fill=4, capacity=6, own_copies=2,
                                          dtype=torch.float64)
    assert memory.filled == 6 and (memory.ids == ids[0]).any()
    threshold = -0.05
    builder = DetectionSettings(top_k=4, threshold=threshold, strategy=strategy, aggregation=aggregation).detector()
    # this library's layout (the block in front of every memory slot): a 6-entry memory behind a 9-entry block
    loss, columns, found, _, _ = library_loss(anchors, momentum, ids, memory, builder, temperature=0.1,
                                              memory_counts_block=False)
    expected = loop_loss(anchors, momentum, ids, slots(memory), 4, threshold, strategy, 0.1, aggregation)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - expected) < 1e-10
    assert 0 < found.sum() < found.numel()  # the case detects some but not all columns


def aggregated(momentum, columns, aggregation):
    per_view = torch.einsum("bvd,nd->bvn", momentum, columns.shared)
    return per_view.amax(dim=1) if aggregation == "max" else per_view.mean(dim=1)


steps = st.builds(step, seed=st.integers(0, 10_000), images=st.integers(1, 4), views=st.integers(2, 4),
                  fill=st.integers(0, 12), capacity=st.integers(12, 16), own_copies=st.integers(0, 3))
settings_ = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize("strategy", ["attract", "eliminate"])
def test_the_memory_counts_the_block_as_published_in_float64(strategy):
    """Columns ``[block | memory[:-V·B]]`` of an official memory of ``capacity`` rows, step after step."""
    images, views, dim, capacity = 2, 3, 4, 16  # blocks of 6 entries, which do not divide the memory
    generator = torch.Generator().manual_seed(3)
    memory = Memory(capacity, dim).to(torch.float64)
    official = [(torch.zeros(dim, dtype=torch.float64), -1, -1)] * capacity  # (embedding, id, view), head first
    builder = DetectionSettings(top_k=3, threshold=-0.2, strategy=strategy).detector()
    for _ in range(5):
        anchors = unit(images, views, dim, generator=generator, dtype=torch.float64)
        momentum = unit(images, views, dim, generator=generator, dtype=torch.float64)
        ids = torch.randperm(4, generator=generator)[:images]  # images recur, so the memory holds their views
        loss, columns, found, _, _ = library_loss(anchors, momentum, ids, memory, builder, temperature=0.1)
        block = [(momentum[g, v], int(ids[g]), v) for g in range(images) for v in range(views)]
        official = block + official[:-len(block)]
        assert columns.num_columns == capacity
        assert torch.equal(columns.shared, torch.stack([embedding for embedding, _, _ in official]))
        assert columns.ids.tolist() == [column_id for _, column_id, _ in official]
        assert columns.views.tolist() == [view for _, _, view in official]
        older = [(embedding, column_id) for embedding, column_id, _ in official[len(block):]]
        expected = loop_loss(anchors, momentum, ids, older, 3, -0.2, strategy, 0.1)
        assert abs(loss.item() - expected.item()) < 1e-10
        memory.enqueue(*columns.block_entries())
    assert 0 < found.sum() < found.numel() and (memory.ids[:, None] == ids).any()


@pytest.mark.parametrize("strategy", ["attract", "eliminate"])
def test_without_memory_the_online_views_are_columns_and_detectors_with_gradient_in_float64(strategy):
    anchors, _, ids, _ = step(seed=5, images=3, views=3, fill=0, capacity=0, dtype=torch.float64)
    anchors.requires_grad_()
    builder = DetectionSettings(top_k=2, threshold=-0.1, strategy=strategy).detector()
    loss, columns, found, _, _ = library_loss(anchors, anchors, ids, None, builder, 0.1, gradient=True)
    (grad,) = torch.autograd.grad(loss, anchors)
    expected = loop_loss(anchors, anchors, ids, [], 2, -0.1, strategy, 0.1)
    (expected_grad,) = torch.autograd.grad(expected, anchors)
    assert abs(loss.item() - expected.item()) < 1e-10
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)
    assert 0 < found.sum() < found.numel()


def fnc(**config):
    """FNC as published (the registry's ``fnc``) on a width-4 ResNet-18 with 16-px views."""
    bank, global_batch = config.pop("bank", None), config.pop("global_batch", 256)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16), global_batch=global_batch, bank=bank)
    return method_spec("fnc")(resnet("resnet18", width=4), setup=setup, **config)


def test_published_fnc_without_memory_trains_through_the_online_columns_in_float64():
    """The method's gradient equals the plain loop with the online views as columns and detectors;
    ``column_layout="library"`` (momentum columns) gives the same loss and the gradient without them."""
    assert fnc(memory_size=0).online_columns and not fnc(memory_size=0, column_layout="library").online_columns
    torch.manual_seed(0)
    method = fnc(support_views=1, top_k=2, threshold=0.0, memory_size=0).double()
    images, ids = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.arange(4)
    parameters = list(method.online.parameters())
    for online_columns, columns_of in ((True, lambda z: z), (False, lambda z: z.detach())):
        method.online_columns = online_columns  # published, then the library layout
        state = method.streams.state_dict()
        views = method.views(images, method.streams.local)
        method.streams.load_state_dict(state)  # the step draws the same views
        loss = method(images, ids).loss
        grads = torch.autograd.grad(loss, parameters)
        anchors = embed_views(method.encode, views).transpose(0, 1)  # z (train-mode BN: batch statistics)
        expected = loop_loss(anchors, columns_of(anchors), ids, [], 2, 0.0, "attract", 0.1)
        expected_grads = torch.autograd.grad(expected, parameters)
        assert abs(loss.item() - expected.item()) < 1e-10
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-10)


@settings_
@given(case=steps, top_k=st.integers(1, 8), threshold=st.floats(-1.0, 1.0),
       aggregation=st.sampled_from(["max", "mean"]))
def test_detection_is_top_k_of_other_images_view_entries_above_threshold(case, top_k, threshold, aggregation):
    anchors, momentum, ids, memory = case
    builder = DetectionSettings(top_k, threshold, aggregation=aggregation).detector()
    columns = Columns.build(momentum, ids, memory, memory_counts_block=False)
    found = builder.false_negatives(columns, columns.rows(ids, list(range(momentum.shape[1])), detectors=momentum))
    own_or_empty = (columns.ids[None, :] == ids[:, None]) | (columns.ids == -1)[None, :]
    assert not (found & own_or_empty).any()
    assert (found.sum(dim=1) <= top_k).all()
    scores = aggregated(momentum, columns, aggregation)
    assert (scores[found] > threshold - 1e-6).all()
    for row in range(ids.shape[0]):
        above = ~own_or_empty[row] & (scores[row] > threshold + 1e-5)
        assert found[row].sum() >= min(top_k, int(above.sum()))
        if found[row].any():
            assert (scores[row][above & ~found[row]] <= scores[row][found[row]].min() + 1e-5).all()


@settings_
@given(case=steps, top_k=st.integers(1, 8), threshold=st.floats(-1.0, 1.0),
       strategy=st.sampled_from(["attract", "eliminate"]))
def test_targets_spread_equal_mass_over_positives_and_mask_the_own_column(case, top_k, threshold, strategy):
    anchors, momentum, ids, memory = case
    builder = DetectionSettings(top_k, threshold, strategy=strategy).detector()
    loss, columns, found, layout, targets = library_loss(anchors, momentum, ids, memory, builder, 0.1,
                                                         memory_counts_block=False)
    views = anchors.shape[1]
    rows = torch.arange(ids.shape[0] * views)
    assert targets.mask[rows, layout.own].all() and (targets.target[rows, layout.own] == 0).all()
    assert (layout.positive.sum(dim=1) == views - 1).all()
    row_found = found.repeat_interleave(views, dim=0)
    members = layout.positive | (row_found if strategy == "attract" else torch.zeros_like(row_found))
    torch.testing.assert_close(targets.target, members.float() / members.sum(dim=1, keepdim=True))
    if strategy == "eliminate":
        assert torch.equal(targets.mask, layout.mask | row_found)
    else:
        assert torch.equal(targets.mask, layout.mask)
    assert not (targets.target.bool() & targets.mask).any()
    assert torch.isfinite(loss)


@settings_
@given(seed=st.integers(0, 10_000), images=st.integers(1, 5), strategy=st.sampled_from(["attract", "eliminate"]),
       temperature=st.floats(0.05, 1.0))
def test_without_support_views_or_memory_it_is_multi_positive_infonce_over_the_views(seed, images, strategy,
                                                                                     temperature):
    anchors, momentum, ids, _ = step(seed, images, views=2, fill=0, capacity=0)
    builder = DetectionSettings(threshold=1.0, strategy=strategy).detector()  # no cosine exceeds 1: nothing detected
    loss, *_ = library_loss(anchors, momentum, ids, None, builder, temperature, scale=1.0)
    z, c = anchors.reshape(-1, anchors.shape[-1]), momentum.reshape(-1, momentum.shape[-1])
    logits = (z @ c.T / temperature).masked_fill(torch.eye(2 * images, dtype=torch.bool), float("-inf"))
    partner = torch.arange(2 * images) ^ 1  # the other view of the same image
    expected = F.cross_entropy(logits, partner)
    torch.testing.assert_close(loss, expected)
    loss_scaled, *_ = library_loss(anchors, momentum, ids, None, builder, temperature)
    torch.testing.assert_close(loss_scaled, 2 * expected)


def test_bank_detection_counts_images_and_flags_all_their_view_entries():
    generator = torch.Generator().manual_seed(0)
    anchors, momentum, ids, memory = step(1, images=2, views=2, fill=6, capacity=6)
    embeddings = unit(8, 4, generator=generator)
    bank = EmbeddingBank(num_samples=8, dim=4, backend="torch")
    bank.update(embeddings, torch.arange(8))
    columns = Columns.build(momentum, ids, memory, memory_counts_block=True)
    rows = columns.rows(ids, [0, 1], detectors=momentum)
    found = DetectionSettings(top_k=1, threshold=-1.0).detector(bank).false_negatives(columns, rows)
    scores = torch.einsum("bvd,nd->bvn", momentum, embeddings).amax(dim=1)
    scores[torch.arange(2), ids] = -2.0
    for row in range(2):
        best = int(scores[row].argmax())
        assert torch.equal(found[row], columns.ids == best)
    assert found.any()


@pytest.mark.parametrize(
    "config, field",
    [({"support_views": -1}, "support_views"), ({"top_k": 0}, "top_k"), ({"threshold": 1.5}, "threshold"),
     ({"threshold": -1.01}, "threshold"), ({"memory_size": -1}, "memory_size"), ({"loss_scale": 0}, "loss_scale"),
     ({"strategy": "ignore"}, "strategy"), ({"aggregation": "median"}, "aggregation"),
     ({"column_layout": "ours"}, "column_layout")],
)
def test_bad_settings_name_their_field(config, field):
    with pytest.raises(ValueError, match=field) as error:
        fnc(**config)
    assert error.value.name == field


def test_a_memory_smaller_than_one_block_is_refused():
    method = fnc(support_views=2, memory_size=100)
    method.check_global_batch(25)  # 25 × 4 = 100 entries: fits
    with pytest.raises(ValueError, match=r"memory_size.*104"):
        method.check_global_batch(26)
    fnc(memory_size=0).check_global_batch(1000)  # no memory
    with pytest.raises(ValueError, match="smaller than one block"):
        Memory(3, 2).entries(4)  # the published read order needs the memory to hold one block


def test_published_defaults():
    method = fnc()
    assert len(method.views.recipes) == 10 and method.temperature == 0.1 and method.momentum == 0.999
    assert method.loss_scale == 2.0 and method.memory.capacity == 16 * 256  # 16 × the global batch
    assert method.memory_counts_block and not method.online_columns
    builder = method.targets
    assert (builder.top_k, builder.threshold, builder.strategy, builder.aggregation) == (10, 0.7, "attract", "max")


@pytest.mark.parametrize("strategy", ["attract", "eliminate"])
def test_training_steps_fill_the_memory_with_view_entries_and_report_distinct_images(strategy):
    torch.manual_seed(0)
    method = fnc(support_views=1, top_k=4, threshold=-1.0, memory_size=30, strategy=strategy)
    labels = torch.arange(16) % 2
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    for index in range(3):
        ids = torch.arange(8) + 8 * (index % 2)
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
        output = method(images, ids)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_optimizer_step(index, 3)
    assert torch.isfinite(output.loss)
    assert method.memory.filled == 30 and set(method.memory.views.tolist()) == {0, 1, 2}
    columns = output.columns  # the last step's, with 24 entries in the memory
    assert columns.num_columns == 30 and columns.block_size == 24  # as published: the memory counts the block
    assert "memory.embeddings" in method.state_dict() and "memory.views" in method.state_dict()
    metrics = step_diagnostics(output, labels)
    # threshold -1: top_k = 4 view entries of other images; 3 views each, so 2 to 4 distinct images
    assert 2 <= metrics["false_negatives_per_row"] <= 4
    assert 0 <= metrics["cancelled_precision"] <= 1 and 0 <= metrics["same_class_negatives"] <= 1
    assert (metrics["same_class_target_mass"] == 0) == (strategy == "eliminate")


def test_example_reports_a_memory_smaller_than_one_block_in_one_line(tmp_path):
    command = [sys.executable, str(EXAMPLES / "fnc.py"), "--epochs", "1", "--output-dir", str(tmp_path),
               "--memory-size", "100"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert "--memory-size" in completed.stderr.strip().splitlines()[-1] and "Traceback" not in completed.stderr


def test_example_flags_build_the_published_objective_or_the_moco_adaptation():
    def build(name, *flags):
        spec = method_spec(name)
        given = build_parser(spec).parse_args(["--view-size", "16", "--projector-hidden", "32", "--projector-out", "16",
                                               "--strategy", "eliminate", "--batch-size", "32", *flags])
        return make_method(resolve(spec, vars(given)), resnet("resnet18", width=4))

    paper = build("fnc")
    assert len(paper.views.recipes) == 10 and paper.memory.capacity == 16 * 32
    assert (paper.temperature, paper.momentum) == (0.1, 0.999)
    moco = build("fnc-moco", "--queue-size", "64")
    assert moco.detection_views + 1 == 4 and moco.memory.capacity == 64
    assert (moco.temperature, moco.momentum) == (0.2, 0.99)
    with pytest.raises(ValueError, match="detection_views"):
        build("fnc-moco", "--detection-views", "0")


def test_registry_builds_the_published_objective_and_the_moco_adaptation():
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16), global_batch=32)
    paper = method_spec("fnc")(resnet("resnet18", width=4), setup=setup, strategy="eliminate")
    assert len(paper.views.recipes) == 10 and paper.memory.capacity == 16 * 32 and paper.passes[0].anchors == tuple(
        range(10))
    assert (paper.temperature, paper.momentum) == (0.1, 0.999)
    moco = method_spec("fnc-moco")(resnet("resnet18", width=4), setup=setup, strategy="eliminate", queue_size=64)
    assert moco.detection_views + 1 == 4 and moco.memory.capacity == 64 and not moco.batch_negatives
    assert (moco.temperature, moco.momentum) == (0.2, 0.99)
    with pytest.raises(ValueError, match="detection_views"):
        method_spec("fnc-moco")(resnet("resnet18", width=4), setup=setup, detection_views=0)


def test_column_search_keeps_one_index_and_asks_for_no_more_than_the_filled_columns(recording_search):
    builder = DetectionSettings(top_k=3, threshold=-1.0, search_backend="faiss-flat").detector()
    exact = DetectionSettings(top_k=3, threshold=-1.0, search_backend="torch").detector()
    recording, indexes = recording_search("faiss-flat"), []
    for seed in (8, 9):
        _, momentum, ids, memory = step(seed, images=3, views=3, fill=10, capacity=4096, dim=8, own_copies=2)
        columns = Columns.build(momentum, ids, memory, memory_counts_block=True)
        rows = columns.rows(ids, [0, 1, 2], detectors=momentum)
        found = builder.false_negatives(columns, rows)
        assert torch.equal(found, exact.false_negatives(columns, rows))
        column_false_negatives(columns, momentum, ids, recording, 3, -1.0, "max")
        indexes.append(builder.search.faiss_index)
    assert indexes[0] is indexes[1] and indexes[0].ntotal == 9 + 12  # the block, the filled memory slots
    assert max(recording.asked) <= 9 + 12
