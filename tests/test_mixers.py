"""Mixers: momentum mixup and input mixup of views and targets."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softcontrast.components.columns import Columns
from softcontrast.components.memory import Memory
from softcontrast.components.mixers import InputMixup, MixParams, MomentumMixup, mix_targets, sample_mix_params
from softcontrast.components.streams import RandomStreams
from softcontrast.components.targets import InfoNCE, SelfLabelingRefinery, Targets
from softcontrast.methods import SANEConfig

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
SCRIPT = Path(__file__).parent / "distributed" / "mixers_two_process.py"


def in_batch_targets(seed: int, batch: int, queue_size: int, filled: int, one_hot: bool) -> Targets:
    """Targets over ``[batch keys | Q]`` of random unit keys; queued ids collide with some rows."""
    generator = torch.Generator().manual_seed(seed)
    memory = Memory(queue_size, 4)
    if filled:
        memory.enqueue(F.normalize(torch.randn(filled, 4, generator=generator), dim=1),
                       torch.randint(0, 2 * batch, (filled,), generator=generator))
    keys = F.normalize(torch.randn(batch, 4, generator=generator), dim=1)
    ids = torch.arange(batch)
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=True)
    rows = columns.rows(ids, [None], keys=keys)
    builder = InfoNCE() if one_hot else SelfLabelingRefinery(tau=0.2, tau_prime=0.5, mu_start=1.0, mu_end=1.0)
    return builder(columns, rows)


def random_params(seed: int, batch: int, theta: float | None = None) -> MixParams:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch, generator=generator) if theta is None else torch.full((batch,), theta)
    return MixParams(weights, torch.randperm(batch, generator=generator))


problem_args = dict(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 8),
    queue_size=st.integers(1, 10),
    filled=st.integers(0, 12),
    one_hot=st.booleans(),
)


@PROPERTY
@given(**problem_args)
def test_theta_one_changes_neither_inputs_nor_targets(seed, batch, queue_size, filled, one_hot):
    targets = in_batch_targets(seed, batch, queue_size, filled, one_hot)
    params = random_params(seed, batch, theta=1.0)
    queries, keys = torch.randn(2, batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    for mixer in (MomentumMixup(2.0), InputMixup(2.0)):
        assert torch.equal(mixer.mix_inputs(queries, keys, params), queries)
        mixed = mixer.mix_targets(targets, params)
        assert torch.equal(mixed.target, targets.target) and torch.equal(mixed.mask, targets.mask)


@PROPERTY
@given(**problem_args)
def test_mixed_targets_are_the_convex_combination_of_the_permutation(seed, batch, queue_size, filled, one_hot):
    targets = in_batch_targets(seed, batch, queue_size, filled, one_hot)
    params = random_params(seed, batch)
    permutation = F.one_hot(params.partner, batch).float()
    theta = params.theta[:, None]
    mixed = mix_targets(targets, params)
    torch.testing.assert_close(mixed.target, theta * targets.target + (1 - theta) * (permutation @ targets.target))
    torch.testing.assert_close(mixed.target.sum(dim=1), torch.ones(batch))
    assert (mixed.target[mixed.mask] == 0).all()
    partner_mask = (permutation @ targets.mask.float()).bool()
    masked_by_a_weighted_source = (targets.mask & (theta > 0)) | (partner_mask & (theta < 1))
    assert torch.equal(mixed.mask, masked_by_a_weighted_source & (mixed.target == 0))


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 8))
def test_virtual_queries_mix_with_the_partners_key_or_query_view(seed, batch):
    params = random_params(seed, batch)
    queries, keys = torch.randn(2, batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    theta = params.theta[:, None, None, None]
    momentum = MomentumMixup(2.0).mix_inputs(queries, keys, params)
    plain = InputMixup(2.0).mix_inputs(queries, keys, params)
    for i in range(batch):
        j = params.partner[i]
        torch.testing.assert_close(momentum[i], theta[i] * queries[i] + (1 - theta[i]) * keys[j])
        torch.testing.assert_close(plain[i], theta[i] * queries[i] + (1 - theta[i]) * queries[j])


@pytest.mark.parametrize("across_processes", [True, False])
@pytest.mark.parametrize("per_sample", [True, False])
def test_sampled_parameters_are_beta_weights_and_a_permutation(per_sample, across_processes):
    torch.manual_seed(0)
    params = sample_mix_params(4000, 0.5, "cpu", per_sample, across_processes)
    assert params.theta.shape == (4000,) and ((params.theta >= 0) & (params.theta <= 1)).all()
    assert torch.equal(params.partner.sort().values, torch.arange(4000))
    assert params.across_processes == across_processes
    if per_sample:
        beta_variance = 1 / (4 * (2 * 0.5 + 1))
        assert abs(params.theta.mean() - 0.5) < 0.03
        assert abs(params.theta.var() - beta_variance) < 0.02
    else:
        assert (params.theta == params.theta[0]).all()


@pytest.mark.parametrize("kappa", [0.0, -1.0, float("nan")])
def test_non_positive_kappa_is_rejected_naming_the_setting(kappa):
    for make in (MomentumMixup, InputMixup):
        with pytest.raises(ValueError, match="mixup kappa") as error:
            make(kappa=kappa)
        assert error.value.name == "mixup_kappa"
    with pytest.raises(ValueError, match="mixup kappa") as error:
        sample_mix_params(4, kappa, "cpu")
    assert error.value.name == "mixup_kappa"


def test_the_default_draw_is_one_theta_per_batch_from_beta_two_two():
    """SANE's config holds the paper's CIFAR setting: κ = 2, one θ for the whole batch."""
    config = SANEConfig()
    mixer = MomentumMixup(config.mixup_kappa, config.per_sample_theta)
    assert mixer.kappa == 2.0 and not mixer.per_sample
    torch.manual_seed(0)
    thetas = torch.stack([mixer.sample(3, "cpu").theta for _ in range(2000)])
    assert (thetas == thetas[:, :1]).all()
    assert abs(thetas[:, 0].mean() - 0.5) < 0.02
    assert abs(thetas[:, 0].var() - 1 / (4 * (2 * 2 + 1))) < 0.01


@pytest.mark.distributed
def test_two_processes_mix_like_one_process_on_the_concatenated_batch(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from mixers_two_process import BATCH, SEED, global_problem, mixed_step

    single = mixed_step(global_problem(), slice(None), across_processes=False)
    ranks = [torch.load(tmp_path / f"mixers_rank{rank}.pt") for rank in range(2)]
    for name in ("target", "mask", "inputs"):
        torch.testing.assert_close(torch.cat([r[name] for r in ranks]), single[name])

    partners = torch.cat([r["partner"] for r in ranks])
    assert torch.equal(partners.sort().values, torch.arange(2 * BATCH))
    assert torch.equal(ranks[0]["batch_theta"], ranks[1]["batch_theta"])
    assert not torch.equal(ranks[0]["theta"], ranks[1]["theta"])
    # the draws of the shared stream: what one process draws for the concatenated batch
    one = MomentumMixup(kappa=0.5, per_sample=True).sample(2 * BATCH, "cpu", RandomStreams(SEED, 0))
    assert torch.equal(partners, one.partner)
    assert torch.equal(torch.cat([r["theta"] for r in ranks]), one.theta)
