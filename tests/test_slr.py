"""SLR targets (SelfLabelingRefinery) and the SANE method."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.augment import for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.queue import MemoryQueue
from softcontrast.components.targets import InfoNCE, SelfLabelingRefinery, self_labeling_target
from softcontrast.components.targets.refinery import keep_top, refine_labels
from softcontrast.methods import SANE, MoCoV2

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)


def random_columns(seed: int, batch: int, queue_size: int, dim: int, filled: int, in_batch: bool) -> LogitColumns:
    """Columns of random unit keys; the queue holds ``filled`` keys whose ids collide with some rows."""
    generator = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    queue = MemoryQueue(queue_size, dim)
    if filled:
        queued = F.normalize(torch.randn(filled, dim, generator=generator), dim=1)
        queue.enqueue(queued, torch.randint(0, 2 * batch, (filled,), generator=generator))
    return LogitColumns.build(keys, torch.arange(batch), queue, in_batch)


columns_args = dict(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 6),
    queue_size=st.integers(1, 12),
    dim=st.integers(2, 8),
    filled=st.integers(0, 16),
    in_batch=st.booleans(),
)
slr_args = dict(alpha=st.floats(0.0, 1.0), tau_s=st.floats(0.01, 2.0), kappa=st.integers(1, 20))


@PROPERTY
@given(**columns_args, **slr_args)
def test_refined_targets_are_distributions_that_ignore_masked_columns(
    seed, batch, queue_size, dim, filled, in_batch, alpha, tau_s, kappa
):
    columns = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    targets = SelfLabelingRefinery(alpha, tau_s, kappa)(columns)
    assert torch.equal(targets.mask, columns.mask)
    assert (targets.target >= 0).all()
    torch.testing.assert_close(targets.target.sum(dim=1), torch.ones(batch))
    assert (targets.target[targets.mask] == 0).all()


@PROPERTY
@given(**columns_args, **slr_args)
def test_the_positive_always_carries_the_largest_mass(seed, batch, queue_size, dim, filled, in_batch, alpha, tau_s, kappa):
    columns = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    target = SelfLabelingRefinery(alpha, tau_s, kappa)(columns).target
    positive_mass = target.gather(1, columns.positive[:, None])
    assert (positive_mass >= target - 1e-6).all()


@PROPERTY
@given(**columns_args, tau_s=slr_args["tau_s"], kappa=slr_args["kappa"])
def test_alpha_zero_is_infonce_in_target_and_loss(seed, batch, queue_size, dim, filled, in_batch, tau_s, kappa):
    columns = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    refined = SelfLabelingRefinery(0.0, tau_s, kappa)(columns)
    one_hot = InfoNCE()(columns)
    assert torch.equal(refined.target, one_hot.target) and torch.equal(refined.mask, one_hot.mask)

    queries = F.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1)), dim=1)
    logits = columns.scores(queries) / 0.2
    infonce = F.cross_entropy(logits.masked_fill(columns.mask, float("-inf")), columns.positive)
    torch.testing.assert_close(soft_cross_entropy(logits, refined.target, refined.mask), infonce)


@PROPERTY
@given(**columns_args, alpha=slr_args["alpha"], tau_s=slr_args["tau_s"])
def test_kappa_one_is_one_hot_on_the_positive(seed, batch, queue_size, dim, filled, in_batch, alpha, tau_s):
    columns = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    target = SelfLabelingRefinery(alpha, tau_s, 1)(columns).target
    torch.testing.assert_close(target, columns.positive_one_hot())


@PROPERTY
@given(**columns_args, tau_s=slr_args["tau_s"], kappa=slr_args["kappa"])
def test_the_refined_part_keeps_the_kappa_most_similar_columns(seed, batch, queue_size, dim, filled, in_batch, tau_s, kappa):
    columns = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    refined = SelfLabelingRefinery(1.0, tau_s, kappa)(columns).target
    kept = refined > 0
    assert (kept.sum(dim=1) <= kappa).all()
    scores = columns.scores(columns.keys).masked_fill(columns.mask, float("-inf"))
    for row in range(batch):
        if (~kept[row] & ~columns.mask[row]).any():
            assert scores[row][kept[row]].min() >= scores[row][~kept[row] & ~columns.mask[row]].max() - 1e-6
        expected = torch.softmax(scores[row][kept[row]] / tau_s, dim=0)
        torch.testing.assert_close(refined[row][kept[row]], expected)


def test_the_target_carries_no_gradient_and_leaves_its_inputs_alone():
    columns = random_columns(0, 4, 8, 5, 8, in_batch=False)
    keys = columns.keys.clone().requires_grad_(True)
    columns = LogitColumns(keys, columns.shared, columns.column_ids, columns.row_ids, columns.positive,
                           columns.mask, columns.queue_start, columns.in_batch)
    before = keys.detach().clone(), columns.mask.clone()
    target = SelfLabelingRefinery(0.5, 0.1, 3)(columns).target
    assert not target.requires_grad
    assert torch.equal(keys.detach(), before[0]) and torch.equal(columns.mask, before[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=math.nan), "alpha"),
        (dict(tau_s=0.0), "tau_s"),
        (dict(kappa=0), "kappa"),
        (dict(kappa=2.5), "kappa"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelfLabelingRefinery(**kwargs)


def clustered_problem(seed: int, clusters: int, per_cluster: int, noise: float, corruption: float):
    """Unit embeddings around orthogonal centroids and one-hot labels, a share of them corrupted."""
    generator = torch.Generator().manual_seed(seed)
    dim = clusters + 4
    centroids = torch.eye(clusters, dim)
    truth = torch.arange(clusters).repeat_interleave(per_cluster)
    points = F.normalize(centroids[truth] + noise * torch.randn(len(truth), dim, generator=generator), dim=1)
    flip = torch.rand(len(truth), generator=generator) < corruption
    wrong = (truth + torch.randint(1, clusters, truth.shape, generator=generator)) % clusters
    noisy = torch.where(flip, wrong, truth)
    return points, centroids, truth, noisy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_labels_recover_corrupted_clusters(seed):
    """The paper's label-refinement theorem in miniature.

    Points lie around orthogonal centroids μ_c; their one-hot labels y are corrupted
    to a random wrong class with probability 0.3. The prediction is
    p = top_κ(softmax(x·μᵀ/τs)) and the refined label ŷ = (1 − α)·y + α·p.
    Margin condition: every point is closer to its own centroid by ``m`` in cosine,
    ``x·μ_true − x·μ_c >= m`` for all c ≠ true. With ``r = exp(m/τs)`` the kept
    prediction satisfies ``p_true − p_c >= (r − 1)/(r + κ − 1)``, so whenever
    ``α·(r − 1)/(r + κ − 1) > 1 − α`` the argmax of ŷ is the true cluster for every
    point, corrupted or not (clean labels stay: ``p_true >= p_c``). The test checks
    that the sampled data meets the condition, then that refinement recovers every
    cluster while the corrupted labels are wrong for about 30 % of the points.
    """
    points, centroids, truth, noisy = clustered_problem(seed, clusters=5, per_cluster=40, noise=0.15, corruption=0.3)
    scores = points @ centroids.T
    own = scores.gather(1, truth[:, None])
    margin = (own - scores.scatter(1, truth[:, None], -math.inf)).min().item()
    tau_s, kappa, alpha = 0.05, 3, 0.7
    r = math.exp(margin / tau_s)
    assert margin > 0 and alpha * (r - 1) / (r + kappa - 1) > 1 - alpha, "the data must meet the margin condition"

    labels = F.one_hot(noisy, 5).float()
    refined = refine_labels(labels, keep_top(torch.softmax(scores / tau_s, dim=1), kappa), alpha)
    corrupted_accuracy = (labels.argmax(1) == truth).float().mean()
    refined_accuracy = (refined.argmax(1) == truth).float().mean()
    assert corrupted_accuracy < 0.9
    assert refined_accuracy > corrupted_accuracy
    assert refined_accuracy == 1.0


def test_refined_contrastive_labels_put_their_extra_mass_on_the_same_cluster():
    """In the contrastive layout the one-hot label calls every queued key a negative;
    on clustered keys the refined label's non-positive mass lands on same-cluster keys."""
    points, _, truth, _ = clustered_problem(3, clusters=4, per_cluster=20, noise=0.15, corruption=0.0)
    rows = torch.arange(0, 80, 10)
    queue = MemoryQueue(80, points.shape[1])
    queue.enqueue(points, torch.arange(80))
    columns = LogitColumns.build(points[rows], rows + 1000, queue)
    target = SelfLabelingRefinery(0.5, 0.05, 10)(columns).target
    queued = target[:, 1:]
    same_cluster = truth[None, :] == truth[rows][:, None]
    assert (queued.sum(dim=1) > 0).all()
    assert ((queued * same_cluster).sum(dim=1) / queued.sum(dim=1) > 0.99).all()


VIEW = for_image_size(moco_v2_cifar(), 16)


def tiny_sane(**kwargs) -> SANE:
    torch.manual_seed(0)
    return SANE(resnet("resnet18", width=8), query_view=VIEW, key_view=VIEW, queue_size=16, **kwargs)


def random_images(batch: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("slr, mixup", [(True, True), (True, False), (False, True)])
def test_a_sane_step_gives_a_finite_loss_and_gradients(slr, mixup):
    method = tiny_sane(slr=slr, mixup=mixup, kappa=3)
    method.queue.enqueue(F.normalize(torch.randn(10, method.queue.keys.shape[1]), dim=1), torch.arange(10) + 100)
    output = method(random_images(), torch.arange(4))
    output.loss.backward()
    method.after_optimizer_step(0, 10)
    assert torch.isfinite(output.loss)
    assert ("loss_mm" in output.metrics) == mixup
    grads = [p.grad for p in method.online.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert method.queue.filled.item() == 14


def test_sane_without_slr_and_mixup_is_moco_v2():
    sane = tiny_sane(slr=False, mixup=False, tau=0.2)
    torch.manual_seed(0)
    moco = MoCoV2(resnet("resnet18", width=8), view=VIEW, queue_size=16, temperature=0.2)
    losses = []
    for method in (sane, moco):
        torch.manual_seed(5)
        losses.append(method(random_images(), torch.arange(4)).loss)
    torch.testing.assert_close(losses[0], losses[1])


def test_sane_rejects_views_of_different_sizes_and_a_negative_weight():
    with pytest.raises(ValueError, match="one size"):
        SANE(resnet("resnet18", width=8), query_view=VIEW, key_view=for_image_size(VIEW, 8), queue_size=16)
    with pytest.raises(ValueError, match="mixup_weight"):
        tiny_sane(mixup_weight=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        tiny_sane(alpha=2.0)


def test_self_labeling_target_is_exported_as_a_pure_function():
    columns = random_columns(4, 3, 6, 4, 6, in_batch=True)
    direct = self_labeling_target(columns.scores(columns.keys), columns.positive_one_hot(), columns.mask, 0.3, 0.2, 4)
    torch.testing.assert_close(direct, SelfLabelingRefinery(0.3, 0.2, 4)(columns).target)
