"""SANE as published: the refined label (eq. 5), the µ schedule, momentum mixup and the loss (eq. 9)."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.columns import Columns, Rows
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.components.mixers import MixParams, mix_targets
from softcontrast.components.targets import (
    SelfLabelingRefinery,
    confidence_schedule,
    confidence_weights,
    key_distributions,
    refined_label,
    self_labeling_target,
)
from softcontrast.cli import build_parser, resolve
from softcontrast.methods import ContrastiveMethod, Setup, method_spec
from softcontrast.settings import SettingError

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)
SCRIPT = Path(__file__).parent / "distributed" / "sane_two_process.py"
sys.path.insert(0, str(SCRIPT.parent))
from sane_two_process import GivenMixing, GivenViews  # noqa: E402  (stand-ins shared with the 2-process run)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sane.py"


def lay_out(keys: torch.Tensor, ids: torch.Tensor, memory: Memory, in_batch: bool) -> tuple[Columns, Rows]:
    """Columns ``[batch keys | Q]`` (or ``[k_i | Q]``) and their query rows, one key per row."""
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=in_batch)
    return columns, columns.rows(ids, [None], keys=keys)


def random_columns(seed: int, batch: int, queue_size: int, dim: int, filled: int,
                   in_batch: bool) -> tuple[Columns, Rows]:
    """Columns of random unit keys; the queue holds ``filled`` keys whose ids collide with some rows."""
    generator = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    memory = Memory(queue_size, dim)
    if filled:
        queued = F.normalize(torch.randn(filled, dim, generator=generator), dim=1)
        memory.enqueue(queued, torch.randint(0, 2 * batch, (filled,), generator=generator))
    return lay_out(keys, torch.arange(batch), memory, in_batch)


columns_args = dict(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 6),
    queue_size=st.integers(1, 12),
    dim=st.integers(2, 8),
    filled=st.integers(0, 16),
    in_batch=st.booleans(),
)
label_args = dict(
    tau=st.floats(0.01, 2.0),
    tau_prime=st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
    mu=st.one_of(st.sampled_from([0.0, 1.0, 10.0]), st.floats(0.0, 10.0)),
)


def refinery(tau: float, tau_prime: float, mu: float, **kwargs) -> SelfLabelingRefinery:
    return SelfLabelingRefinery(tau, tau_prime, mu_start=mu, mu_end=mu, **kwargs)


def distributions(columns: Columns, rows: Rows, tau: float, tau_prime: float):
    return key_distributions(columns.scores(rows.keys), rows.positive_one_hot(), rows.mask, tau * tau_prime)


# --- the refined label -------------------------------------------------------------------------


@PROPERTY
@given(**columns_args, **label_args, use_p=st.booleans(), use_q=st.booleans())
def test_refined_labels_are_distributions_that_ignore_masked_columns(
    seed, batch, queue_size, dim, filled, in_batch, tau, tau_prime, mu, use_p, use_q
):
    columns, rows = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    targets = refinery(tau, tau_prime, mu, use_p=use_p, use_q=use_q)(columns, rows)
    assert torch.equal(targets.mask, rows.mask)
    assert (targets.target >= 0).all()
    torch.testing.assert_close(targets.target.sum(dim=1), torch.ones(batch))
    assert (targets.target[targets.mask] == 0).all()


@PROPERTY
@given(**columns_args, **label_args)
def test_p_and_q_are_distributions_and_q_is_zero_at_the_positive(
    seed, batch, queue_size, dim, filled, in_batch, tau, tau_prime, mu
):
    columns, rows = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    p, q = distributions(columns, rows, tau, tau_prime)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(batch))
    assert (p[rows.mask] == 0).all() and (q[rows.mask] == 0).all()
    assert (rows.positive.sum(dim=1) == 1).all()
    assert (q[rows.positive] == 0).all()
    has_negative = (~rows.mask).sum(dim=1) > 1
    torch.testing.assert_close(q.sum(dim=1), has_negative.float())
    # q is p without the positive, renormalised (p in float64: in float32 its share off the positive can
    # underflow to 0 at small temperatures, where q, a softmax of its own, is still exact).
    p64, _ = key_distributions(columns.scores(rows.keys).double(), rows.positive_one_hot(torch.float64), rows.mask,
                               tau * tau_prime)
    off_positive = p64 * (1 - rows.positive_one_hot(torch.float64))
    # rows whose share off the positive underflows even in float64 (0/0) have no reference to compare with
    kept = has_negative & (off_positive.sum(dim=1) > 0)
    torch.testing.assert_close(q[kept], (off_positive[kept] / off_positive[kept].sum(dim=1, keepdim=True)).float())


@PROPERTY
@given(**columns_args, **label_args)
def test_alpha_and_beta_are_non_negative_and_leave_weight_on_the_one_hot(
    seed, batch, queue_size, dim, filled, in_batch, tau, tau_prime, mu
):
    columns, rows = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    p, q = distributions(columns, rows, tau, tau_prime)
    alpha, beta = confidence_weights(p, q, mu)
    assert alpha.shape == beta.shape == (batch, 1)
    assert (alpha >= 0).all() and (beta >= 0).all()
    assert (alpha + beta < 1).all()


@PROPERTY
@given(**columns_args, tau=label_args["tau"], tau_prime=label_args["tau_prime"], use_p=st.booleans(),
       use_q=st.booleans())
def test_mu_zero_gives_the_one_hot_label(seed, batch, queue_size, dim, filled, in_batch, tau, tau_prime, use_p, use_q):
    columns, rows = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    target = refinery(tau, tau_prime, 0.0, use_p=use_p, use_q=use_q)(columns, rows).target
    assert torch.equal(target, rows.positive_one_hot())


@PROPERTY
@given(**columns_args, **label_args)
def test_the_ablations_drop_one_distribution(seed, batch, queue_size, dim, filled, in_batch, tau, tau_prime, mu):
    """p only (``use_q=False``) puts nothing on q's own share: ``β = 0``; q only: ``α = 0``;
    neither: the one-hot label."""
    columns, rows = random_columns(seed, batch, queue_size, dim, filled, in_batch)
    p, q = distributions(columns, rows, tau, tau_prime)
    y = rows.positive_one_hot()
    zeros = torch.zeros_like(p)
    alpha, _ = confidence_weights(p, zeros, mu)
    _, beta = confidence_weights(zeros, q, mu)
    p_only = refinery(tau, tau_prime, mu, use_q=False)(columns, rows).target
    q_only = refinery(tau, tau_prime, mu, use_p=False)(columns, rows).target
    neither = refinery(tau, tau_prime, mu, use_p=False, use_q=False)(columns, rows).target
    torch.testing.assert_close(p_only, (1 - alpha) * y + alpha * p)
    torch.testing.assert_close(q_only, (1 - beta) * y + beta * q)
    assert torch.equal(neither, y)


def test_eq5_by_hand_in_float64():
    """ȳ of 3 rows over 5 columns, computed with plain loops, against the target function."""
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(3, 5, generator=generator, dtype=torch.float64) * 2 - 1
    positive = [0, 2, 4]
    y = torch.zeros(3, 5, dtype=torch.float64)
    for row, column in enumerate(positive):
        y[row, column] = 1.0
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3] = mask[1, 1] = True  # row 2 has no masked column
    temperature, mu = 0.2 * 0.8, 0.7

    expected = [[0.0] * 5 for _ in range(3)]
    for i in range(3):
        unmasked = [k for k in range(5) if not mask[i, k]]
        denominator_p = sum(math.exp(scores[i, k].item() / temperature) for k in unmasked)
        p = [math.exp(scores[i, k].item() / temperature) / denominator_p if k in unmasked else 0.0 for k in range(5)]
        negatives = [k for k in unmasked if k != positive[i]]
        denominator_q = sum(math.exp(scores[i, k].item() / temperature) for k in negatives)
        q = [math.exp(scores[i, k].item() / temperature) / denominator_q if k in negatives else 0.0 for k in range(5)]
        z = 1 + mu * max(p) + mu * max(q)
        alpha, beta = mu * max(p) / z, mu * max(q) / z
        for k in range(5):
            expected[i][k] = (1 - alpha - beta) * y[i, k].item() + alpha * p[k] + beta * q[k]

    target = self_labeling_target(scores, y, mask, mu, temperature)
    assert target.dtype == torch.float64
    torch.testing.assert_close(target, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    p, q = key_distributions(scores, y, mask, temperature)
    alpha, beta = confidence_weights(p, q, mu)
    torch.testing.assert_close(refined_label(y, p, q, alpha, beta), target, rtol=0, atol=0)


def test_the_label_carries_no_gradient_and_leaves_its_inputs_alone():
    columns, rows = random_columns(0, 4, 8, 5, 8, in_batch=True)
    keys = rows.keys.clone().requires_grad_(True)
    rows = dataclasses.replace(rows, keys=keys)
    before = keys.detach().clone(), rows.mask.clone()
    target = refinery(0.2, 0.8, 1.0)(columns, rows).target
    assert not target.requires_grad
    assert torch.equal(keys.detach(), before[0]) and torch.equal(rows.mask, before[1])


# --- the µ schedule ----------------------------------------------------------------------------


@PROPERTY
@given(total=st.integers(1, 1000), m1=st.floats(0.0, 5.0), extra=st.floats(0.0, 5.0), data=st.data())
def test_the_confidence_rises_on_a_cosine_from_m1_to_m2(total, m1, extra, data):
    m2 = m1 + extra
    step = data.draw(st.integers(0, total))
    mu = confidence_schedule(step, total, m1, m2)
    assert confidence_schedule(0, total, m1, m2) == pytest.approx(m1)
    assert confidence_schedule(total, total, m1, m2) == pytest.approx(m2)
    assert mu == pytest.approx(m2 - (m2 - m1) * (math.cos(math.pi * step / total) + 1) / 2)
    assert m1 - 1e-12 <= mu <= m2 + 1e-12
    assert confidence_schedule(min(step + 1, total), total, m1, m2) >= mu - 1e-12


VIEW = ViewRecipe(size=8)


def tiny_sane(view=lambda recipe: VIEW, **overrides) -> ContrastiveMethod:
    """The registered SANE on a width-4 ResNet-18, every view ``VIEW`` (or what ``view`` makes of the recipes)."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=view)
    return method_spec("sane")(backbone, setup=setup, **{"queue_size": 12, **overrides})


def sane_step(method, query_views, key_views, ids, strong_views=None, mixing=None):
    """The method's one step on given query, key (and, with ``mixup_view="strong"``, strong) views and mixing draw."""
    given = [query_views, key_views, strong_views][: len(method.views.recipes)]
    method.views = GivenViews(given, method.views.recipes)
    if mixing is not None:
        method.mixed.mixer = GivenMixing(method.mixed.mixer, mixing)
    return method(torch.zeros(ids.shape[0], 3, 8, 8, dtype=torch.uint8), ids)


def random_images(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_the_step_drives_mu_and_a_checkpoint_restores_it():
    method = tiny_sane(mu_start=0.5, mu_end=3.0)
    assert method.mixed.labels.mu.item() == 0.5  # µ_0 = m1
    for step in range(3):
        method(random_images(), torch.arange(4)).loss.backward()
        method.after_optimizer_step(step, 10)
        assert method.mixed.labels.mu.item() == pytest.approx(confidence_schedule(step + 1, 10, 0.5, 3.0))
    state = method.state_dict()
    assert "mixed.labels.mu" in state
    resumed = tiny_sane(mu_start=0.5, mu_end=3.0)
    resumed.load_state_dict(state)
    resumed.streams.load_state_dict(method.streams.state_dict())  # a checkpoint holds both
    assert torch.equal(resumed.mixed.labels.mu, method.mixed.labels.mu)
    losses = []
    for model in (method, resumed):
        losses.append(model(random_images(seed=2), torch.arange(4) + 4).loss)
    assert torch.equal(losses[0], losses[1])


# --- the loss ----------------------------------------------------------------------------------


def views(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.randn(3, batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))


def prefilled(method: ContrastiveMethod, seed: int, filled: int) -> ContrastiveMethod:
    generator = torch.Generator().manual_seed(seed)
    if filled:
        method.memory.enqueue(F.normalize(torch.randn(filled, 8, generator=generator), dim=1),
                              torch.randint(0, 12, (filled,), generator=generator))
    return method.eval()


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), filled=st.integers(0, 14))
def test_lambda_zero_is_infonce_over_batch_keys_and_queue(seed, batch, filled):
    method = prefilled(tiny_sane(lam=0.0), seed, filled)
    query_views, key_views, _ = views(batch, seed)
    ids = torch.arange(batch)
    loss = sane_step(method, query_views, key_views, ids).loss
    keys = method.target_encoder(key_views)
    columns = torch.cat([keys, method.memory.embeddings])
    column_ids = torch.cat([ids, method.memory.ids])
    logits = method.online(query_views) @ columns.T / method.temperature
    excluded = (column_ids[None, :] == -1) | (column_ids[None, :] == ids[:, None])
    excluded[torch.arange(batch), torch.arange(batch)] = False
    expected = F.cross_entropy(logits.masked_fill(excluded, float("-inf")), torch.arange(batch))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("mixup_view", ["weak", "strong"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_the_loss_is_eq9_with_the_partners_key_or_strong_view(mixup_view, per_sample):
    """``(1 − λ)·L_c(x, y) + λ·L_c(x′, y′)`` with ``x′ = θ·x + (1 − θ)·x̃_π`` and
    ``y′ = θ·ȳ + (1 − θ)·ȳ_π`` exactly; ``x̃`` the key view, or the strong view."""
    method = prefilled(tiny_sane(lam=0.3, mu_start=2.0, mu_end=2.0, mixup_view=mixup_view), 1, 9)
    query_views, key_views, strong_views = views(5, 2)
    ids = torch.arange(5)
    theta = torch.tensor([0.2, 0.5, 0.7, 0.9, 0.4]) if per_sample else torch.full((5,), 0.35)
    mixing = MixParams(theta, torch.tensor([3, 0, 4, 1, 2]))
    output = sane_step(method, query_views, key_views, ids, strong_views, mixing)

    columns, rows = lay_out(method.target_encoder(key_views), ids, method.memory, in_batch=True)
    refined = method.mixed.labels(columns, rows)
    partner = (key_views if mixup_view == "weak" else strong_views)[mixing.partner]
    virtual = theta[:, None, None, None] * query_views + (1 - theta[:, None, None, None]) * partner
    mixed_label = theta[:, None] * refined.target + (1 - theta[:, None]) * refined.target[mixing.partner]
    mixed = mix_targets(refined, mixing)
    assert torch.equal(mixed.target, mixed_label)
    loss_c = soft_cross_entropy(columns.scores(method.online(query_views)) / 0.2, rows.positive_one_hot(),
                                rows.mask)
    loss_mix = soft_cross_entropy(columns.scores(method.online(virtual)) / 0.2, mixed.target, mixed.mask)
    torch.testing.assert_close(output.metrics["loss_c"], loss_c)
    torch.testing.assert_close(output.metrics["loss_mix"], loss_mix)
    torch.testing.assert_close(output.loss, 0.7 * loss_c + 0.3 * loss_mix)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 8), mu=label_args["mu"],
       theta=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)), per_sample=st.booleans())
def test_the_mixed_label_is_exactly_the_mix_of_the_refined_labels(seed, batch, mu, theta, per_sample):
    columns, rows = random_columns(seed, batch, 6, 4, 8, in_batch=True)
    refined = refinery(0.2, 0.8, mu)(columns, rows)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch, generator=generator) if per_sample else torch.full((batch,), theta)
    partner = torch.randperm(batch, generator=generator)
    mixed = mix_targets(refined, MixParams(weights, partner))
    for i in range(batch):
        expected = weights[i] * refined.target[i] + (1 - weights[i]) * refined.target[partner[i]]
        assert torch.equal(mixed.target[i], expected)


def test_no_mixup_contrasts_x_itself_against_the_refined_label():
    method = prefilled(tiny_sane(mixup=False, mu_start=1.0, mu_end=1.0), 3, 10)
    query_views, key_views, _ = views(4, 5)
    ids = torch.arange(4)
    output = sane_step(method, query_views, key_views, ids)
    columns, rows = lay_out(method.target_encoder(key_views), ids, method.memory, in_batch=True)
    logits = columns.scores(method.online(query_views)) / 0.2
    refined = method.mixed.labels(columns, rows)
    expected = 0.5 * soft_cross_entropy(logits, rows.positive_one_hot(), rows.mask) + 0.5 * soft_cross_entropy(
        logits, refined.target, refined.mask)
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("options", [{}, {"mixup_view": "strong"}, {"use_p": False, "use_q": False},
                                     {"mixup": False}, {"symmetric": True, "per_sample_theta": True}])
def test_a_sane_step_trains(options):
    method = tiny_sane(**options)
    output = method(random_images(), torch.arange(4))
    output.loss.backward()
    method.after_optimizer_step(0, 10)
    assert torch.isfinite(output.loss)
    assert {"loss_c", "loss_mix", "mu"} <= set(output.metrics)
    grads = [p.grad for p in method.online.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert method.memory.filled.item() == (8 if options.get("symmetric") else 4)


# --- several processes ---------------------------------------------------------------------------


@pytest.mark.distributed
def test_two_processes_give_the_loss_of_one_process_on_the_concatenated_batch(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    from sane_two_process import global_problem, sane_step

    ranks = [torch.load(tmp_path / f"sane_rank{rank}.pt") for rank in range(2)]
    for view in ("weak", "strong"):
        single = sane_step(global_problem(), slice(None), across_processes=False, mixup_view=view)
        for name in ("loss", "loss_c", "loss_mix", "grad"):
            torch.testing.assert_close((ranks[0][view][name] + ranks[1][view][name]) / 2, single[name])
        for name in ("queue_ids", "queue_keys", "mu"):
            for rank in ranks:
                torch.testing.assert_close(rank[view][name], single[name])


# --- bad input ---------------------------------------------------------------------------------


def key_view_of_another_size():
    """A run's views where the key view (the second recipe asked for) is 4 px, the query view 8 px."""
    sizes = iter([8, 4])
    return lambda recipe: ViewRecipe(size=next(sizes))


@pytest.mark.parametrize(
    "options, setting",
    [
        ({"tau_prime": 0.0}, "tau_prime"),
        ({"tau_prime": 1.5}, "tau_prime"),
        ({"tau_prime": math.nan}, "tau_prime"),
        ({"mixup_kappa": 0.0}, "mixup_kappa"),
        ({"mixup_kappa": -2.0}, "mixup_kappa"),
        ({"lam": -0.1}, "lam"),
        ({"lam": 1.5}, "lam"),
        ({"mu_start": 2.0, "mu_end": 1.0}, "mu_end"),
        ({"mu_start": -1.0}, "mu_start"),
        ({"mixup_view": "medium"}, "mixup_view"),
        ({"view": key_view_of_another_size()}, "view_size"),
    ],
)
def test_bad_input_is_rejected_naming_the_setting(options, setting):
    with pytest.raises(SettingError) as error:
        tiny_sane(**options)
    assert error.value.name == setting


def test_a_cli_user_gets_one_line_naming_the_flag(tmp_path):
    command = [sys.executable, str(EXAMPLE), "--tau-prime", "1.5", "--train-subset", "16", "--width", "4",
               "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert "--tau-prime" in lines[-1] and "(0, 1]" in lines[-1]


# --- recipes -----------------------------------------------------------------------------------

SIZING = ("dataset", "train_subset", "view_size", "backbone", "width", "projector_hidden", "projector_out",
          "epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs", "shuffle_bn",
          "split_bn_groups", "knn_every", "knn_k", "momentum", "queue_size")
PAPER = {"temperature": 0.2, "tau_prime": 0.8, "mu_start": 0.0, "mu_end": 1.0, "mixup_kappa": 2.0, "lam": 0.5,
         "queue_size": 4096, "momentum": 0.99}


def recipe_settings(method: str, recipe: str) -> dict:
    spec = method_spec(method)
    return resolve(spec, vars(build_parser(spec).parse_args(["--config", recipe]))).saved()


def test_the_recipes_hold_the_papers_settings_and_the_cpu_one_the_shared_cpu_budget():
    full, cpu = recipe_settings("sane", "sane_cifar10"), recipe_settings("sane", "sane_cifar10-cpu")
    sce_cpu = recipe_settings("sce", "sce_cifar10-cpu")
    for recipe in (full, cpu):
        assert {key: recipe[key] for key in PAPER} == PAPER
    assert (full["batch_size"], full["lr"], full["weight_decay"], full["width"]) == (256, 0.03, 1e-4, 64)
    assert {key: cpu[key] for key in SIZING} == {key: sce_cpu[key] for key in SIZING}
