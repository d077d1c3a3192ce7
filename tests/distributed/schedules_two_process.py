"""Run with torchrun --nproc_per_node 2: a short SANE training run whose schedules the test reads.

:func:`train` trains :func:`tiny_sane` on :func:`schedule_data` with a learning-rate
warm-up, a cosine EMA momentum and a rising ``µ``, logging every step to
``<out>/metrics.jsonl``; the test compares the logged schedules with one process on
the same global batch.
"""

import sys
from pathlib import Path

import torch

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import ContrastiveMethod, Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator

GLOBAL_BATCH, SIZE = 16, 8


def schedule_data() -> ImageTensorDataset:
    """64 random images: 4 global batches of 16 per epoch."""
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageTensorDataset(images, torch.arange(64) % 4, ["a", "b", "c", "d"])


def tiny_sane() -> ContrastiveMethod:
    """SANE with every schedule moving: EMA momentum 0.9 → 1, ``µ`` 0.5 → 2."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    view = ViewRecipe(size=SIZE)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: view)
    return method_spec("sane")(backbone, setup=setup, mu_start=0.5, mu_end=2.0, momentum=0.9, final_momentum=1.0,
                               queue_size=32)


def train(out: Path, num_processes: int) -> None:
    """Two epochs (8 global steps), the first a linear learning-rate warm-up, logged every step."""
    config = TrainConfig(epochs=2, warmup_epochs=1, batch_size=GLOBAL_BATCH // num_processes, lr=0.3,
                         output_dir=str(out), log_every=1, checkpoint_every=0, label_diagnostics=False)
    Trainer(tiny_sane(), config, make_accelerator(cpu=True)).fit(schedule_data())


if __name__ == "__main__":
    train(Path(sys.argv[1]), 2)
