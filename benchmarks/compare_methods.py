"""Accuracy benchmark: methods side by side at the same budget, one JSON file.

Each method trains through ``python -m softcontrast train NAME`` (a registered method)
with identical data, backbone, epochs, batch, queue and seed, one after the other in
this run, and the kNN test accuracy (before and after training) and training wall
time are collected. A method ``NAME-LABEL`` is registered method ``NAME`` with the
extra flags of ``--method-args NAME-LABEL=...`` (``fnc-moco-eliminate`` is ``fnc-moco``).

Example (CIFAR-10 subset on CPU):

    python benchmarks/compare_methods.py --data-zip <path>/cifar10.zip \
        --methods moco sce fnc-eliminate --method-args fnc-eliminate='--strategy eliminate' \
        --train-subset 10000 --epochs 20 \
        --out benchmarks/results/cifar10_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from softcontrast.methods import method_names

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: How a run is launched: the training command of a registered method.
TRAIN = ["-m", "softcontrast", "train"]


def registered_method(name: str) -> str:
    """The registered method a benchmark's method name runs: the longest ``-``-separated prefix
    of ``name`` that is registered (``fnc-attract`` → ``fnc``, ``fnc-moco-eliminate`` → ``fnc-moco``).

    Raises:
        ValueError: no prefix of ``name`` is a registered method.
    """
    parts = name.split("-")
    registered = set(method_names())
    for end in range(len(parts), 0, -1):
        if "-".join(parts[:end]) in registered:
            return "-".join(parts[:end])
    raise ValueError(f"{name!r} names no registered method; registered: {', '.join(sorted(registered))}")


def unpack(zip_path: Path, into: Path) -> Path:
    """Extracts an image-folder zip and returns the folder holding train/ and test/."""
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(into)
    return next(p.parent for p in into.rglob("train") if p.is_dir() and (p.parent / "test").is_dir())


DIAGNOSTICS = ("same_class_negatives", "same_class_target_mass", "cancelled_precision", "false_negatives_per_row")


def diagnostics_by_quarter(metrics_file: Path) -> dict[str, list[float]]:
    """Means of the label diagnostics over each quarter of the logged steps."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    quarters = [steps[i * len(steps) // 4 : (i + 1) * len(steps) // 4] for i in range(4)]
    return {
        key: [round(sum(r[key] for r in q) / len(q), 4) for q in quarters if q]
        for key in DIAGNOSTICS
        if steps and key in steps[0]
    }


def run_method(method: str, dataset: str, args: argparse.Namespace, output_dir: Path) -> dict:
    """Trains one run of a registered method; returns its summary line.

    ``method`` is a registered name, or ``<name>-<label>`` for a variant whose extra
    flags come from ``--method-args``.
    """
    command = [
        sys.executable, *TRAIN, registered_method(method), "--dataset", dataset,
        "--view-size", str(args.view_size), "--width", str(args.width), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--queue-size", str(args.queue_size), "--seed", str(args.seed),
        "--lr", str(args.lr), "--output-dir", str(output_dir), "--checkpoint-every", "0",
        "--knn-every", str(args.knn_every), "--precision", args.precision,
    ]
    if args.train_subset:
        command += ["--train-subset", str(args.train_subset)]
    command += args.extra.get(method, [])
    summary = run_example(command, method)
    summary["method"] = method
    summary["dataset"] = args.dataset_label
    summary["label_diagnostics_by_quarter"] = diagnostics_by_quarter(output_dir / "metrics.jsonl")
    placeholders = {dataset: args.dataset_label, str(output_dir): f"<scratch>/{method}"}
    summary["command"] = shown_command(command, placeholders)
    return summary


def run_example(command: list[str], label: str) -> dict:
    """Runs a training command line; returns its JSON summary line with ``process_seconds``."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{completed.stderr[-4000:]}")
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    summary["process_seconds"] = round(elapsed, 1)
    return summary


def shown_command(command: list[str], placeholders: dict[str, str]) -> str:
    """The command as recorded: ``python -m softcontrast train NAME ...`` with machine paths replaced."""
    return " ".join(["python", *(placeholders.get(part, part) for part in command[1:])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="a source string (default: unpack --data-zip)")
    parser.add_argument("--data-zip", type=Path, default=None, help="image-folder zip with train/ and test/")
    parser.add_argument("--methods", nargs="+", default=["moco", "sce"])
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--view-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-every", type=int, default=0)
    parser.add_argument("--precision", default="no")
    parser.add_argument("--method-args", nargs="*", default=[], metavar="METHOD=FLAGS",
                        help="extra flags for one method, e.g. fnc='--strategy attract'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_methods.json"))
    args = parser.parse_args()
    args.extra = {spec.split("=", 1)[0]: spec.split("=", 1)[1].split() for spec in args.method_args}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        args.dataset_label = args.dataset
        if args.dataset is None:
            if args.data_zip is None:
                parser.error("give --dataset or --data-zip")
            args.dataset = f"imagefolder:{unpack(args.data_zip, scratch / 'data')}"
            args.dataset_label = f"imagefolder:<unzipped {args.data_zip.name}>"
        results = []
        for method in args.methods:
            results.append(run_method(method, args.dataset, args, scratch / method))
            write_report(args, results)


def write_report(args: argparse.Namespace, results: list[dict]) -> None:
    """Writes the JSON report of the runs finished so far and prints their table."""
    baseline = results[0]
    for result in results:
        result["seconds_vs_" + baseline["method"]] = round(result["train_seconds"] / baseline["train_seconds"], 3)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "extra", "data_zip", "dataset")}
    settings["dataset"] = settings.pop("dataset_label")
    report = {
        "benchmark": "compare_methods",
        "machine": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0)
                    if torch.cuda.is_available() else None, "platform": platform.platform(terse=True)},
        "settings": settings,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    r = results[-1]
    knn = r["knn_accuracy"]
    print(f"{r['method']:>14}: kNN {100 * knn['0']:.2f}% -> {100 * knn[str(r['epochs_done'])]:.2f}%  "
          f"train {r['train_seconds']:.0f}s  ({r['seconds_vs_' + baseline['method']]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
