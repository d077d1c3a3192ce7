"""Loader throughput per CPU core: our streamed crops beside torchvision's ImageFolder pipeline.

torchvision's side is the pipeline lightly and solo-learn users run on ImageNet-like
folders: ``datasets.ImageFolder`` (PIL loader, full decode to RGB), then
``RandomResizedCrop(224)``, ``RandomHorizontalFlip`` and ``ToTensor``; for two views
the transform is applied twice to the one decoded image, as lightly's and
solo-learn's multi-view wrappers do. Ours is
:class:`~softcontrast.data.views.RandomCrops` over
:class:`~softcontrast.data.images.FolderImages` as it runs in training: decode (at a
reduced JPEG scale where every crop allows it), the same box rule, one antialiased
resize to 224, ``uint8`` out; flip, colour and normalisation happen later on the
device. Also ours with ``draft=False``, and ours over the prepared format (``softcontrast prepare``,
``jpeg`` and ``pixels`` records at 256 px).

Both sides run in this process through a ``DataLoader`` with ``num_workers=0`` and
one torch thread, so each figure is the work of one CPU core. Contenders take turns
in interleaved rounds (the first one rotates), each round one pass over every image
in a fresh order; reported are the median images per CPU-second (the work of one
core, unaffected by other processes on a shared machine) and images/s (wall clock) of
each, and the median and quartiles of the per-round ratios ours ÷ torchvision. The images are ImageNet-like JPEGs (``benchmarks/photos.py``) written to
a temporary folder that is deleted at the end.

Run: ``nice python benchmarks/loader.py --out benchmarks/results/loader_cpu.json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from PIL import features
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photos import write_imagenet_like_folder  # noqa: E402

from softcontrast.data import CropSpec, FolderImages, ImageSource, RandomCrops  # noqa: E402
from softcontrast.data.images import list_image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 224
TORCHVISION = "torchvision"
OURS = "ours"
OURS_NO_DRAFT = "ours, draft off"
OURS_PREPARED = "ours, prepared"  # + its format: "ours, prepared jpeg", "ours, prepared pixels"

NOTES = [
    "One CPU core: DataLoader with num_workers=0, torch.set_num_threads(1); each pass decodes every image once "
    "and cuts all its views from it (both sides).",
    "torchvision's side is its standard pipeline as users run it (RandomResizedCrop(224), RandomHorizontalFlip, "
    "ToTensor): its output is float32 in [0, 1], flipped. Ours is the loader as it runs in training: uint8 crops, "
    "not flipped; flip, colour jitter and normalisation are done later on the device, so their cost is not here. "
    "Its float conversion and flip are part of torchvision's figure, and ours returns a quarter of the bytes.",
    "Both sides use the same crop rule (RandomResizedCrop's box, scale 0.08-1, ratio 3/4-4/3) and a bilinear "
    "antialiased resize to 224.",
    "JPEG draft decodes at 1/2, 1/4 or 1/8 scale only when every crop of the image is at least 2, 4 or 8 times "
    "224 px on its shorter side; on 500x375 images no box is 448 px high, so draft rarely applies to "
    "ImageNet-sized images at 224 (compare 'ours, draft off').",
    "The images are cut from two photographs scaled to ImageNet's usual size; their JPEG files are smaller than "
    "ImageNet's (about 110 KB on average), so decoding weighs less here than it does on ImageNet.",
]


class MultiView:
    """torchvision's transform applied ``views`` times to one decoded image (a multi-view wrapper)."""

    def __init__(self, transform: Callable, views: int):
        self.transform, self.views = transform, views

    def __call__(self, image):
        return [self.transform(image) for _ in range(self.views)]


def torchvision_dataset(root: Path, views: int) -> datasets.ImageFolder:
    """The ImageFolder pipeline of lightly's and solo-learn's users, ``views`` views per image."""
    transform = transforms.Compose([
        transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    return datasets.ImageFolder(str(root), transform=transform if views == 1 else MultiView(transform, views))


def our_dataset(source: ImageSource, views: int, seed: int, draft: bool) -> RandomCrops:
    """Our training loader's dataset: ``views`` crops of 224 per image."""
    return RandomCrops(source, [CropSpec(SIZE, (0.08, 1.0))] * views, seed, draft)


def timed_pass(dataset: torch.utils.data.Dataset, order: list, batch_size: int) -> tuple[float, float]:
    """One pass over ``order`` through a ``DataLoader`` without workers: ``(wall s, CPU s)``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in loader:
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def quartiles(values: list[float]) -> dict[str, float]:
    """Median and quartiles (one value: that value three times)."""
    if len(values) == 1:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def prepared_source(root: Path, folder: Path, size: int, fmt: str) -> tuple[ImageSource | None, dict]:
    """Our prepared format (``softcontrast prepare``) of the folder ``root``, written to ``folder``.

    Returns:
        The prepared training split (or ``None``) and what happened, for the report.
    """
    try:
        from softcontrast.data.prepared import load_prepared, prepare
    except ImportError as error:
        return None, {"available": False, "note": f"not available: softcontrast.data.prepared ({error})"}
    start = time.perf_counter()
    try:
        prepare(f"imagefolder:{root}", folder, size, format=fmt)
        split = load_prepared(folder, None, 0).train
    except Exception as error:
        return None, {"available": False, "note": f"prepare/load_prepared failed: {type(error).__name__}: {error}"}
    return split, {"available": True, "size": size, "format": fmt, "prepare_s": time.perf_counter() - start}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cpu_count": os.cpu_count(), "torch_threads": 1,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo"))}


def measure(contenders: dict[tuple[int, str], Callable[[int], torch.utils.data.Dataset]], count: int, rounds: int,
            batch_size: int, seed: int) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """Interleaved rounds: in each, every contender makes one pass over all images (the first one rotates).

    ``contenders`` maps ``(views, name)`` to a function of the round that gives the dataset
    (ours is keyed by ``(index, epoch)``, torchvision's by the index).
    """
    keys = list(contenders)
    times: dict[tuple[int, str], list[tuple[float, float]]] = {key: [] for key in keys}
    for key in keys:  # warm-up: imports, first allocations, the page cache
        warm = list(range(min(batch_size, count)))
        timed_pass(contenders[key](rounds), warm if key[1] == TORCHVISION else [(i, rounds) for i in warm], batch_size)
    for round_index in range(rounds):
        permutation = np.random.default_rng([seed, round_index]).permutation(count).tolist()
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            torch.manual_seed(seed + round_index)  # torchvision's boxes and flips
            order = permutation if key[1] == TORCHVISION else [(i, round_index) for i in permutation]
            times[key].append(timed_pass(contenders[key](round_index), order, batch_size))
    return times


def summarise(times: dict[tuple[int, str], list[tuple[float, float]]], count: int) -> tuple[list[dict], list[dict]]:
    """Per-contender medians and the per-round ratios ours ÷ torchvision."""
    results, ratios = [], []
    for (views, name), passes in times.items():
        wall = quartiles([count / w for w, _ in passes])
        cpu = quartiles([count / c for _, c in passes])
        results.append({"views": views, "loader": name, "images_per_second": wall["median"],
                        "images_per_second_q1": wall["q1"], "images_per_second_q3": wall["q3"],
                        "images_per_cpu_second": cpu["median"], "rounds": len(passes)})
    for (views, name), passes in times.items():
        if name == TORCHVISION:
            continue
        theirs = times[(views, TORCHVISION)]
        wall = quartiles([tw / w for (w, _), (tw, _) in zip(passes, theirs)])
        cpu = quartiles([tc / c for (_, c), (_, tc) in zip(passes, theirs)])
        ratios.append({"views": views, "loader": name, "ratio": wall["median"], "ratio_q1": wall["q1"],
                       "ratio_q3": wall["q3"], "ratio_per_cpu_second": cpu["median"],
                       "ratio_per_cpu_second_q1": cpu["q1"], "ratio_per_cpu_second_q3": cpu["q3"]})
    return results, ratios


def markdown_table(report: dict) -> str:
    """The docs table: each loader's images per CPU-second (one core) and wall-clock images/s, and ours ÷ torchvision."""
    ratios = {(r["views"], r["loader"]): r for r in report["ratios"]}
    lines = ["| views | loader | images / CPU-s | ÷ torchvision, per CPU-s (quartiles) | images/s (wall) "
             "| ÷ torchvision, images/s (quartiles) |", "|---|---|---|---|---|---|"]
    for row in report["results"]:
        ratio = ratios.get((row["views"], row["loader"]))
        if ratio:
            cpu = (f"**{ratio['ratio_per_cpu_second']:.2f}** ({ratio['ratio_per_cpu_second_q1']:.2f}–"
                   f"{ratio['ratio_per_cpu_second_q3']:.2f})")
            wall = f"{ratio['ratio']:.2f} ({ratio['ratio_q1']:.2f}–{ratio['ratio_q3']:.2f})"
        else:
            cpu = wall = "1"
        lines.append(f"| {row['views']} | {row['loader']} | {row['images_per_cpu_second']:.0f} | {cpu} "
                     f"| {row['images_per_second']:.0f} | {wall} |")
    return "\n".join(lines) + "\n"


def command_line(argv: list[str], out: Path) -> str:
    """The command as run, with an output path outside the repository shown by its name only."""
    shown = []
    for arg in argv:
        if arg == str(out) and not out.resolve().is_relative_to(ROOT):
            arg = out.name
        elif arg == str(out):
            arg = str(out.resolve().relative_to(ROOT))
        shown.append(arg)
    return shlex.join(["python", "benchmarks/loader.py", *shown])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="ImageNet-like JPEGs to generate")
    parser.add_argument("--classes", type=int, default=10, help="class folders")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (one pass of each loader)")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 1], help="crops per image to compare")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prepared-size", type=int, default=256, help="image side given to prepare()")
    parser.add_argument("--prepared-formats", nargs="+", default=["jpeg", "pixels"], choices=["jpeg", "pixels"],
                        help="formats of the prepared folders measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader_cpu.json")
    args = parser.parse_args(argv)
    for flag in ("images", "classes", "rounds", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if min(args.views) < 1:
        parser.error(f"--views must be at least 1, got {args.views}")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as temp:
        root = Path(temp) / "images"
        files = write_imagenet_like_folder(root, args.images, args.classes, args.seed)
        mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        source = FolderImages(root, *list_image_folder(root))
        prepared, prepared_report = {}, {}
        for fmt in args.prepared_formats:
            prepared[fmt], prepared_report[fmt] = prepared_source(root, Path(temp) / f"prepared-{fmt}",
                                                                  args.prepared_size, fmt)
        contenders: dict[tuple[int, str], Callable[[int], torch.utils.data.Dataset]] = {}
        for views in args.views:
            tv = torchvision_dataset(root, views)
            contenders[(views, TORCHVISION)] = lambda r, tv=tv: tv
            contenders[(views, OURS)] = lambda r, v=views: our_dataset(source, v, args.seed, True)
            contenders[(views, OURS_NO_DRAFT)] = lambda r, v=views: our_dataset(source, v, args.seed, False)
            for fmt, split in prepared.items():
                if split is not None:
                    contenders[(views, f"{OURS_PREPARED} {fmt}")] = (
                        lambda r, v=views, split=split: our_dataset(split, v, args.seed, True))
        start = time.perf_counter()
        times = measure(contenders, len(source), args.rounds, args.batch_size, args.seed)
        elapsed = time.perf_counter() - start
    results, ratios = summarise(times, args.images)
    report = {
        "benchmark": "Loader throughput per CPU core: our streamed crops vs torchvision ImageFolder",
        "command": command_line(argv, args.out),
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "settings": {"images": args.images, "classes": args.classes, "rounds": args.rounds, "views": args.views,
                     "batch_size": args.batch_size, "crop": SIZE, "seed": args.seed, "num_workers": 0,
                     "image_sizes": "500x375 and 375x500 (1 in 5), JPEG quality 90",
                     "mean_file_kb": round(mean_kb, 1), "timed_s": round(elapsed, 1)},
        "prepared": prepared_report,
        "notes": NOTES,
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_table(report))
    print(markdown_table(report))
    return report


if __name__ == "__main__":
    main()
