"""Shuffle-BN / split-BN of the momentum encoder: groups, order, and 2-process equality."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import MLPHead, resnet
from softcontrast.components.shuffle_bn import ShuffleBatchNorm, grouped_forward, shared_permutation, unshuffle
from softcontrast.components.streams import RandomStreams
from softcontrast.methods import ContrastiveMethod, Setup, method_spec

SCRIPT = Path(__file__).parent / "distributed" / "shuffle_bn_two_process.py"


def head() -> MLPHead:
    torch.manual_seed(0)
    return MLPHead(5, 7, 3).train()


def group_of(permutation: torch.Tensor, groups: int) -> torch.Tensor:
    """The group of every row under ``grouped_forward``'s split of the permuted rows."""
    labels = torch.cat([torch.full((len(part),), g) for g, part in enumerate(torch.tensor_split(permutation, groups))])
    return unshuffle(labels, permutation)


@given(st.integers(2, 4), st.integers(2, 4), st.integers(0, 10**6))
def test_a_key_depends_only_on_its_own_group(groups, per_group, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = groups * per_group
    views = torch.randn(rows, 5, generator=generator)
    permutation = torch.randperm(rows, generator=generator)
    keys = grouped_forward(head(), views, permutation, groups)
    group = group_of(permutation, groups)
    row = int(torch.randint(rows, (1,), generator=generator))
    changed = views.clone()
    changed[group != group[row]] += 3 * torch.randn_like(changed[group != group[row]])
    torch.testing.assert_close(grouped_forward(head(), changed, permutation, groups)[row], keys[row])
    mate = int(((group == group[row]) & (torch.arange(rows) != row)).nonzero()[0])
    changed = views.clone()
    changed[mate] += 3
    assert not torch.allclose(grouped_forward(head(), changed, permutation, groups)[row], keys[row])


@given(st.integers(2, 12), st.integers(0, 10**6))
def test_one_group_is_plain_batch_norm(rows, seed):
    generator = torch.Generator().manual_seed(seed)
    views = torch.randn(rows, 5, generator=generator)
    permutation = torch.randperm(rows, generator=generator)
    torch.testing.assert_close(grouped_forward(head(), views, permutation, 1), head()(views))


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 10**6))
def test_shuffle_then_unshuffle_is_the_identity(rows, groups, seed):
    generator = torch.Generator().manual_seed(seed)
    views = torch.randn(rows, 2, 3, generator=generator)
    permutation = torch.randperm(rows, generator=generator)
    assert torch.equal(unshuffle(views[permutation], permutation), views)
    assert torch.equal(grouped_forward(lambda x: x * 2, views, permutation, min(groups, rows)), views * 2)


def test_split_bn_draws_its_permutation_and_updates_running_statistics_once_per_group():
    views = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    encoder = head()
    torch.manual_seed(3)
    keys = ShuffleBatchNorm(4)(encoder, views)
    torch.manual_seed(3)
    permutation = shared_permutation(12, "cpu")
    assert sorted(permutation.tolist()) == list(range(12))
    torch.testing.assert_close(keys, grouped_forward(head(), views, permutation, 4))
    assert int(encoder.layers[1].num_batches_tracked) == 4


def tiny_moco() -> ContrastiveMethod:
    torch.manual_seed(0)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 8))
    return method_spec("moco")(resnet("resnet18", width=4), setup=setup, queue_size=16)


def test_the_method_encodes_keys_with_split_bn_only_when_asked():
    method = tiny_moco()
    method.shuffle_bn = ShuffleBatchNorm(2)
    plain = tiny_moco()
    views = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    shared = torch.Generator()
    shared.set_state(method.streams.shared.get_state())
    keys = method.embed_keys(views)
    expected = grouped_forward(plain.target_encoder, views, shared_permutation(8, "cpu", shared), 2)
    torch.testing.assert_close(keys, expected)  # the permutation comes from the method's shared stream
    assert not torch.allclose(plain.embed_keys(views), keys)
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    output = method(images, torch.arange(8))
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert method.online.projector.layers[0].weight.grad is not None


def test_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="groups must be >= 1"):
        ShuffleBatchNorm(0)
    with pytest.raises(ValueError, match="lower --split-bn-groups"):
        ShuffleBatchNorm(8)(head(), torch.randn(4, 5))


@pytest.mark.distributed
def test_two_processes_give_the_keys_of_one_process_with_the_same_permutation(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from shuffle_bn_two_process import BATCH, SEED, fixed_permutation, global_views, key_encoder

    ranks = [torch.load(tmp_path / f"shuffle_bn_rank{rank}.pt") for rank in range(2)]
    views = global_views()
    for groups in (2, 4):
        expected = grouped_forward(key_encoder(), views, fixed_permutation(), groups)
        torch.testing.assert_close(torch.cat([r[f"keys_{groups}"] for r in ranks]), expected)
    # both processes draw what one process draws for the global batch from the shared stream
    shared = RandomStreams(SEED, 0).shared
    drawn = [shared_permutation(2 * BATCH, "cpu", shared) for _ in range(2)]
    assert all(torch.equal(p, q) for r in ranks for p, q in zip(r["drawn_permutations"], drawn, strict=True))
    assert not torch.equal(drawn[0], drawn[1])
    expected = grouped_forward(key_encoder(), views, drawn[0], 2)
    torch.testing.assert_close(torch.cat([r["keys_drawn"] for r in ranks]), expected)
    assert all("multiple of the number of processes (2)" in r["error"] for r in ranks)
    assert all("needs a generator that every process holds identically" in r["no_generator_error"] for r in ranks)
