"""Run with torchrun --nproc_per_node 2: the whole SANE loss across processes.

Every process takes its rows of one global problem (:func:`global_problem`: views,
ids, a queue, and one mixing draw with ``π`` over the global batch), computes the
SANE loss and its gradient, takes one optimizer-free step (EMA, enqueue, ``µ``), and
writes ``<out>/sane_rank{r}.pt``; the test compares them with one process on the
concatenated batch (:func:`sane_step`). The encoders run in eval mode, so batch norm
does not see the batch split (shuffle-BN has its own test).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.mixers import MixParams
from softcontrast.methods import SANE

WORLD, BATCH, SIZE, QUEUE = 2, 3, 8, 5


def global_problem() -> dict[str, torch.Tensor]:
    """Views, ids, queue contents and mixing draw of a global batch of WORLD·BATCH rows."""
    generator = torch.Generator().manual_seed(3)
    rows = WORLD * BATCH
    views = torch.randn(3, rows, 3, SIZE, SIZE, generator=generator)
    return {
        "query_views": views[0],
        "key_views": views[1],
        "strong_views": views[2],
        "ids": torch.arange(rows) * 3,
        "queue_keys": F.normalize(torch.randn(QUEUE, 8, generator=generator), dim=1),
        "queue_ids": torch.tensor([0, 1, 6, 7, -1]),
        "theta": torch.full((rows,), 0.3),
        "partner": torch.randperm(rows, generator=generator),
    }


def tiny_sane(mixup_view: str) -> SANE:
    """The same small SANE model on every process, in eval mode, with a half-filled queue."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    view = ViewRecipe(size=SIZE)
    method = SANE(backbone, projector_for(backbone, 16, 8), mu_start=0.5, mu_end=2.0, queue_size=QUEUE,
                  query_view=view, key_view=view, mixup_view=mixup_view)
    return method.eval()


def sane_step(problem: dict[str, torch.Tensor], rows: slice, across_processes: bool, mixup_view: str) -> dict:
    """Loss, metrics, gradient of the online encoder and the queue after the step."""
    method = tiny_sane(mixup_view)
    method.queue.keys.copy_(problem["queue_keys"])
    method.queue.ids.copy_(problem["queue_ids"])
    mixing = MixParams(problem["theta"][rows], problem["partner"][rows], across_processes)
    output = method.sane_step(problem["query_views"][rows], problem["key_views"][rows], problem["ids"][rows],
                              problem["strong_views"][rows], mixing)
    output.loss.backward()
    grad = torch.cat([p.grad.flatten() for p in method.online.parameters() if p.grad is not None])
    method.after_optimizer_step(0, 10)
    return {"loss": output.loss.detach(), "loss_c": output.metrics["loss_c"],
            "loss_mix": output.metrics["loss_mix"], "grad": grad, "queue_ids": method.queue.ids.clone(),
            "queue_keys": method.queue.keys.clone(), "mu": method.refinery.mu.clone()}


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    result = {view: sane_step(global_problem(), rows, True, view) for view in ("weak", "strong")}
    torch.save(result, out / f"sane_rank{rank}.pt")
    accelerator.wait_for_everyone()  # no process leaves while another still talks to it
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
