"""Run with torchrun --nproc_per_node 2: gathered enqueues and a short training run.

Writes ``<out>/queue_rank{r}.pt`` (queue buffers after several enqueues of each
rank's fixed keys) and ``<out>/train_rank{r}.json`` (a one-epoch run).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from softcontrast.components.augment import for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import LogitColumns
from softcontrast.components.queue import MemoryQueue
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import MoCoV2
from softcontrast.training import TrainConfig, Trainer, make_accelerator


def local_batch(step: int, rank: int, batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    keys = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    ids = torch.arange(batch) + rank * batch + step * 100
    return keys, ids


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    queue = MemoryQueue(capacity=10, dim=4)
    for step in range(4):
        keys, ids = local_batch(step, rank, 3, 4)
        queue.enqueue(keys, ids)
    keys, ids = local_batch(9, rank, 3, 4)
    columns = LogitColumns.build(keys, ids, queue, in_batch=True)
    torch.save(
        {**queue.state_dict(), "positive": columns.positive, "shared": columns.shared, "mask": columns.mask},
        out / f"queue_rank{rank}.pt",
    )
    del accelerator

    torch.manual_seed(0)
    data = ImageTensorDataset(
        torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        torch.arange(64) % 4,
        ["a", "b", "c", "d"],
    )
    method = MoCoV2(resnet("resnet18", width=8), view=for_image_size(moco_v2_cifar(), 16), queue_size=32)
    config = TrainConfig(epochs=1, batch_size=8, output_dir=str(out / "run"), log_every=1)
    result = Trainer(method, config, make_accelerator(cpu=True)).fit(data, data)
    (out / f"train_rank{rank}.json").write_text(
        json.dumps({"losses": result.losses, "queue_ids": method.queue.ids.tolist(), "knn": result.knn})
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
