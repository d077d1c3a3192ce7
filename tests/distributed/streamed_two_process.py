"""Two processes stream one image folder: crops cut in loader workers, then one epoch of training.

Usage (under torchrun, 2 processes): ``streamed_two_process.py <folder> <out>``. Each
process writes ``crops_rank{r}.pt`` (the ids and crops of epoch 0 it received) and
trains ``softcontrast train moco`` for one epoch on the folder into ``<out>/run``.
"""

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from softcontrast.cli import main as softcontrast
from softcontrast.data import CropSpec, TrainingBatches, load_source

RANK = int(os.environ["RANK"])
SPECS = [CropSpec(24, (0.2, 1.0)), CropSpec(16, (0.05, 0.3))]


def main(folder: Path, out: Path) -> None:
    Accelerator(cpu=True)
    train = load_source(f"imagefolder:{folder}").train
    batches = TrainingBatches(train, batch_size=2, rank=RANK, world_size=2, seed=3, num_workers=1, crops=SPECS)
    received = [(ids.tolist(), [crop.clone() for crop in crops]) for crops, ids in batches.epoch(0)]
    torch.save(received, out / f"crops_rank{RANK}.pt")
    softcontrast(["train", "moco", "--dataset", f"imagefolder:{folder}", "--view-size", "32", "--cpu",
                  "--epochs", "1", "--batch-size", "2", "--queue-size", "8", "--width", "4", "--projector-hidden",
                  "16", "--projector-out", "8", "--num-workers", "1", "--knn-k", "3", "--output-dir", str(out / "run")])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
