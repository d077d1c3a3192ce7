"""Run with torchrun --nproc_per_node 2: the whole SANE loss across processes.

Every process takes its rows of one global problem (:func:`global_problem`: views,
ids, a queue, and one mixing draw with ``π`` over the global batch), computes the
SANE loss and its gradient, takes one optimizer-free step (EMA, enqueue, ``µ``), and
writes ``<out>/sane_rank{r}.pt``; the test compares them with one process on the
concatenated batch (:func:`sane_step`). The encoders run in eval mode, so batch norm
does not see the batch split (shuffle-BN has its own test).
"""

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.mixers import MixParams
from softcontrast.methods import ContrastiveMethod, Setup, method_spec

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


def tiny_sane(mixup_view: str) -> ContrastiveMethod:
    """The same small SANE model on every process, in eval mode, with a half-filled queue."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    view = ViewRecipe(size=SIZE)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: view)
    method = method_spec("sane")(backbone, setup=setup, mu_start=0.5, mu_end=2.0, queue_size=QUEUE,
                                 mixup_view=mixup_view)
    return method.eval()


class GivenViews(nn.Module):
    """Stands in for a step's view maker: returns the given views instead of augmenting the images."""

    def __init__(self, views, recipes):
        super().__init__()
        self.given, self.recipes = list(views), recipes

    def forward(self, images, generator=None):
        return list(self.given)


@dataclasses.dataclass
class GivenMixing:
    """A mixer whose draw is given: ``mixer``'s mixing with ``params``."""

    mixer: object
    params: MixParams

    def sample(self, batch, device, streams=None):
        return self.params

    def mix_inputs(self, queries, keys, params):
        return self.mixer.mix_inputs(queries, keys, params)

    def mix_targets(self, targets, params):
        return self.mixer.mix_targets(targets, params)


def sane_step(problem: dict[str, torch.Tensor], rows: slice, across_processes: bool, mixup_view: str) -> dict:
    """Loss, metrics, gradient of the online encoder and the queue after the step."""
    method = tiny_sane(mixup_view)
    method.memory.embeddings.copy_(problem["queue_keys"])
    method.memory.ids.copy_(problem["queue_ids"])
    mixing = MixParams(problem["theta"][rows], problem["partner"][rows], across_processes)
    views = [problem[name][rows] for name in ("query_views", "key_views", "strong_views")]
    method.views = GivenViews(views[: len(method.views.recipes)], method.views.recipes)
    method.mixed.mixer = GivenMixing(method.mixed.mixer, mixing)
    ids = problem["ids"][rows]
    output = method(torch.zeros(ids.shape[0], 3, SIZE, SIZE, dtype=torch.uint8), ids)
    output.loss.backward()
    grad = torch.cat([p.grad.flatten() for p in method.online.parameters() if p.grad is not None])
    method.after_optimizer_step(0, 10)
    return {"loss": output.loss.detach(), "loss_c": output.metrics["loss_c"],
            "loss_mix": output.metrics["loss_mix"], "grad": grad, "queue_ids": method.memory.ids.clone(),
            "queue_keys": method.memory.embeddings.clone(), "mu": method.mixed.labels.mu.clone()}


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
