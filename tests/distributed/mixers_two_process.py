"""Run with torchrun --nproc_per_node 2: momentum mixup of inputs and targets across processes.

Every process takes its rows of one global problem (:func:`global_problem`), mixes
them with the global permutation, and writes ``<out>/mixers_rank{r}.pt``; the test
compares the concatenation with one process on the whole batch. Each process also
draws mixing parameters from streams of seed :data:`SEED` (the whole SANE loss across
processes is in sane_two_process.py).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from softcontrast.components.columns import Columns
from softcontrast.components.memory import Memory
from softcontrast.components.mixers import MixParams, MomentumMixup
from softcontrast.components.streams import RandomStreams
from softcontrast.components.targets import SelfLabelingRefinery

WORLD, BATCH, DIM, QUEUE, SEED = 2, 3, 5, 7, 3


def global_problem() -> dict[str, torch.Tensor]:
    """Keys, ids, views, queue contents and mixing draw of a global batch of WORLD·BATCH rows."""
    generator = torch.Generator().manual_seed(11)
    rows = WORLD * BATCH
    return {
        "keys": F.normalize(torch.randn(rows, DIM, generator=generator), dim=1),
        "ids": torch.arange(rows) * 2,
        "queue_keys": F.normalize(torch.randn(QUEUE, DIM, generator=generator), dim=1),
        "queue_ids": torch.tensor([0, 1, 4, 6, 9, -1, -1]),
        "queries": torch.randn(rows, 3, 4, 4, generator=generator),
        "key_views": torch.randn(rows, 3, 4, 4, generator=generator),
        "theta": torch.rand(rows, generator=generator),
        "partner": torch.randperm(rows, generator=generator),
    }


def mixed_step(problem: dict[str, torch.Tensor], rows: slice, across_processes: bool) -> dict[str, torch.Tensor]:
    """Mixed inputs and SANE's refined labels of ``rows`` of the problem."""
    memory = Memory(QUEUE, DIM)
    memory.embeddings.copy_(problem["queue_keys"])
    memory.ids.copy_(problem["queue_ids"])
    keys, ids = problem["keys"][rows], problem["ids"][rows]
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=True)
    anchors = columns.rows(ids, [None], keys=keys)
    targets = SelfLabelingRefinery(tau=0.2, tau_prime=0.8, mu_start=1.5, mu_end=1.5)(columns, anchors)
    params = MixParams(problem["theta"][rows], problem["partner"][rows], across_processes)
    mixer = MomentumMixup(kappa=1.0)
    mixed = mixer.mix_targets(targets, params)
    inputs = mixer.mix_inputs(problem["queries"][rows], problem["key_views"][rows], params)
    return {"target": mixed.target, "mask": mixed.mask, "inputs": inputs}


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    result = mixed_step(global_problem(), slice(rank * BATCH, (rank + 1) * BATCH), across_processes=True)

    streams = RandomStreams(SEED, rank)
    sampled = MomentumMixup(kappa=0.5, per_sample=True).sample(BATCH, "cpu", streams)
    per_batch = MomentumMixup(kappa=0.5, per_sample=False).sample(BATCH, "cpu", streams)
    result.update(partner=sampled.partner, theta=sampled.theta, batch_theta=per_batch.theta)
    torch.save(result, out / f"mixers_rank{rank}.pt")
    accelerator.wait_for_everyone()  # no process leaves while another still talks to it
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
