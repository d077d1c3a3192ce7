"""Run with torchrun --nproc_per_node 2: the random draws of a short SANE run with shuffle-BN.

Every image of the data set is the same image, so local image ``i`` is the same on
both processes and only the random streams can make their views differ. At every
step each process records its query views (a forward pre-hook on the online
encoder), the shuffle-BN permutation (a forward pre-hook on ``ShuffleBatchNorm``)
and the mixup draw (a momentum mixup that keeps what it samples), and writes them
with its streams' final states and its weights to ``<out>/streams_rank{r}.pt``.
"""

import sys
from pathlib import Path

import torch

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.mixers import MomentumMixup
from softcontrast.components.shuffle_bn import ShuffleBatchNorm
from softcontrast.data import ImageTensorDataset
from softcontrast.methods import Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator

BATCH, IMAGES = 4, 24  # 3 steps of 2 × 4 images
DRAWS = []


class RecordingMixup(MomentumMixup):
    """Momentum mixup that keeps every draw (it mixes unchanged)."""

    def sample(self, *args, **kwargs):
        params = super().sample(*args, **kwargs)
        DRAWS.append(params)
        return params


def main(out: Path) -> None:
    accelerator = make_accelerator(cpu=True)
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageTensorDataset(image.expand(IMAGES, -1, -1, -1).clone(), torch.zeros(IMAGES, dtype=torch.long), ["a"])
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    view = ViewRecipe(size=8)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: view)
    method = method_spec("sane")(backbone, setup=setup, queue_size=16)
    method.mixed.mixer = RecordingMixup(method.mixed.mixer.kappa)
    method.shuffle_bn = ShuffleBatchNorm(2)
    views, permutations, images = [], [], []
    method.register_forward_pre_hook(lambda module, args: images.append(args[0].clone()))
    method.online.register_forward_pre_hook(lambda module, args: views.append(args[0].detach().clone()))
    method.shuffle_bn.register_forward_pre_hook(
        lambda module, args: permutations.append(args[2].clone() if len(args) > 2 else None))
    config = TrainConfig(epochs=1, batch_size=BATCH, output_dir=str(out / "run"), checkpoint_every=0)
    Trainer(method, config, accelerator).fit(data)
    rank = accelerator.process_index
    torch.save({
        "images": images,
        "query_views": views[::2],  # per step: the query views, then the mixed views
        "permutations": permutations,
        "partners": [draw.partner for draw in DRAWS],
        "thetas": [draw.theta for draw in DRAWS],
        "streams": method.streams.state_dict(),
        "weights": torch.cat([p.detach().flatten() for p in method.parameters()]),
    }, out / f"streams_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
