"""Run with torchrun --nproc_per_node 2: backbone features and the kNN monitor, shared between processes.

Each process embeds its shard of an in-memory split and of a streamed image folder
(one loader worker) and gets every feature back; it writes them, with the kNN
accuracy of the monitor (``knn_accuracy(shard=True)``), to ``<out>/features_rank{r}.pt``.
The test compares them with one process's.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import resnet
from softcontrast.components.distributed import world_size
from softcontrast.data import FolderImages, ImageTensorDataset
from softcontrast.data.images import list_image_folder
from softcontrast.evaluation import extract_features, knn_accuracy
from softcontrast.training import make_accelerator

IMAGES = 7  # odd: the second process's shard is shorter


def splits(folder: Path) -> tuple[ImageTensorDataset, FolderImages]:
    """The same in-memory split and image folder in the test and in every process."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 8, 8), dtype=torch.uint8, generator=generator)
    memory = ImageTensorDataset(images, torch.arange(IMAGES) % 2, ["a", "b"])
    files, labels, classes = list_image_folder(folder)
    return memory, FolderImages(folder, files, np.asarray(labels), classes)


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet("resnet18", width=4)


def main(out: Path, folder: Path) -> None:
    accelerator = make_accelerator(cpu=True)
    assert world_size() == 2, "run under torchrun with 2 processes"
    memory, streamed = splits(folder)
    backbone, recipe = network(), ViewRecipe(size=8)
    result = {
        "memory": extract_features(backbone, memory, recipe, batch_size=3, shard=True),
        "streamed": extract_features(backbone, streamed, recipe, batch_size=2, num_workers=1, shard=True),
        "knn": knn_accuracy(backbone, memory, streamed, recipe, k=3, batch_size=3, num_workers=1, shard=True),
    }
    torch.save(result, out / f"features_rank{accelerator.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
