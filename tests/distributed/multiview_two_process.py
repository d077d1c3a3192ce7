"""Run with torchrun --nproc_per_node 2: one published-FNC step over view columns, and a short FNC run.

Writes ``<out>/multiview_rank{r}.pt`` (loss, anchor gradients, detected false
negatives, column ids and the memory after enqueueing, for this rank's half of a
fixed global batch; and the same without memory, the online views as columns) and
``<out>/fnc_rank{r}.json`` (a one-epoch FNC run).
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator
from softcontrast.methods.common import DetectionSettings

IMAGES, VIEWS, DIM, MEMORY = 6, 3, 4, 20


def global_problem():
    """Anchors and momentum embeddings ``G×V×D``, ids, and a memory holding 14 older entries."""
    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(IMAGES, VIEWS, DIM, generator=generator), dim=-1)
    momentum = F.normalize(torch.randn(IMAGES, VIEWS, DIM, generator=generator), dim=-1)
    ids = torch.arange(IMAGES) + 3
    memory = Memory(MEMORY, DIM)
    memory.enqueue(F.normalize(torch.randn(14, DIM, generator=generator), dim=-1),
                   torch.randint(0, 12, (14,), generator=generator), torch.randint(0, VIEWS, (14,), generator=generator))
    return anchors, momentum, ids, memory


def fnc_step(rows: slice, strategy: str, online: bool = False) -> dict:
    """Loss, anchor gradient, ``F_i`` and memory after the step, for the images ``rows``;
    ``online``: no memory, the anchors are the columns and detectors (with gradient)."""
    anchors, momentum, ids, memory = global_problem()
    anchors = anchors[rows].clone().requires_grad_()
    momentum, ids = momentum[rows], ids[rows]
    if online:
        momentum, memory = anchors, None
    builder = DetectionSettings(top_k=5, threshold=0.0, strategy=strategy).detector()
    columns = Columns.build(momentum, ids, memory, memory_counts_block=True, gradient=online)  # as published
    rows = columns.rows(ids, list(range(VIEWS)), detectors=momentum)
    targets = builder(columns, rows)
    loss = 2.0 * soft_cross_entropy(columns.scores(anchors.reshape(-1, DIM)) / 0.1, targets.target, targets.mask)
    loss.backward()
    result = {"loss": loss.detach(), "grad": anchors.grad, "found": targets.found, "column_ids": columns.ids}
    if memory is not None:
        memory.enqueue(*columns.block_entries())
        result.update({f"memory.{k}": v for k, v in memory.state_dict().items()})
    return result


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    half = IMAGES // 2
    rows = slice(rank * half, (rank + 1) * half)
    result = {strategy: fnc_step(rows, strategy) for strategy in ("attract", "eliminate")}
    result["online"] = fnc_step(rows, "attract", online=True)
    torch.save(result, out / f"multiview_rank{rank}.pt")
    del accelerator

    torch.manual_seed(0)
    data = ImageTensorDataset(
        torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        torch.arange(32) % 4,
        ["a", "b", "c", "d"],
    )
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16), global_batch=8)
    method = method_spec("fnc")(resnet("resnet18", width=4), setup=setup, support_views=1, memory_size=60,
                                threshold=0.0)
    config = TrainConfig(epochs=1, batch_size=4, output_dir=str(out / "run"), log_every=1)
    result = Trainer(method, config, make_accelerator(cpu=True)).fit(data)
    (out / f"fnc_rank{rank}.json").write_text(json.dumps({
        "losses": [float(loss) for loss in result.losses], "memory_ids": method.memory.ids.tolist(),
        "memory_views": method.memory.views.tolist(),
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
