"""No host synchronisation inside a training step (DESIGN, "Performance").

On the CPU, every ``Tensor`` method that reads values to the host is counted while
the steps of every method run, alone and inside the :class:`Trainer`; between
logging points the count must be zero. On CUDA, ``torch.cuda.set_sync_debug_mode``
turns any synchronisation into an error over the same steps.
"""

import traceback
from collections import Counter
from typing import Callable

import pytest
import torch

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.multiview import SmallCrops
from softcontrast.data import ImageTensorDataset, TrainingBatches
from softcontrast.evaluation import step_diagnostics
from softcontrast.methods import ContrastiveMethod, Setup, method_spec
from softcontrast.training import TrainConfig, Trainer, make_accelerator

HOST_READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy")
VIEW = ViewRecipe(size=8)


def build(name: str, **config) -> ContrastiveMethod:
    """Registered method ``name`` on a width-4 ResNet-18 with 8-px views."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=4)
    setup = Setup(projector=projector_for(backbone, 16, 8), view=lambda recipe: VIEW)
    return method_spec(name)(backbone, setup=setup, **config)


def with_small_crops(method: ContrastiveMethod) -> ContrastiveMethod:
    method.small_crops = SmallCrops(2, ViewRecipe(size=4))
    return method


METHODS: dict[str, Callable[[], ContrastiveMethod]] = {
    "moco": lambda: build("moco", queue_size=32),
    "sce_small_crops": lambda: with_small_crops(build("sce", queue_size=32)),
    "fnc_published": lambda: build("fnc", support_views=1, top_k=3, threshold=-1.0, memory_size=48),
    "fnc_published_no_memory": lambda: build("fnc", support_views=1, top_k=3, threshold=0.0, memory_size=0,
                                             strategy="eliminate"),
    "fnc_on_moco": lambda: build("fnc-moco", detection_views=2, top_k=3, threshold=-1.0, queue_size=32),
    "sane": lambda: build("sane", queue_size=32),
    "sane_strong_per_sample": lambda: build("sane", queue_size=32, mixup_view="strong", per_sample_theta=True),
}


class HostReads:
    """Counts, while ``counting``, the calls of ``Tensor`` methods that read values to the host."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.counting = False
        self.calls: list[str] = []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name: str, method: Callable) -> Callable:
        def counted(tensor, *args, **kwargs):
            if self.counting:
                caller = traceback.extract_stack(limit=2)[0]
                self.calls.append(f"Tensor.{name} from {caller.filename}:{caller.lineno} ({caller.line})")
            return method(tensor, *args, **kwargs)

        return counted


def tiny_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def run_steps(method: ContrastiveMethod, steps: int, device: str = "cpu", labels: torch.Tensor | None = None) -> None:
    """``steps`` full steps: forward, the step's diagnostics (with ``labels``, if any), backward, optimizer
    step, EMA and enqueue."""
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps):
        images, ids = tiny_images(8, step).to(device), (torch.arange(8) + 8 * (step % 3)).to(device)
        output = method(images, ids)
        diagnostics = step_diagnostics(output, labels)
        assert diagnostics or labels is None
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(step, steps)


@pytest.mark.parametrize("name", METHODS)
def test_the_steps_of_every_method_never_read_the_host(name, monkeypatch):
    method = METHODS[name]()
    reads = HostReads(monkeypatch)
    reads.counting = True
    run_steps(method, 3, labels=torch.arange(24) % 3)
    assert reads.calls == []


@pytest.mark.parametrize("name", METHODS)
def test_the_trainer_never_reads_the_host_between_logging_points(name, monkeypatch, tmp_path):
    """Counting runs from each batch the loader yields until the next is asked for (no step logs here)."""
    reads = HostReads(monkeypatch)
    batches = TrainingBatches.epoch

    def counted_epoch(self, epoch, start=0):
        for batch in batches(self, epoch, start):
            reads.counting = True
            yield batch
            reads.counting = False

    monkeypatch.setattr(TrainingBatches, "epoch", counted_epoch)
    data = ImageTensorDataset(tiny_images(24), torch.arange(24) % 3, ["a", "b", "c"])
    config = TrainConfig(epochs=2, stop_after_epochs=1, batch_size=8, log_every=100, output_dir=str(tmp_path))
    Trainer(METHODS[name](), config, make_accelerator(cpu=True)).fit(data)
    assert reads.calls == []


def test_the_trainer_reads_the_losses_once_per_logging_point_however_many_steps(monkeypatch, tmp_path):
    """An epoch twice as long, with the same logging points, reads the host exactly as often; a
    second epoch adds one read, its line's mean loss."""
    reads = HostReads(monkeypatch)
    counts, losses = {}, {}
    for images, epochs in ((24, 1), (48, 1), (24, 2)):
        data = ImageTensorDataset(tiny_images(images), torch.arange(images) % 3, ["a", "b", "c"])
        config = TrainConfig(epochs=epochs, batch_size=8, log_every=100, checkpoint_every=0,
                             output_dir=str(tmp_path / f"{images}-{epochs}"))
        trainer = Trainer(METHODS["moco"](), config, make_accelerator(cpu=True))
        reads.counting, reads.calls = True, []
        result = trainer.fit(data)
        reads.counting = False
        counts[images, epochs] = reads.calls
        losses[images, epochs] = result.losses
    assert len(counts[24, 1]) == len(counts[48, 1]), counts[48, 1]
    added = list((Counter(counts[24, 2]) - Counter(counts[24, 1])).elements())
    assert len(added) == 1 and len(counts[24, 2]) == len(counts[24, 1]) + 1 and "epoch_loss.item()" in added[0], added
    assert [len(run) for run in losses.values()] == [3, 6, 6]
    assert all(isinstance(loss, float) for run in losses.values() for loss in run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_the_steps_of_every_method_never_synchronise_on_cuda(name):
    method = METHODS[name]().cuda()
    labels = (torch.arange(24) % 3).cuda()
    run_steps(method, 1, "cuda", labels)  # first use: cached constants are copied to the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_steps(method, 3, "cuda", labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
