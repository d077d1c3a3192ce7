"""Random streams: per-process augmentations, permutations shared by all processes, in every checkpoint."""

import sys
from pathlib import Path

import pytest
import torch

from softcontrast.checkpoints import list_checkpoints
from softcontrast.components.streams import RandomStreams

from test_training import fit, tiny_sce

SCRIPT = Path(__file__).parent / "distributed" / "streams_two_process.py"


def draws(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(4, generator=generator)


def test_local_streams_differ_by_process_and_shared_ones_agree():
    first, second = RandomStreams(5, 0), RandomStreams(5, 1)
    assert not torch.equal(draws(first.local), draws(second.local))
    assert torch.equal(draws(first.shared), draws(second.shared))
    assert not torch.equal(draws(RandomStreams(6, 0).shared), draws(RandomStreams(5, 0).shared))


def test_the_state_round_trip_continues_both_streams_exactly():
    streams = RandomStreams(5, 1)
    draws(streams.local), draws(streams.shared)
    state = {name: value.clone() for name, value in streams.state_dict().items()}
    expected = draws(streams.local), draws(streams.shared)
    restored = RandomStreams(0, 0)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip((draws(restored.local), draws(restored.shared)), expected))


def test_the_default_seed_follows_the_global_seed_and_the_process_index_the_rank():
    torch.manual_seed(11)
    streams = RandomStreams()
    assert (streams.seed, streams.process_index) == (11, 0)
    assert torch.equal(draws(streams.local), draws(RandomStreams(11, 0).local))


def test_streams_on_another_device_restart_from_their_seeds():
    streams = RandomStreams(5, 0, "cpu:0")  # Accelerate's device in multi-CPU runs: the same device as "cpu"
    draws(streams.local)
    assert streams.at("cpu") is streams and not torch.equal(draws(streams.local), draws(RandomStreams(5, 0).local))
    streams.device = torch.device("meta")  # as if they lived elsewhere: at() recreates them on the CPU
    assert torch.equal(draws(streams.at("cpu").local), draws(RandomStreams(5, 0).local))


def test_a_checkpoint_without_streams_resumes_from_the_seed_and_says_so(tmp_path, capsys):
    fit(tiny_sce(), tmp_path, stop_after_epochs=1)
    (checkpoint,) = list_checkpoints(tmp_path / "checkpoints")
    (checkpoint.path / "random_streams_0.pt").unlink()  # as an earlier version wrote it
    assert fit(tiny_sce(), tmp_path, resume="latest").epochs_done == 2
    assert "holds no random_streams_0.pt (written by an earlier version)" in capsys.readouterr().err


def paired(permutation: torch.Tensor, batch: int) -> bool:
    """Whether ``permutation`` of ``2·batch`` rows is the interleave that identical per-process noise
    gives: local row ``i`` of both processes side by side."""
    pairs = permutation.view(-1, 2) % batch
    return bool((pairs[:, 0] == pairs[:, 1]).all())


@pytest.mark.distributed
def test_two_processes_augment_apart_and_draw_their_permutations_together(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from streams_two_process import BATCH

    ranks = [torch.load(tmp_path / f"streams_rank{rank}.pt") for rank in range(2)]
    steps = len(ranks[0]["images"])
    assert steps == 3 and all(len(r["permutations"]) == len(r["partners"]) == steps for r in ranks)
    for step in range(steps):
        # the same images on both processes, each local image cropped, flipped and jittered its own way
        assert torch.equal(ranks[0]["images"][step], ranks[1]["images"][step])
        difference = (ranks[0]["query_views"][step] - ranks[1]["query_views"][step]).abs().flatten(1).amax(1)
        assert (difference > 0).all(), difference
        # the shuffle-BN permutation and the mixup draw: the same on both processes
        permutation = ranks[0]["permutations"][step]
        assert permutation is not None and torch.equal(permutation, ranks[1]["permutations"][step])
        assert torch.equal(permutation.sort().values, torch.arange(2 * BATCH))
        partners = torch.cat([r["partners"][step] for r in ranks])
        assert torch.equal(partners.sort().values, torch.arange(2 * BATCH))
        assert torch.equal(ranks[0]["thetas"][step], ranks[1]["thetas"][step])
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])  # one model: the same initial weights
    for name in ("permutations", "partners", "thetas"):  # drawn fresh at every step
        assert not torch.equal(ranks[0][name][0], ranks[0][name][1]), name
    global_partners = [torch.cat([r["partners"][step] for r in ranks]) for step in range(steps)]
    for drawn in (ranks[0]["permutations"], global_partners):
        assert not all(paired(permutation, BATCH) for permutation in drawn)

    # each process's streams are in the checkpoint: local ones apart, shared ones equal
    (checkpoint,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    saved = [torch.load(checkpoint.path / f"random_streams_{rank}.pt") for rank in range(2)]
    for rank in range(2):
        assert all(torch.equal(saved[rank][k], ranks[rank]["streams"][k]) for k in ("local", "shared"))
    assert torch.equal(saved[0]["shared"], saved[1]["shared"])
    assert not torch.equal(saved[0]["local"], saved[1]["local"])
