"""Peak memory of streamed sources: it should not grow with the number of images beyond their index.

Three cases, each at two scales, each measured in a fresh process of its own:

* ``imagefolder``: :func:`~softcontrast.data.images.list_image_folder` lists a class-per-folder
  tree of JPEG files into a :class:`~softcontrast.data.images.FolderImages`, and
  :class:`~softcontrast.data.TrainingBatches` (2 loader workers, two random crops per
  image) cuts a fixed number of batches from it.
* ``hf``: ``load_source("hf:<save_to_disk folder>")`` (an :class:`~softcontrast.data.hf.HFImages`,
  memory-mapped) iterated the same way.
* ``torchvision_imagefolder``: torchvision's ``ImageFolder`` listing the same folder (a reference:
  it keeps one ``(path, class)`` tuple per image).

Reported per run (``/proc/<pid>/status``): peak RSS of the main process (``VmHWM``), its RSS
right after the imports (the baseline) and, at the end, its anonymous RSS (heap: what the
index costs) and file-backed RSS (pages of mapped files, such as Arrow files, that it has
touched: page cache, shared and reclaimable); the same for each loader worker, with its
unique set size. Per case: the difference of each figure between the scales divided by
the difference in images, in bytes per image.

The images are real photos: JPEG crops (128×100 px, above the 96 px bound so they are
streamed) of scikit-learn's sample images. A few hundred distinct JPEGs are encoded and
their bytes written again and again under other names, in a temporary folder removed at the end.

Run: ``nice python benchmarks/data_memory.py --out benchmarks/results/data_memory_cpu.json``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Width and height of the generated JPEGs.
IMAGE_SIZE = (128, 100)


def photo_jpegs(count: int, size: tuple[int, int] = IMAGE_SIZE) -> list[bytes]:
    """``count`` distinct JPEG crops (``size`` = width, height) of scikit-learn's sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = int(rng.integers(0, photo.shape[0] - size[1]))
        left = int(rng.integers(0, photo.shape[1] - size[0]))
        buffer = io.BytesIO()
        Image.fromarray(photo[top:top + size[1], left:left + size[0]]).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def write_folder(root: Path, count: int, jpegs: list[bytes], classes: int) -> None:
    """``count`` JPEG files under ``root/<class>/``, the bytes of ``jpegs`` written in turn."""
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True)
    for i in range(count):
        with open(root / f"c{i % classes:03d}" / f"{i:07d}.jpg", "wb") as file:
            file.write(jpegs[i % len(jpegs)])


def write_hf(path: Path, count: int, jpegs: list[bytes], classes: int) -> None:
    """A ``save_to_disk`` folder of ``count`` rows (JPEG bytes and a ``ClassLabel``), written in shards."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{c:03d}" for c in range(classes)])})

    def rows():
        for i in range(count):
            yield {"image": {"bytes": jpegs[i % len(jpegs)], "path": None}, "label": i % classes}

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(path.parent / "cache"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(path))


def _kib(pid: int | str, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``: peak RSS, ``VmRSS``, ``RssAnon``), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(case: str, path: str, batches: int, batch_size: int, workers: int) -> dict:
    """Runs ``case`` in this process and returns its memory figures (called in a fresh process)."""
    import psutil
    import torch

    from softcontrast.data import CropSpec, TrainingBatches

    torch.set_num_threads(1)
    if case == "hf":
        import datasets  # noqa: F401 - its import is not the data's memory
    if case == "torchvision_imagefolder":
        import torchvision.datasets  # noqa: F401
    baseline = _kib("self", "VmRSS")
    start = time.perf_counter()
    if case == "torchvision_imagefolder":
        from torchvision.datasets import ImageFolder

        count = len(ImageFolder(path).samples)
        return {"images": count, "main_baseline_rss": baseline, "main_peak_rss": _kib("self", "VmHWM"),
                "main_rss_anon": _kib("self", "RssAnon"), "main_rss_file": _kib("self", "RssFile"),
                "seconds": time.perf_counter() - start}
    if case == "imagefolder":
        from softcontrast.data.images import FolderImages, list_image_folder

        files, labels, classes = list_image_folder(Path(path))
        source = FolderImages(Path(path), files, labels, classes)
    else:
        from softcontrast.data import load_source

        source = load_source(f"hf:{path}").train
    loaded = _kib("self", "VmHWM")
    crops = [CropSpec(96, (0.2, 1.0)), CropSpec(96, (0.2, 1.0))]
    training = TrainingBatches(source, batch_size=batch_size, num_workers=workers, crops=crops)
    seen = 0
    for _, (views, ids) in zip(range(batches), training.epoch(0)):
        assert views[0].shape == (batch_size, 3, 96, 96)
        seen += len(ids)
    children = psutil.Process().children(recursive=True)
    workers = {key: [_kib(child.pid, field) for child in children]
               for key, field in (("worker_peak_rss", "VmHWM"), ("worker_rss_anon", "RssAnon"),
                                  ("worker_rss_file", "RssFile"))}
    workers["worker_uss"] = [child.memory_full_info().uss for child in children]
    return {"images": len(source), "source": type(source).__name__, "images_cropped": seen,
            "main_baseline_rss": baseline, "main_peak_rss_after_load": loaded,
            "main_peak_rss": _kib("self", "VmHWM"), "main_rss_anon": _kib("self", "RssAnon"),
            "main_rss_file": _kib("self", "RssFile"), **workers, "seconds": time.perf_counter() - start}


def run_case(case: str, path: Path, args: argparse.Namespace) -> dict:
    """:func:`measure` in a fresh Python process, so that its peaks are its own."""
    command = [sys.executable, __file__, "--measure", case, "--path", str(path), "--batches", str(args.batches),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if completed.returncode != 0:
        raise RuntimeError(f"{case} at {path} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def per_image(small: dict, large: dict, key: str) -> float:
    """Growth of ``key`` (bytes, a worker list: its largest) from ``small`` to ``large`` per added image."""
    def value(run: dict) -> float:
        figure = run[key]
        return max(figure) if isinstance(figure, list) else figure

    return (value(large) - value(small)) / (large["images"] - small["images"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder-scales", type=int, nargs=2, default=[20_000, 200_000])
    parser.add_argument("--hf-scales", type=int, nargs=2, default=[5_000, 50_000])
    parser.add_argument("--distinct", type=int, default=300, help="distinct JPEGs encoded")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20, help="batches cut at every scale")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_memory_cpu.json"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.path, args.batches, args.batch_size, args.workers)))
        return {}

    jpegs = photo_jpegs(args.distinct)
    runs: dict[str, list[dict]] = {"imagefolder": [], "torchvision_imagefolder": [], "hf": []}
    generation: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="data_memory_") as temp:
        for count in args.folder_scales:
            root = Path(temp) / f"folder_{count}"
            start = time.perf_counter()
            write_folder(root, count, jpegs, args.classes)
            generation[f"folder_{count}"] = time.perf_counter() - start
            runs["imagefolder"].append(run_case("imagefolder", root, args))
            runs["torchvision_imagefolder"].append(run_case("torchvision_imagefolder", root, args))
            print(f"folder {count}: {runs['imagefolder'][-1]}", file=sys.stderr, flush=True)
        for count in args.hf_scales:
            path = Path(temp) / f"hf_{count}"
            start = time.perf_counter()
            write_hf(path, count, jpegs, args.classes)
            generation[f"hf_{count}"] = time.perf_counter() - start
            runs["hf"].append(run_case("hf", path, args))
            print(f"hf {count}: {runs['hf'][-1]}", file=sys.stderr, flush=True)

    growth = {}
    for case, (small, large) in runs.items():
        keys = [key for key in small if key.startswith(("main_", "worker_")) and key != "main_baseline_rss"]
        growth[case] = {f"{key}_bytes_per_image": per_image(small, large, key) for key in keys}
    large_folder = runs["imagefolder"][1]["main_peak_rss_after_load"] - runs["imagefolder"][1]["main_baseline_rss"]
    large_tv = (runs["torchvision_imagefolder"][1]["main_peak_rss"]
                - runs["torchvision_imagefolder"][1]["main_baseline_rss"])
    result = {
        "benchmark": "data_memory",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "python": platform.python_version(), "machine": platform.machine(),
        "image_size": list(IMAGE_SIZE), "distinct_jpegs": args.distinct, "classes": args.classes,
        "batches": args.batches, "batch_size": args.batch_size, "workers": args.workers,
        "generation_seconds": generation,
        "runs": runs,
        "growth": growth,
        "large_folder_listing_rss_over_baseline": {"ours": large_folder, "torchvision": large_tv,
                                                   "torchvision_over_ours": large_tv / max(large_folder, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
