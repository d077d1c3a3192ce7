"""Run with torchrun --nproc_per_node 2: gathered memory blocks and a short training run.

Writes ``<out>/queue_rank{r}.pt`` (memory buffers after several enqueues of the
gathered blocks of each rank's fixed keys, and the layout of one more step's
``[batch keys | memory]`` columns) and ``<out>/train_rank{r}.json`` (a one-epoch MoCo v2 run).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import Columns
from softcontrast.components.distributed import gather_no_grad
from softcontrast.components.memory import Memory
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator


def local_batch(step: int, rank: int, batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    keys = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    ids = torch.arange(batch) + rank * batch + step * 100
    return keys, ids


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    memory = Memory(capacity=10, dim=4)
    for step in range(4):
        keys, ids = local_batch(step, rank, 3, 4)
        memory.enqueue(gather_no_grad(keys), gather_no_grad(ids))  # the memory takes gathered blocks
    keys, ids = local_batch(9, rank, 3, 4)
    columns = Columns.build(keys[:, None], ids, memory, batch_negatives=True)
    rows = columns.rows(ids, [None], keys=keys)
    positive = rows.positive.float().argmax(dim=1)
    assert (rows.positive.sum(dim=1) == 1).all()
    torch.save({**memory.state_dict(), "positive": positive, "shared": columns.shared, "mask": rows.mask},
               out / f"queue_rank{rank}.pt")
    del accelerator

    torch.manual_seed(0)
    data = ImageTensorDataset(
        torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        torch.arange(64) % 4,
        ["a", "b", "c", "d"],
    )
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16), global_batch=16)
    method = method_spec("moco")(resnet("resnet18", width=8), setup=setup, queue_size=32)
    config = TrainConfig(epochs=1, batch_size=8, output_dir=str(out / "run"), log_every=1)
    result = Trainer(method, config, make_accelerator(cpu=True)).fit(data, data)
    (out / f"train_rank{rank}.json").write_text(
        json.dumps({"losses": result.losses, "queue_ids": method.memory.ids.tolist(), "knn": result.knn})
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
