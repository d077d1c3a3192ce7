"""Training throughput beside lightly: MoCo v2 and SCE end to end on the same images.

lightly's MoCo v2 recipe (a ``DataLoader`` whose workers apply its
``MoCoV2Transform`` to one PIL image at a time, then its model step: ``NTXentLoss``
with a memory bank and ``update_momentum``) runs beside our MoCo v2 and SCE (uint8
batches resident on the device, both views made there in one batched pass, then
:class:`~softcontrast.methods.ContrastiveMethod`'s step). Both sides train the same
network (ResNet-18 with the CIFAR stem and the 512-512-128 projector) on the same
CIFAR-10 images with the same views (MoCo v2 CIFAR recipe, no blur), batch, queue
size, EMA momentum and SGD optimizer. Rounds of each contender are interleaved in
one process, so that load from other processes falls on all of them.

Reported for each backbone width and variant (eager, ``channels_last``,
``torch.compile``; bf16 autocast with ``--precision bf16``): images/s of every
contender and ours over lightly's; images per CPU-second (this process plus
lightly's loader workers), the figure that holds on a shared CPU where wall time
depends on other processes; peak memory (process RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU); and our step's cost breakdown (the
method's own step timed at its stage boundaries through ``method.clock``). On a
GPU it also checks that our step runs without a host synchronisation
(``torch.cuda.set_sync_debug_mode("error")``). Our methods are built through the
method registry (``--methods`` takes any registered name); ``--methods fnc --search-backend
faiss-flat`` adds published FNC with its search over view columns in FAISS (on the GPU when faiss sees one).

Writes the JSON and, next to it, the Markdown table the docs show (``<out>.md``).
Needs the bench extra (lightly): ``pip install -e ".[bench]"``.

Run: ``python benchmarks/throughput.py --data-zip <path>/cifar10.zip --out benchmarks/results/throughput_cpu.json``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import Tensor, nn

import softcontrast
from softcontrast.components.augment import CIFAR_MEAN, CIFAR_STD
from softcontrast.components.backbones import projector_for, resnet
from softcontrast.components.memory_format import to_channels_last
from softcontrast.data import ImageTensorDataset, TrainingBatches, load_source
from softcontrast.methods import ContrastiveMethod, Setup, method_names, method_spec
from softcontrast.methods.registry import load_plugin

VARIANTS = ("eager", "channels_last", "compile")
LIGHTLY = "lightly-moco"
#: The step's stages (``method.clock``: views; embeddings and columns; targets; loss), then
#: what the trainer does after it (backward; the optimizer; EMA, the parts' hooks and the memory update).
STEP_STAGES = ("views", "columns", "targets", "loss")
SEGMENTS = (*STEP_STAGES, "backward", "optimizer", "after step")
#: Methods that keep their own temperature instead of ``--temperature`` (SCE's τ and τm as published).
OWN_TEMPERATURE = ("sce",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Settings:
    """What every contender shares."""

    width: int
    variant: str
    batch_size: int
    queue_size: int
    lr: float
    weight_decay: float
    sgd_momentum: float
    ema: float
    temperature: float
    precision: str
    device: torch.device
    seed: int
    search_backend: str
    backbone: str = "resnet18"
    cifar_stem: bool = True

    @property
    def channels_last(self) -> bool:
        return self.variant == "channels_last"

    @property
    def compile(self) -> bool:
        return self.variant == "compile"

    def autocast(self):
        """bf16 autocast under ``--precision bf16``, else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def optimizer(self, parameters) -> torch.optim.Optimizer:
        lr = self.lr * self.batch_size / 256
        return torch.optim.SGD([p for p in parameters if p.requires_grad], lr=lr, momentum=self.sgd_momentum,
                               weight_decay=self.weight_decay)


# ---------------------------------------------------------------- data


def load_subset_zip(zip_path: Path, into: Path, size: int, seed: int) -> ImageTensorDataset:
    """``size`` training images of an image-folder zip (``…/train/<class>/…``), the same
    share of every class, unpacked to ``into`` and decoded once."""
    with zipfile.ZipFile(zip_path) as archive:
        by_class: dict[str, list[str]] = {}
        for name in archive.namelist():
            parts = Path(name).parts
            if "train" in parts[:-2] and name.lower().endswith(IMAGE_SUFFIXES):
                by_class.setdefault(parts[-2], []).append(name)
        if not by_class:
            raise SystemExit(f"--data-zip {zip_path}: no train/<class>/<image> files inside")
        rng = random.Random(seed)
        per_class = -(-size // len(by_class))
        chosen = [n for names in by_class.values() for n in rng.sample(sorted(names), min(per_class, len(names)))]
        for name in chosen:
            target = into / "train" / Path(name).parts[-2] / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    data = load_source(f"imagefolder:{into / 'train'}").train
    if not isinstance(data, ImageTensorDataset):
        raise SystemExit("--data-zip: images are too large to hold in memory; this benchmark takes small images")
    return data.subset(min(size, len(data)), seed)


def load_images(args: argparse.Namespace, scratch: Path) -> ImageTensorDataset:
    """The training images both sides use (uint8, in memory)."""
    if args.data_zip is not None:
        return load_subset_zip(args.data_zip, scratch, args.subset, args.seed)
    data = load_source(args.dataset).train
    if not isinstance(data, ImageTensorDataset):
        raise SystemExit(f"--dataset {args.dataset}: images are too large to hold in memory")
    return data.subset(min(args.subset, len(data)), args.seed)


class PILImages(torch.utils.data.Dataset):
    """Images held as a ``N×H×W×3`` uint8 array, handed to a transform one PIL image at a
    time (what torchvision's CIFAR-10 dataset does in lightly's CIFAR recipes)."""

    def __init__(self, images: np.ndarray, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), index


# ---------------------------------------------------------------- contenders


def cycle(make: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch 0, 1, 2, … without end."""
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


class Contender:
    """One training recipe: ``step()`` runs one optimizer step, data included."""

    name: str
    worker_pids: tuple[int, ...] = ()

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LightlyMoCo(Contender):
    """lightly's MoCo v2: loader workers make the views, ``NTXentLoss`` holds the queue."""

    name = LIGHTLY

    def __init__(self, data: ImageTensorDataset, settings: Settings, workers: int):
        from lightly.loss import NTXentLoss
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms import MoCoV2Transform

        self.settings, self.update_momentum = settings, update_momentum
        transform = MoCoV2Transform(input_size=data.image_size, gaussian_blur=0.0,
                                    normalize={"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)})
        dataset = PILImages(data.images.permute(0, 2, 3, 1).contiguous().numpy(), transform)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=settings.device.type == "cuda",
            generator=torch.Generator().manual_seed(settings.seed),
        )
        backbone = resnet(settings.backbone, cifar_stem=settings.cifar_stem, width=settings.width)
        self.online = nn.Sequential(backbone, projector_for(backbone)).to(settings.device)
        self.momentum = copy.deepcopy(self.online)
        deactivate_requires_grad(self.momentum)
        self.channels_last = settings.channels_last and to_channels_last(self.online, settings.device)
        if self.channels_last:
            self.momentum.to(memory_format=torch.channels_last)
        self.run_online = torch.compile(self.online) if settings.compile else self.online
        self.run_momentum = torch.compile(self.momentum) if settings.compile else self.momentum
        dim = [m for m in self.online[1].modules() if isinstance(m, nn.Linear)][-1].out_features
        self.criterion = NTXentLoss(temperature=settings.temperature, memory_bank_size=(settings.queue_size, dim))
        self.optimizer = settings.optimizer(self.online.parameters())
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.batches = cycle(lambda epoch: iter(self.loader))
        self._next = next(self.batches)  # starts the workers
        self.worker_pids = tuple(p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before)

    def _input(self, views: Tensor) -> Tensor:
        views = views.to(self.settings.device, non_blocking=True)
        return views.contiguous(memory_format=torch.channels_last) if self.channels_last else views

    def step(self) -> None:
        (x_query, x_key), _ = self._next if self._next is not None else next(self.batches)
        self._next = None
        x_query, x_key = self._input(x_query), self._input(x_key)
        self.update_momentum(self.online, self.momentum, m=self.settings.ema)
        with self.settings.autocast():
            query = self.run_online(x_query)
            with torch.no_grad():
                key = self.run_momentum(x_key)
            loss = self.criterion(query, key)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.batches.close()
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        del self.loader


def build_method(name: str, settings: Settings) -> ContrastiveMethod:
    """The registered method ``name`` with its default views and the shared backbone, queue,
    momentum and temperature (where its config has them; published FNC keeps its memory of
    16 × the batch view entries in total, not the queue)."""
    spec = method_spec(name)
    backbone = resnet(settings.backbone, cifar_stem=settings.cifar_stem, width=settings.width)
    shared = {"queue_size": settings.queue_size, "momentum": settings.ema, "search_backend": settings.search_backend}
    if name not in OWN_TEMPERATURE:
        shared["temperature"] = settings.temperature
    fields = {f.name for f in dataclasses.fields(spec.config)}
    method = spec(backbone, setup=Setup(global_batch=settings.batch_size),
                  **{field: value for field, value in shared.items() if field in fields})
    method.channels_last = settings.channels_last
    return method


class Ours(Contender):
    """Our method: resident uint8 batches, views on the device, the method's step."""

    def __init__(self, method: str, data: ImageTensorDataset, settings: Settings, total_steps: int = 10_000):
        self.name, self.settings, self.total_steps, self.global_step = method, settings, total_steps, 0
        self.method = build_method(method, settings).to(settings.device)
        self.method.use_channels_last(settings.device)
        if settings.compile:
            self.method.online = torch.compile(self.method.online)
            self.method.target_encoder = torch.compile(self.method.target_encoder)
        self.optimizer = settings.optimizer(self.method.parameters())
        batches = TrainingBatches(data, settings.batch_size, settings.device, seed=settings.seed, resident=True)
        self.batches = cycle(batches.epoch)

    def step(self) -> None:
        images, ids = next(self.batches)
        self.train_step(images, ids)

    def train_step(self, images: Tensor, ids: Tensor, clock: Callable[[str], None] | None = None) -> Tensor:
        """The step without fetching the batch (what the sync check watches); returns the loss.

        With ``clock``, it is called with each of :data:`SEGMENTS` when that segment ends:
        the method's own stages through ``method.clock``, then backward, optimizer and
        after step.
        """
        tick = clock or (lambda segment: None)
        self.method.clock = clock
        try:
            with self.settings.autocast():
                output = self.method(images, ids)
            output.loss.backward()
            tick("backward")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            tick("optimizer")
            self.method.after_optimizer_step(self.global_step, self.total_steps)
            tick("after step")
        finally:
            self.method.clock = None
        self.global_step += 1
        return output.loss.detach()


def step_breakdown(ours: Ours, steps: int) -> dict[str, Any] | None:
    """Mean seconds (wall, and CPU of this process) per step segment over ``steps`` steps of
    the method's own step (:meth:`Ours.train_step` with a clock that synchronises the device
    at every segment boundary)."""
    if steps < 1:
        return None
    device = ours.settings.device
    wall = {s: 0.0 for s in SEGMENTS}
    cpu = {s: 0.0 for s in SEGMENTS}
    last = [0.0, 0.0]

    def clock(segment: str) -> None:
        synchronize(device)
        now = [time.perf_counter(), time.process_time()]
        wall[segment] += now[0] - last[0]
        cpu[segment] += now[1] - last[1]
        last[:] = now

    for _ in range(steps):
        images, ids = next(ours.batches)
        synchronize(device)
        last[:] = [time.perf_counter(), time.process_time()]
        ours.train_step(images, ids, clock)
    return {
        "ms": {s: round(1000 * wall[s] / steps, 2) for s in SEGMENTS},
        "cpu_ms": {s: round(1000 * cpu[s] / steps, 2) for s in SEGMENTS},
        "steps": steps,
    }


def sync_check(ours: Ours) -> dict[str, Any]:
    """Runs one step of ``ours`` under ``torch.cuda.set_sync_debug_mode("error")``."""
    if ours.settings.device.type != "cuda":
        return {"checked": False, "reason": "host synchronisation is observable on CUDA only"}
    images, ids = next(ours.batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ours.train_step(images, ids)
        return {"checked": True, "synchronisation_free": True}
    except RuntimeError as error:
        return {"checked": True, "synchronisation_free": False, "error": str(error).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def workers_cpu(pids: tuple[int, ...]) -> float:
    """User + system CPU-seconds of the given (live) processes."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def workers_uss_mb(pids: tuple[int, ...]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total / 2**20, 1)


def wait_idle(pids: tuple[int, ...], timeout: float = 60.0) -> None:
    """Waits until loader workers stop using CPU (their prefetch queue is full)."""
    if not pids:
        return
    deadline, last = time.monotonic() + timeout, workers_cpu(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = workers_cpu(pids)
        if now - last < 0.02:
            return
        last = now


def run_config(contenders: list[Contender], settings: Settings, rounds: int, steps: int) -> dict[str, dict]:
    """Interleaved rounds; per contender the wall and CPU seconds of each round.

    Loader workers keep filling their prefetch queue while other contenders run, so
    a contender's worker CPU is counted from the start of its round to the start of
    its next one (the queue is full at both), and after the last round until the
    workers are idle again.
    """
    device, process = settings.device, psutil.Process()
    record = {c.name: {"wall": [], "cpu": [], "worker_starts": [], "peak_rss": 0, "peak_cuda": 0, "uss": 0.0}
              for c in contenders}
    for contender in contenders:
        wait_idle(contender.worker_pids)
    for r in range(rounds):
        shift = r % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            mine = record[contender.name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            mine["worker_starts"].append(workers_cpu(contender.worker_pids))
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                contender.step()
                mine["peak_rss"] = max(mine["peak_rss"], process.memory_info().rss)
            synchronize(device)
            mine["wall"].append(time.perf_counter() - wall)
            mine["cpu"].append(time.process_time() - cpu)
            if device.type == "cuda":
                mine["peak_cuda"] = max(mine["peak_cuda"], torch.cuda.max_memory_allocated(device))
            mine["uss"] = max(mine["uss"], workers_uss_mb(contender.worker_pids))
    for contender in contenders:
        mine = record[contender.name]
        wait_idle(contender.worker_pids)
        starts = mine.pop("worker_starts") + [workers_cpu(contender.worker_pids)]
        mine["worker_cpu"] = [b - a for a, b in itertools.pairwise(starts)]
    return record


def summarize(name: str, record: dict, settings: Settings, steps: int) -> dict[str, Any]:
    """Images/s and images per CPU-second of one contender over its rounds."""
    images = settings.batch_size * steps
    cpu = [c + w for c, w in zip(record["cpu"], record["worker_cpu"])]
    result = {
        "width": settings.width,
        "variant": settings.variant,
        "precision": settings.precision,
        "contender": name,
        "images_per_second": round(images * len(record["wall"]) / sum(record["wall"]), 2),
        "images_per_cpu_second": round(images * len(cpu) / sum(cpu), 2),
        "rounds_images_per_second": [round(images / w, 2) for w in record["wall"]],
        "rounds_images_per_cpu_second": [round(images / c, 2) for c in cpu],
        "loader_worker_cpu_share": round(sum(record["worker_cpu"]) / sum(cpu), 3),
    }
    if settings.device.type == "cuda":
        result["peak_memory_mb"] = round(record["peak_cuda"] / 2**20, 1)
        result["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_memory_mb"] = round(record["peak_rss"] / 2**20, 1)
        result["peak_memory_kind"] = "process RSS (all contenders of this configuration share the process)"
    if record["uss"]:
        result["loader_workers_uss_mb"] = record["uss"]
    return result


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours over lightly's, per CPU-second and per wall second, for each configuration."""
    rows = []
    for lightly in [r for r in results if r["contender"] == LIGHTLY]:
        key = (lightly["width"], lightly["variant"], lightly["precision"])
        for ours in results:
            if ours["contender"] != LIGHTLY and (ours["width"], ours["variant"], ours["precision"]) == key:
                rows.append({
                    "width": key[0], "variant": key[1], "precision": key[2], "method": ours["contender"],
                    "per_cpu_second": round(ours["images_per_cpu_second"] / lightly["images_per_cpu_second"], 3),
                    "wall": round(ours["images_per_second"] / lightly["images_per_second"], 3),
                    "wall_rounds_median": round(statistics.median(
                        o / t for o, t in zip(ours["rounds_images_per_second"], lightly["rounds_images_per_second"])), 3),
                })
    return rows


def measure(data: ImageTensorDataset, args: argparse.Namespace, width: int, variant: str,
            log: Callable[[str], None]) -> tuple[list[dict], list[dict], dict | None]:
    """One configuration: warm-up, interleaved rounds, our breakdown (and sync check)."""
    settings = Settings(width, variant, args.batch_size, args.queue_size, args.lr, args.weight_decay, 0.9, args.ema,
                        args.temperature, args.precision, args.device, args.seed, args.search_backend,
                        args.backbone, args.stem == "cifar")
    torch.manual_seed(args.seed)
    contenders: list[Contender] = [LightlyMoCo(data, settings, args.workers)] if args.lightly else []
    contenders += [Ours(m, data, settings) for m in args.methods]
    try:
        warmup = args.warmup + (args.compile_warmup if settings.compile else 0)
        for contender in contenders:
            start = time.perf_counter()
            for _ in range(warmup):
                contender.step()
            synchronize(settings.device)
            log(f"  warm-up {contender.name}: {warmup} steps in {time.perf_counter() - start:.0f}s")
        record = run_config(contenders, settings, args.rounds, args.steps)
        results = [summarize(c.name, record[c.name], settings, args.steps) for c in contenders]
        breakdowns = []
        for ours in [c for c in contenders if isinstance(c, Ours)]:
            parts = step_breakdown(ours, args.breakdown_steps)
            if parts is not None:
                breakdowns.append({"width": width, "variant": variant, "precision": settings.precision,
                                   "method": ours.name, **parts})
        checked = [sync_check(c) | {"method": c.name} for c in contenders
                   if isinstance(c, Ours) and c.name in ("moco", "sce") and settings.device.type == "cuda"]
        return results, breakdowns, ({"width": width, "variant": variant, "steps": checked} if checked else None)
    finally:
        for contender in contenders:
            contender.close()


# ---------------------------------------------------------------- report


def machine(device: torch.device, threads: int, workers: int) -> dict[str, Any]:
    """The device the figures were measured on."""
    cpu_name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": device.type,
        "cpu": cpu_name,
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "lightly_loader_workers": workers,
        "load_average_when_written": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(terse=True),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict[str, str]:
    import torchvision

    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
             "softcontrast": softcontrast.__version__ if hasattr(softcontrast, "__version__") else "source"}
    try:
        import lightly

        found["lightly"] = lightly.__version__
    except ImportError:
        pass
    return found


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The docs' table of a throughput report (``<out>.md`` is written from it)."""
    m, s = report["machine"], report["settings"]
    device = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores"
    depth = s.get("backbone", "resnet18").removeprefix("resnet")
    network = f"ResNet-{depth} ({'ImageNet' if s.get('stem') == 'imagenet' else 'CIFAR'} stem)"
    lines = [
        (f"Device: {device} ({m['device']}); torch threads {m['torch_threads']}, lightly loader workers "
        f"{m['lightly_loader_workers']}; load average (1, 5, 15 min) when written {', '.join(map(str, m['load_average_when_written']))}."),
        (f"Settings: {network}, batch {s['batch_size']}, queue {s['queue_size']}, "
        f"{s['subset']} images, {s['rounds']} interleaved rounds of {s['steps']} steps per contender."),
        "",
    ]
    if m["device"] == "cpu":
        lines += ["Images per CPU-second (this process, plus lightly's loader workers) is the figure that holds on a "
                  "shared CPU; wall-clock images/s depend on what other processes ran meanwhile. Peak MB is the "
                  "process RSS, shared by all contenders of a configuration.", ""]
    if report.get("stopped"):
        lines += [f"Stopped early: {report['stopped']}", ""]
    if report.get("note"):
        lines += [f"!!! note \"GPU\"\n    {report['note']}", ""]
    lightly = {(r["width"], r["variant"], r["precision"]): r for r in report["results"] if r["contender"] == LIGHTLY}
    ours = {(r["width"], r["variant"], r["precision"], r["contender"]): r for r in report["results"]}
    lines += [
        ("| width | variant | precision | method | ours / lightly per CPU-s | ours / lightly wall | "
        "ours img/CPU-s | lightly img/CPU-s | ours img/s | lightly img/s | peak MB ours / lightly |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["ratios"]:
        key = (row["width"], row["variant"], row["precision"])
        mine, theirs = ours[key + (row["method"],)], lightly[key]
        lines.append(
            f"| {row['width']} | {row['variant']} | {row['precision']} | {row['method']} | "
            f"**{row['per_cpu_second']:.3f}** | {row['wall']:.3f} | {_fmt(mine['images_per_cpu_second'])} | "
            f"{_fmt(theirs['images_per_cpu_second'])} | {_fmt(mine['images_per_second'])} | "
            f"{_fmt(theirs['images_per_second'])} | {_fmt(mine['peak_memory_mb'], 0)} / "
            f"{_fmt(theirs['peak_memory_mb'], 0)} |"
        )
    if not report["ratios"]:
        lines.pop(-1), lines.pop(-1)
        lines += ["| width | variant | precision | method | img/s | img/CPU-s | peak MB |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['width']} | {r['variant']} | {r['precision']} | {r['contender']} | "
                  f"{_fmt(r['images_per_second'])} | {_fmt(r['images_per_cpu_second'])} | {_fmt(r['peak_memory_mb'], 0)} |"
                  for r in report["results"]]
    if report["breakdown"]:
        kind = "cpu_ms" if m["device"] == "cpu" else "ms"
        segments = list(report["breakdown"][0][kind])  # a report's own segments (older reports name others)
        lines += ["", f"Our step, {'CPU' if kind == 'cpu_ms' else 'wall'} milliseconds per step:", "",
                  "| width | variant | method | " + " | ".join(segments) + " | total |",
                  "|---|---|---|" + "---|" * (len(segments) + 1)]
        for row in report["breakdown"]:
            parts = row[kind]
            lines.append(f"| {row['width']} | {row['variant']} | {row['method']} | "
                         + " | ".join(_fmt(parts.get(seg)) for seg in segments) + f" | {_fmt(sum(parts.values()))} |")
    if report.get("sync_check"):
        lines += ["", "Host synchronisation in our step (`torch.cuda.set_sync_debug_mode(\"error\")`): "
                  + "; ".join(f"{c['width']}/{c['variant']}: " + ", ".join(
                      f"{s['method']} {'none' if s.get('synchronisation_free') else s.get('error', 'not checked')}"
                      for s in c["steps"]) for c in report["sync_check"])]
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def shown_command(argv: list[str]) -> str:
    """The command line as recorded, with machine paths reduced to their file names."""
    shown = []
    for part in argv:
        path = Path(part)
        shown.append(f"<path>/{path.name}" if path.is_absolute() else part)
    return " ".join(["python", "benchmarks/throughput.py", *(shlex.quote(p) if " " in p else p for p in shown)])


def write_report(args: argparse.Namespace, results: list[dict], breakdowns: list[dict], syncs: list[dict]) -> dict:
    report = {
        "benchmark": "throughput",
        "machine": machine(args.device, args.threads, args.workers),
        "versions": versions(),
        "settings": {
            "dataset": f"<unzipped {args.data_zip.name}>" if args.data_zip else args.dataset,
            "subset": args.subset, "backbone": args.backbone, "stem": args.stem, "widths": args.widths, "variants": args.variants, "precision": args.precision,
            "methods": args.methods, "lightly": args.lightly, "batch_size": args.batch_size,
            "queue_size": args.queue_size, "lr": args.lr, "weight_decay": args.weight_decay, "ema": args.ema,
            "temperature": args.temperature, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
            "compile_warmup": args.compile_warmup, "breakdown_steps": args.breakdown_steps,
            "search_backend": args.search_backend, "seed": args.seed,
            "data_paths": {
                LIGHTLY: f"DataLoader, {args.workers} workers, MoCoV2Transform per PIL image (no blur)",
                "ours": "uint8 images resident on the device, both views made there in one batched pass",
            },
        },
        "command": args.command,
        "ratios": ratios(results),
        "results": results,
        "breakdown": breakdowns,
    }
    if args.device.type != "cuda":
        report["note"] = ("GPU figures are still missing: this run had no GPU. On a GPU run with --device cuda "
                          "--precision bf16 (and --methods moco sce fnc --search-backend faiss-flat for FAISS).")
    if syncs:
        report["sync_check"] = syncs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_table(report))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    plugins = argparse.ArgumentParser(add_help=False)
    plugins.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE")
    for source in plugins.parse_known_args(argv)[0].plugin:
        load_plugin(source)  # registers the user's methods before --methods lists the choices
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a Python file or module that registers methods to measure (repeatable)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-zip", type=Path, help="image-folder zip holding train/<class>/<image> (e.g. CIFAR-10)")
    data.add_argument("--dataset", default="digits", help="a softcontrast source string instead of --data-zip")
    parser.add_argument("--subset", type=int, default=5120, help="training images used (default 5120)")
    parser.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default="resnet18",
                        help="the network of every contender")
    parser.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar",
                        help="the ResNet stem: cifar (3x3 conv, no pooling) or imagenet (7x7 conv and max pooling)")
    parser.add_argument("--widths", type=int, nargs="+", default=[32], help="ResNet first-stage widths")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16 autocast (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--methods", nargs="+", choices=method_names(), default=["moco", "sce"],
                        help="our methods (registry names)")
    parser.add_argument("--no-lightly", dest="lightly", action="store_false", help="measure only our methods")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.06, help="for batch 256, scaled linearly")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.99, help="EMA momentum of the key encoders")
    parser.add_argument("--temperature", type=float, default=0.2, help="MoCo's temperature (both sides)")
    parser.add_argument("--search-backend", default="torch", help="FNC's false-negative search (fnc only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per contender per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
    parser.add_argument("--compile-warmup", type=int, default=1, help="extra untimed steps under torch.compile")
    parser.add_argument("--breakdown-steps", type=int, default=3, help="steps timed segment by segment (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="lightly's loader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/throughput_<device>.json)")
    args = parser.parse_args(argv)
    args.command = shown_command(sys.argv[1:] if argv is None else argv)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.precision = args.precision or ("bf16" if args.device.type == "cuda" else "fp32")
    args.out = args.out or Path("benchmarks/results") / f"throughput_{args.device.type}.json"
    for name in ("subset", "batch_size", "queue_size", "rounds", "steps", "threads", "widths"):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {values}")
    if args.queue_size < args.batch_size:
        parser.error(f"--queue-size {args.queue_size} is smaller than --batch-size {args.batch_size}")
    if args.subset < args.batch_size:
        parser.error(f"--subset {args.subset} holds fewer images than one batch of {args.batch_size}")
    if args.lightly:
        try:
            import lightly  # noqa: F401
        except ImportError:
            parser.error('lightly is not installed: pip install -e ".[bench]" (or pass --no-lightly)')
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        data = load_images(args, Path(scratch))
    args.subset = len(data)
    log(f"{len(data)} images {tuple(data.images.shape[1:])} on {args.device}, {args.threads} thread(s)")
    results, breakdowns, syncs = [], [], []
    for width in args.widths:
        for variant in args.variants:
            log(f"width {width}, {variant}, {args.precision}")
            found, parts, checked = measure(data, args, width, variant, log)
            results += found
            breakdowns += parts
            syncs += [checked] if checked else []
            report = write_report(args, results, breakdowns, syncs)
            for row in found:
                log(f"  {row['contender']:>13}: {row['images_per_second']:8.1f} img/s  "
                    f"{row['images_per_cpu_second']:8.1f} img/CPU-s  peak {row['peak_memory_mb']:.0f} MB")
            for row in report["ratios"][-len(args.methods):] if args.lightly else []:
                log(f"  {row['method']} / lightly: {row['per_cpu_second']:.3f} per CPU-s, {row['wall']:.3f} wall")
    return report


if __name__ == "__main__":
    main()
