"""Run with torchrun --nproc_per_node 2: momentum mixup of inputs and targets across processes.

Every process takes its rows of one global problem (:func:`global_problem`), mixes
them with the global permutation, and writes ``<out>/mixers_rank{r}.pt``; the test
compares the concatenation with one process on the whole batch. Each process also
draws mixing parameters and runs one SANE step.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from softcontrast.components.augment import for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import LogitColumns
from softcontrast.components.mixers import MixParams, MomentumMixup
from softcontrast.components.queue import MemoryQueue
from softcontrast.components.targets import SelfLabelingRefinery
from softcontrast.methods import SANE

WORLD, BATCH, DIM, QUEUE = 2, 3, 5, 7


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
    """Mixed inputs and SLR targets of ``rows`` of the problem."""
    queue = MemoryQueue(QUEUE, DIM)
    queue.keys.copy_(problem["queue_keys"])
    queue.ids.copy_(problem["queue_ids"])
    columns = LogitColumns.build(problem["keys"][rows], problem["ids"][rows], queue, in_batch=True)
    targets = SelfLabelingRefinery(alpha=0.6, tau_s=0.2, kappa=4)(columns)
    params = MixParams(problem["theta"][rows], problem["partner"][rows], across_processes)
    mixer = MomentumMixup(beta=1.0)
    mixed = mixer.mix_targets(targets, params)
    inputs = mixer.mix_inputs(problem["queries"][rows], problem["key_views"][rows], params)
    return {"target": mixed.target, "mask": mixed.mask, "inputs": inputs}


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    result = mixed_step(global_problem(), slice(rank * BATCH, (rank + 1) * BATCH), across_processes=True)

    torch.manual_seed(100 + rank)
    sampled = MomentumMixup(beta=0.5).sample(BATCH, "cpu")
    per_batch = MomentumMixup(beta=0.5, per_sample=False).sample(BATCH, "cpu")
    result.update(partner=sampled.partner, theta=sampled.theta, batch_theta=per_batch.theta)

    view = for_image_size(moco_v2_cifar(), 16)
    torch.manual_seed(0)
    method = SANE(resnet("resnet18", width=8), query_view=view, key_view=view, queue_size=8, kappa=3)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
    output = method(images, torch.arange(4) + 4 * rank)
    output.loss.backward()
    method.after_optimizer_step(0, 10)
    result.update(loss=output.loss.detach(), loss_mm=output.metrics["loss_mm"], queue_ids=method.queue.ids)
    torch.save(result, out / f"mixers_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
