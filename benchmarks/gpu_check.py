"""One-shot GPU check: every method in bf16 (eager and compiled), FAISS on the GPU, throughput beside lightly, SCE on CIFAR-10.

Four sections, each with its own share of the run's deadline (``--minutes``, default 8)
and its own ``try``/``except``: an error is recorded in the JSON and the next section runs.

* ``methods``: every registered method (built through the registry as
  ``benchmarks/throughput.py`` does: ResNet-18 with the CIFAR stem) runs ``--steps`` steps
  under bf16 autocast, eager and under ``torch.compile``. Checked: every loss is finite,
  and on CUDA no step after the warm-up synchronises with the host
  (``torch.cuda.set_sync_debug_mode("error")`` around each step; not checkable on the CPU,
  which the JSON says).
* ``faiss``: faiss sees a GPU exactly when torch does, and exact FAISS search
  (``faiss-flat``, on the GPU where faiss sees one) finds the neighbours the ``torch``
  backend finds.
* ``throughput``: ``benchmarks/throughput.py``'s measurement beside lightly's MoCo v2 at
  ResNet-18 / CIFAR (32 px) and ResNet-50 / 224 px (ImageNet stem, synthetic images):
  images/s of each contender and ours over lightly's (lightly missing is recorded).
* ``sce_recipe``: the packaged ``sce_cifar10`` recipe (``softcontrast train sce``) for as many
  epochs as the time left allows, with its kNN accuracy (needs ``--cifar``: a CIFAR-10
  image folder with ``train/`` and ``test/``; without it the section records the skip).

``--tiny`` runs all of it on the CPU at toy sizes (a few steps, width 4, 16-px views,
``torch.compile`` with the ``eager`` backend) for the tests.

Run: ``python benchmarks/gpu_check.py --cifar <path>/cifar10 --out benchmarks/results/gpu_check.json``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (the throughput benchmark's functions, reused)
from softcontrast.components.neighbors import NeighborSearch, faiss_device, faiss_gpu_count  # noqa: E402
from softcontrast.data import FolderImages, ImageTensorDataset  # noqa: E402
from softcontrast.data.images import list_image_folder  # noqa: E402
from softcontrast.methods import method_names  # noqa: E402

#: Each section's share of the run's deadline; the SCE recipe takes whatever is left.
SHARES = {"methods": 0.40, "faiss": 0.04, "throughput": 0.26}
#: Time kept back at the end of the run (writing the report, process exit).
END_MARGIN_S = 10.0


@dataclass(frozen=True)
class Sizes:
    """The scale of a check: the GPU's or ``--tiny``'s."""

    width: int
    image_size: int
    batch_size: int
    queue_size: int
    images: int
    steps: int
    warmup: int
    compile_backend: str
    throughput_batch: int
    throughput_r50_size: int
    throughput_r50_width: int
    throughput_rounds: int
    throughput_steps: int
    search_size: int

    @staticmethod
    def of(tiny: bool, steps: int | None) -> "Sizes":
        if tiny:
            return Sizes(width=4, image_size=16, batch_size=8, queue_size=32, images=32, steps=steps or 3, warmup=1,
                         compile_backend="eager", throughput_batch=8, throughput_r50_size=32, throughput_r50_width=4,
                         throughput_rounds=1, throughput_steps=1, search_size=256)
        return Sizes(width=64, image_size=32, batch_size=256, queue_size=4096, images=4096, steps=steps or 50,
                     warmup=2, compile_backend="inductor", throughput_batch=128, throughput_r50_size=224,
                     throughput_r50_width=64, throughput_rounds=2, throughput_steps=5, search_size=65_536)


class Clock:
    """The run's deadline and the current section's budget."""

    def __init__(self, minutes: float):
        self.start = time.monotonic()
        self.deadline = self.start + 60 * minutes - END_MARGIN_S
        self.section_end = self.deadline

    def left(self) -> float:
        """Seconds left in the current section."""
        return self.section_end - time.monotonic()

    def run_left(self) -> float:
        return self.deadline - time.monotonic()


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"


def run_section(name: str, budget_s: float, clock: Clock, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one section within ``budget_s`` (capped by the run's deadline); an exception is recorded, not raised."""
    started = time.monotonic()
    clock.section_end = min(clock.deadline, started + budget_s)
    record: dict[str, Any] = {"budget_s": round(clock.section_end - started, 1)}
    if clock.left() <= 0:
        return record | {"status": "skipped", "skip_reason": "skipped: the run's deadline was reached"}
    print(f"== {name} (budget {record['budget_s']:.0f}s)", flush=True)
    try:
        record |= body()
        record.setdefault("status", "done")
    except (Exception, SystemExit) as error:  # noqa: BLE001  (a section's failure is a finding; the next one runs)
        record |= {"status": "error", "error": error_text(error),
                   "traceback": traceback.format_exc().splitlines()[-12:]}
        print(f"   {name} failed: {record['error']}", flush=True)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def synthetic_images(count: int, size: int, seed: int = 0) -> ImageTensorDataset:
    """Random uint8 images with labels of 10 classes (speed and finiteness do not need real pictures)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 10
    return ImageTensorDataset(images, labels, [str(c) for c in range(10)])


def cifar_images(root: Path, count: int, size: int, workers: int, seed: int = 0) -> ImageTensorDataset:
    """``count`` random training images of a CIFAR-10 image folder (``root/train/<class>/``), decoded once."""
    files, labels, classes = list_image_folder(root / "train")
    source = FolderImages(root / "train", files, labels, classes)
    return source.subset(min(count, len(source)), seed).load_all(size, workers)


def loader_workers(tiny: bool) -> int:
    return 0 if tiny else max(1, min(8, (os.cpu_count() or 2) - 2))


# ---------------------------------------------------------------- sections


def check_methods(args: argparse.Namespace, sizes: Sizes, clock: Clock) -> dict[str, Any]:
    """Every method, eager and compiled, ``sizes.steps`` steps in bf16: finite losses, no host sync."""
    device = args.device
    data = synthetic_images(sizes.images, sizes.image_size)
    cuda = device.type == "cuda"
    section: dict[str, Any] = {
        "settings": {"backbone": "resnet18 (CIFAR stem)", "width": sizes.width, "image_size": sizes.image_size,
                     "batch_size": sizes.batch_size, "queue_size": sizes.queue_size, "precision": "bf16",
                     "steps": sizes.steps, "warmup_steps_not_sync_checked": f"{sizes.warmup} (compiled: {sizes.warmup + 1})",
                     "compile_backend": sizes.compile_backend, "data": "synthetic uint8 images"},
        "sync_check": ("torch.cuda.set_sync_debug_mode('error') around every step after the warm-up" if cuda else
                       "skipped: host synchronisation is observable on CUDA only (this run is on the CPU)"),
        "results": [],
    }
    runs = [(name, variant) for name in method_names() for variant in ("eager", "compile")]
    for index, (name, variant) in enumerate(runs):
        if clock.left() <= 0:
            section["results"] += [{"method": n, "variant": v, "status": "skipped",
                                    "skip_reason": "skipped: the section's budget was spent"} for n, v in runs[index:]]
            break
        print(f"   {name} {variant}", flush=True)
        try:
            section["results"].append(method_steps(name, variant, data, sizes, device, clock))
        except Exception as error:  # noqa: BLE001
            section["results"].append({"method": name, "variant": variant, "status": "error",
                                       "error": error_text(error)})
        torch._dynamo.reset()
    done = [r for r in section["results"] if r.get("status") == "done"]
    section["all_losses_finite"] = bool(done) and all(r["losses_finite"] for r in done)
    if cuda:
        section["all_synchronisation_free"] = bool(done) and all(r["synchronisation_free"] for r in done)
    return section


def method_steps(name: str, variant: str, data: ImageTensorDataset, sizes: Sizes, device: torch.device,
                 clock: Clock) -> dict[str, Any]:
    """``sizes.steps`` steps of method ``name``: the first ``sizes.warmup`` plain, the rest watched for host syncs."""
    settings = throughput.Settings(sizes.width, "eager", sizes.batch_size, sizes.queue_size, 0.06, 5e-4, 0.9, 0.99,
                                   0.2, "bf16", device, 0, "torch")
    torch.manual_seed(0)
    ours = throughput.Ours(name, data, settings, total_steps=sizes.steps)
    if variant == "compile":
        ours.method.online = torch.compile(ours.method.online, backend=sizes.compile_backend)
        ours.method.target_encoder = torch.compile(ours.method.target_encoder, backend=sizes.compile_backend)
    cuda = device.type == "cuda"
    warmup = sizes.warmup + (1 if variant == "compile" else 0)  # compiled: a recompile may follow the first step
    losses: list[torch.Tensor] = []
    sync: dict[str, Any] = {"synchronisation_free": True} if cuda else {}
    started = time.perf_counter()
    warm_end = started
    for step in range(sizes.steps):
        if step > warmup and clock.left() <= 0:
            break
        images, ids = next(ours.batches)
        watched = cuda and step >= warmup and sync["synchronisation_free"]
        if step == warmup:
            throughput.synchronize(device)
            warm_end = time.perf_counter()
        if watched:
            torch.cuda.set_sync_debug_mode("error")
        try:
            losses.append(ours.train_step(images, ids))
        except RuntimeError as error:
            if not watched:
                raise
            sync = {"synchronisation_free": False, "sync_error_step": step, "sync_error": error_text(error)}
        finally:
            if watched:
                torch.cuda.set_sync_debug_mode("default")
    throughput.synchronize(device)
    elapsed = time.perf_counter() - warm_end
    values = torch.stack(losses).float().cpu() if losses else torch.empty(0)
    timed = len(losses) - warmup
    result = {
        "method": name, "variant": variant, "status": "done", "steps": len(losses), "warmup_steps": warmup,
        "losses_finite": bool(values.numel()) and bool(torch.isfinite(values).all()),
        "first_loss": round(float(values[0]), 4) if values.numel() else None,
        "last_loss": round(float(values[-1]), 4) if values.numel() else None,
        "warmup_seconds": round(warm_end - started, 2),
        "images_per_second": round(timed * sizes.batch_size / elapsed, 1) if timed > 0 and elapsed > 0 else None,
        **sync,
    }
    if len(losses) < sizes.steps:
        result["stopped"] = f"after {len(losses)} of {sizes.steps} steps: the section's budget was spent"
    ours.close()
    return result


def check_faiss(args: argparse.Namespace, sizes: Sizes, clock: Clock) -> dict[str, Any]:
    """faiss sees a GPU exactly when torch does; ``faiss-flat`` finds the ``torch`` backend's neighbours."""
    torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    faiss_gpus = faiss_gpu_count()
    device = args.device
    generator = torch.Generator().manual_seed(0)
    index = torch.nn.functional.normalize(torch.randn(sizes.search_size, 128, generator=generator), dim=1).to(device)
    queries = torch.nn.functional.normalize(torch.randn(512, 128, generator=generator), dim=1).to(device)
    found = {}
    for backend in ("torch", "faiss-flat"):
        search = NeighborSearch(backend)
        search.add(index)
        throughput.synchronize(device)
        start = time.perf_counter()
        found[backend] = search.search(queries, 16)
        throughput.synchronize(device)
        found[backend + "_ms"] = round(1000 * (time.perf_counter() - start), 2)
    (torch_scores, torch_ids), (faiss_scores, faiss_ids) = found["torch"], found["faiss-flat"]
    same_ids = (torch_ids == faiss_ids).float().mean().item()
    return {
        "torch_gpus": torch_gpus,
        "faiss_gpus": faiss_gpus,
        "detection_agrees": (torch_gpus > 0) == (faiss_gpus > 0),
        "faiss_index_device": str(faiss_device(None, index.device)),
        "data_device": str(device),
        "gpu_search": "checked" if device.type == "cuda" else "skipped: no GPU in this run (the CPU index was compared)",
        "index_size": sizes.search_size, "queries": queries.shape[0], "k": 16,
        "same_neighbours_share": round(same_ids, 6),
        "max_score_difference": float((torch_scores.float() - faiss_scores.float()).abs().max()),
        "search_ms": {"torch": found["torch_ms"], "faiss-flat": found["faiss-flat_ms"]},
        "equal_to_torch": same_ids >= 0.999,
    }


def check_throughput(args: argparse.Namespace, sizes: Sizes, clock: Clock) -> dict[str, Any]:
    """``throughput.measure`` at ResNet-18 / CIFAR and ResNet-50 / 224 px, beside lightly when it imports."""
    try:
        import lightly  # noqa: F401

        with_lightly, lightly_note = True, "lightly imported"
    except ImportError as error:
        with_lightly, lightly_note = False, f"skipped lightly: it is not importable ({error_text(error)})"
    workers = loader_workers(args.tiny)
    configs = [
        ("resnet18_cifar", "resnet18", "cifar", sizes.width, sizes.image_size, 4 * sizes.throughput_batch),
        ("resnet50_224px", "resnet50", "imagenet", sizes.throughput_r50_width, sizes.throughput_r50_size,
         2 * sizes.throughput_batch),
    ]
    section: dict[str, Any] = {"lightly": lightly_note, "configurations": {}}
    for label, backbone, stem, width, size, count in configs:
        if clock.left() <= 0:
            section["configurations"][label] = {"status": "skipped",
                                                "skip_reason": "skipped: the section's budget was spent"}
            continue
        print(f"   {label}", flush=True)
        try:
            if label == "resnet18_cifar" and args.cifar is not None:
                data, source = cifar_images(args.cifar, count, size, workers), "CIFAR-10 training images"
            else:
                data, source = synthetic_images(count, size), f"synthetic {size}-px images"
            flags = ["--backbone", backbone, "--stem", stem, "--widths", str(width), "--variants", "eager",
                     "--methods", "moco", "sce", "--batch-size", str(sizes.throughput_batch),
                     "--queue-size", str(max(sizes.queue_size, sizes.throughput_batch)),
                     "--subset", str(len(data)), "--rounds", str(sizes.throughput_rounds),
                     "--steps", str(sizes.throughput_steps), "--warmup", "1", "--breakdown-steps", "0",
                     "--workers", str(workers), "--device", str(args.device), "--precision", args.precision,
                     "--threads", str(torch.get_num_threads())]
            options = throughput.parse_args(flags + ([] if with_lightly else ["--no-lightly"]))
            results, _, syncs = throughput.measure(data, options, width, "eager", lambda text: print(text, flush=True))
            section["configurations"][label] = {
                "status": "done", "backbone": backbone, "stem": stem, "width": width, "image_size": size,
                "data": source, "batch_size": sizes.throughput_batch, "precision": args.precision,
                "images_per_second": {r["contender"]: r["images_per_second"] for r in results},
                "ratio_to_lightly": {r["method"]: r["wall"] for r in throughput.ratios(results)},
                "results": results, **({"sync_check": syncs} if syncs else {}),
            }
        except Exception as error:  # noqa: BLE001
            section["configurations"][label] = {"status": "error", "error": error_text(error)}
    return section


def check_sce_recipe(args: argparse.Namespace, sizes: Sizes, clock: Clock, methods: dict[str, Any]) -> dict[str, Any]:
    """The ``sce_cifar10`` recipe for as many epochs as fit in the time left, and its kNN accuracy."""
    if args.cifar is None:
        return {"status": "skipped", "skip_reason": "skipped: no data (give --cifar PATH, a CIFAR-10 image folder)"}
    if not (args.cifar / "train").is_dir():
        raise FileNotFoundError(f"--cifar {args.cifar}: expected a CIFAR-10 image folder with train/ and test/ inside")
    from softcontrast.cli import train

    train_images = len(list_image_folder(args.cifar / "train")[0])
    speed = next((r.get("images_per_second") for r in methods.get("results", [])
                  if r.get("method") == "sce" and r.get("variant") == "eager" and r.get("images_per_second")), None)
    reserve = 0.3 * clock.left() if not args.tiny else 0.0  # data loading and the kNN monitor before and after
    epoch_s = 1.5 * train_images / speed if speed else None
    epochs = 1 if args.tiny or epoch_s is None else math.floor((clock.left() - reserve) / epoch_s)
    estimate = {"train_images": train_images, "sce_images_per_second_measured": speed,
                "epoch_seconds_estimated": round(epoch_s, 1) if epoch_s else None}
    if epochs < 1:
        return {"status": "skipped", "skip_reason": "skipped: not enough time left for one epoch", **estimate}
    warmup = round(5 * epochs / 200, 3)  # the recipe's 5 of 200 warm-up epochs, at this length
    with tempfile.TemporaryDirectory() as output:
        flags = ["--config", "sce_cifar10", "--dataset", f"imagefolder:{args.cifar}", "--epochs", str(epochs),
                 "--warmup-epochs", str(warmup), "--knn-every", "0", "--checkpoint-every", "0",
                 "--precision", "bf16" if args.device.type == "cuda" else "no", "--output-dir", output,
                 "--num-workers", str(loader_workers(args.tiny))]
        if args.tiny:
            flags += ["--cpu", "--width", str(sizes.width), "--view-size", str(sizes.image_size),
                      "--batch-size", str(2 * sizes.batch_size), "--split-bn-groups", "2", "--knn-test-subset", "none"]
        elif args.device.type != "cuda":
            flags += ["--cpu"]
        shown = [f if not f.startswith(("imagefolder:", "/")) else "<path>" for f in flags]
        print(f"   softcontrast train sce {' '.join(shown)}", flush=True)
        previous = os.environ.get("SOFTCONTRAST_TRACEBACK")
        os.environ["SOFTCONTRAST_TRACEBACK"] = "1"  # a refused setting raises its own error (recorded), not SystemExit
        try:
            result = train("sce", flags, prog="gpu_check sce_cifar10")
        finally:
            if previous is None:
                os.environ.pop("SOFTCONTRAST_TRACEBACK")
            else:
                os.environ["SOFTCONTRAST_TRACEBACK"] = previous
    final_epoch = max(result.knn) if result.knn else None
    losses = torch.tensor(result.losses, dtype=torch.float64)
    return {
        "command": "softcontrast train sce " + " ".join(shown),
        "epochs": epochs, "epochs_done": result.epochs_done, "recipe_epochs": 200, **estimate,
        "knn_accuracy": result.knn.get(final_epoch) if final_epoch is not None else None,
        "knn_accuracy_by_epoch": {str(k): round(v, 4) for k, v in sorted(result.knn.items())},
        "losses_finite": bool(losses.numel()) and bool(torch.isfinite(losses).all()),
        "final_loss": round(float(losses[-1]), 4) if losses.numel() else None,
        "train_seconds": round(result.wall_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
    }


# ---------------------------------------------------------------- run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole run's deadline (default 8)")
    parser.add_argument("--cifar", type=Path, default=None,
                        help="a CIFAR-10 image folder (train/<class>/, test/<class>/) for the SCE recipe")
    parser.add_argument("--tiny", action="store_true", help="everything on the CPU at toy sizes (for the tests)")
    parser.add_argument("--steps", type=int, default=None, help="steps per method and variant (default 50; 3 tiny)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (--tiny: cpu)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps must be >= 2 (one warm-up step and one checked), got {args.steps}")
    if args.tiny:
        args.device = "cpu"
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.precision = "bf16"
    args.command = "python benchmarks/gpu_check.py " + " ".join(
        f"<path>/{Path(a).name}" if Path(a).is_absolute() else a for a in (sys.argv[1:] if argv is None else argv))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
    sizes = Sizes.of(args.tiny, args.steps)
    clock = Clock(args.minutes)
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "tiny": args.tiny,
        "machine": throughput.machine(args.device, torch.get_num_threads(), loader_workers(args.tiny)),
        "versions": throughput.versions(),
        "command": args.command,
        "minutes": args.minutes,
        "sections": {},
    }
    if args.device.type != "cuda":
        report["note"] = "this run had no GPU: the CUDA-only checks (host synchronisation, FAISS on the GPU) are skipped"

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    total = clock.run_left()
    sections = report["sections"]
    sections["methods"] = run_section("methods", SHARES["methods"] * total, clock,
                                      lambda: check_methods(args, sizes, clock))
    write()
    sections["faiss"] = run_section("faiss", SHARES["faiss"] * total, clock, lambda: check_faiss(args, sizes, clock))
    write()
    sections["throughput"] = run_section("throughput", SHARES["throughput"] * total, clock,
                                         lambda: check_throughput(args, sizes, clock))
    write()
    sections["sce_recipe"] = run_section("sce_recipe", clock.run_left(), clock,
                                         lambda: check_sce_recipe(args, sizes, clock, sections["methods"]))
    report["seconds"] = round(time.monotonic() - clock.start, 1)
    write()
    print(f"wrote {args.out} in {report['seconds']:.0f}s", flush=True)
    return report


if __name__ == "__main__":
    main()
