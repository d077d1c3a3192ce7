"""Run with torchrun --nproc_per_node 2: shuffle-BN of the key encoder across processes.

Every process encodes its rows of one global batch (:func:`global_views`) with
:class:`ShuffleBatchNorm` and writes ``<out>/shuffle_bn_rank{r}.pt``; the test
compares the concatenated keys with one process running split-BN on the whole batch
with the same permutation, and the permutations drawn from the shared stream of
seed :data:`SEED` with one process's draw.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from softcontrast.components.backbones import Encoder, projector_for, resnet
from softcontrast.components.shuffle_bn import ShuffleBatchNorm, shared_permutation
from softcontrast.components.streams import RandomStreams

WORLD, BATCH, SEED = 2, 6, 7


def key_encoder() -> Encoder:
    """A small encoder with 2-d and 1-d batch norm, the same on every process."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    return Encoder(backbone, projector_for(backbone, hidden_dim=16, out_dim=8)).train()


def global_views() -> torch.Tensor:
    """The key views of the global batch of ``WORLD·BATCH`` rows."""
    return torch.randn(WORLD * BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def fixed_permutation() -> torch.Tensor:
    """A permutation of the global batch known to the test."""
    return torch.randperm(WORLD * BATCH, generator=torch.Generator().manual_seed(9))


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    views = global_views()[rank * BATCH : (rank + 1) * BATCH]
    encoder = key_encoder()
    result = {}
    for groups in (2, 4):
        result[f"keys_{groups}"] = ShuffleBatchNorm(groups)(encoder, views, fixed_permutation())
    shared = RandomStreams(SEED, rank).shared
    result["drawn_permutations"] = [shared_permutation(BATCH, "cpu", shared) for _ in range(2)]
    result["keys_drawn"] = ShuffleBatchNorm(2)(encoder, views, result["drawn_permutations"][0])
    for name, groups in (("error", 3), ("no_generator_error", 2)):
        try:
            ShuffleBatchNorm(groups)(encoder, views)
        except ValueError as error:
            result[name] = str(error)
    torch.save(result, out / f"shuffle_bn_rank{rank}.pt")
    accelerator.wait_for_everyone()  # no process leaves while another still talks to it
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
