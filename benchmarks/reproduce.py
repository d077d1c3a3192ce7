"""Reproduction table: methods × seeds at one budget, kNN and linear probe with baselines.

Each method is a registered method (``python -m softcontrast train NAME``) with a
recipe (``--config``) and optional extra flags; it trains once per seed, one run
after another. Every trained backbone is then
evaluated on frozen features of the run's training images (the kNN bank and the
probe's training set) against the test split:

* weighted kNN with k 200, T 0.1 (InstDisc/MoCo) and k 50, T 0.05 (as SANE reports);
* a linear probe (:func:`softcontrast.evaluation.linear_probe_accuracy`);
* the same three for raw pixels and for the random-init network of each seed
  (the network every run starts from), under the same protocol;
* from each run's ``metrics.jsonl``: the share of the soft target's mass on
  same-class columns and, for FNC (methods named ``fnc…``), the precision of the
  detected false negatives (means over the last quarter of training).

Writes the JSON (every run, then mean ± std per method), a Markdown table next to it
(``<out>.md``, shown on the docs' Benchmarks page) and a bar chart with error bars
(``<out>.png``, needs matplotlib: ``pip install -e ".[bench]"``).

Run:
    python benchmarks/reproduce.py --data-zip <path>/cifar10.zip --seeds 0 1 2 --out benchmarks/results/reproduce_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from compare_methods import DIAGNOSTICS, EXAMPLES, TRAIN, registered_method, run_example, shown_command, unpack
from softcontrast.components.augment import center_view, for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.data import ImageTensorDataset, load_source
from softcontrast.evaluation import extract_features, knn_feature_accuracy, linear_probe_accuracy
from softcontrast.run_settings import saved_settings

RECIPES = EXAMPLES.parent / "softcontrast" / "recipes"
#: The CPU table: name = registered method[-label], its recipe, and its extra flags.
DEFAULT_METHODS = [
    "moco=moco_v2_cifar10-cpu.yaml",
    "sce=sce_cifar10-cpu.yaml",
    "fnc-attract=fnc_cifar10-cpu.yaml:--strategy attract",
    "fnc-eliminate=fnc_cifar10-cpu.yaml:--strategy eliminate",
    "sane=sane_cifar10-cpu.yaml",
]
#: The protocol, as recorded in each report.
EVALUATION = ("frozen backbone features of the run's training images vs the test split; kNN k 200 T 0.1 and "
              "k 50 T 0.05; linear probe: softcontrast.evaluation.linear_probe_accuracy (scikit-learn "
              "logistic regression, L-BFGS, on standardised features)")
#: (name, k, temperature) of the kNN evaluations.
KNN = [("knn_k200_t0.1", 200, 0.1), ("knn_k50_t0.05", 50, 0.05)]
ACCURACIES = [name for name, _, _ in KNN] + ["linear_probe"]
COLUMNS = {
    "knn_k200_t0.1": "kNN k 200, T 0.1",
    "knn_k50_t0.05": "kNN k 50, T 0.05",
    "linear_probe": "linear probe",
    "same_class_target_mass": "same-class target mass",
    "cancelled_precision": "FN precision (FNC)",
    "train_seconds": "train s / run",
}


def parse_method(spec: str) -> dict[str, Any]:
    """``name=recipe[:flags]`` → name, registered method, recipe path and extra flags."""
    name, _, rest = spec.partition("=")
    recipe, _, flags = rest.partition(":")
    try:
        registered = registered_method(name)
    except ValueError as error:
        raise ValueError(f"--method {spec!r}: {error}") from None
    path = Path(recipe) if Path(recipe).is_file() else RECIPES / recipe
    if recipe and not path.is_file():
        raise ValueError(f"--method {spec!r}: recipe {recipe} not found (also looked in examples/recipes/)")
    return {"name": name, "registered": registered, "recipe": path if recipe else None, "flags": shlex.split(flags)}


def evaluate(backbone: torch.nn.Module, train: ImageTensorDataset, test: ImageTensorDataset, view_size: int,
             seed: int, raw_pixels: bool = False) -> dict[str, float]:
    """kNN (both settings) and linear-probe accuracy of frozen features (or raw pixels)."""
    recipe = for_image_size(moco_v2_cifar(), view_size)
    if raw_pixels:
        features = [F.normalize(center_view(split.images, recipe).flatten(1), dim=-1) for split in (train, test)]
    else:
        features = [extract_features(backbone, split, recipe) for split in (train, test)]
    result = {name: knn_feature_accuracy(features[0], train.labels, features[1], test.labels, k, temperature)
              for name, k, temperature in KNN}
    result["linear_probe"] = linear_probe_accuracy(features[0], train.labels, features[1], test.labels, seed=seed)
    return result


def last_quarter(metrics_file: Path) -> dict[str, float]:
    """Means of the label diagnostics over the last quarter of the logged steps."""
    steps = [r for r in map(json.loads, metrics_file.read_text().splitlines()) if "loss" in r]
    tail = steps[len(steps) * 3 // 4 :] or steps
    return {key: sum(r[key] for r in tail) / len(tail) for key in DIAGNOSTICS if tail and key in tail[0]}


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of every metric per method (baselines included), and each method against
    the first one: the difference of means and whether the mean ± std intervals are apart."""
    names = list(dict.fromkeys(run["method"] for run in runs))
    rows = []
    for name in names:
        chosen = [run for run in runs if run["method"] == name]
        metrics = {key: mean_std([run[key] for run in chosen]) for key in COLUMNS if key in chosen[0]
                   and (key != "cancelled_precision" or name.startswith("fnc"))}
        rows.append({"method": name, "seeds": [run["seed"] for run in chosen], **metrics})
    reference = rows[0]
    for row in rows[1:]:
        row[f"vs_{reference['method']}"] = {
            key: {
                "difference": row[key]["mean"] - reference[key]["mean"],
                "beyond_spread": abs(row[key]["mean"] - reference[key]["mean"]) > row[key]["std"] + reference[key]["std"],
            }
            for key in ACCURACIES
        }
    return rows


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table: accuracies in %, mean ± std over seeds."""
    keys = [key for key in COLUMNS if any(key in row for row in summary)]
    lines = ["| method | seeds | " + " | ".join(COLUMNS[key] for key in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for row in summary:
        cells = []
        for key in keys:
            if key not in row:
                cells.append("–")
                continue
            scale, digits = (1, 0) if key == "train_seconds" else (100, 2)
            cells.append(f"{scale * row[key]['mean']:.{digits}f} ± {scale * row[key]['std']:.{digits}f}")
        lines.append(f"| {row['method']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars (kNN ×2, linear probe) per method with ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(3.5 + 1.3 * len(summary), 4.5))
    width = 0.8 / len(ACCURACIES)
    positions = np.arange(len(summary))
    for index, key in enumerate(ACCURACIES):
        means = [100 * row[key]["mean"] for row in summary]
        stds = [100 * row[key]["std"] for row in summary]
        axes.bar(positions + (index - 1) * width, means, width, yerr=stds, capsize=3, label=COLUMNS[key])
    axes.set_xticks(positions, [row["method"] for row in summary], rotation=20, ha="right")
    axes.set_ylabel("test accuracy (%), mean ± std over seeds")
    axes.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    lowest = min(100 * (row[key]["mean"] - row[key]["std"]) for row in summary for key in ACCURACIES)
    axes.set_ylim(max(0.0, math.floor(lowest / 10) * 10 - 10), 100)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="a source string (default: unpack --data-zip)")
    parser.add_argument("--data-zip", type=Path, default=None, help="image-folder zip with train/ and test/")
    parser.add_argument("--method", dest="methods", action="append", default=None, metavar="NAME=RECIPE[:FLAGS]",
                        help="a method: registered name (the longest registered prefix before a '-'), recipe "
                             "file, extra flags; repeatable "
                             f"(default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--common-args", default="", help="flags for every run, e.g. '--epochs 1'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reproduce_cpu.json"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="write one report from the runs of earlier reports (tables run in parallel)")
    args = parser.parse_args()
    if args.merge:
        merge_reports(args.merge, args.out)
        return
    methods = [parse_method(spec) for spec in args.methods or DEFAULT_METHODS]

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dataset, label = args.dataset, shown_source(args.dataset)
        if dataset is None:
            if args.data_zip is None:
                parser.error("give --dataset or --data-zip")
            label = f"imagefolder:<unzipped {args.data_zip.name}>"
            dataset = cache_as_npz(f"imagefolder:{unpack(args.data_zip, scratch / 'data')}", scratch / "data.npz")
        splits = load_source(dataset)
        runs: list[dict[str, Any]] = []
        baselines: dict[tuple, dict[str, Any]] = {}
        for method in methods:
            for seed in args.seeds:
                output_dir = scratch / f"{method['name']}_seed{seed}"
                command = [sys.executable, *TRAIN, method["registered"]]
                command += ["--config", str(method["recipe"])] if method["recipe"] else []
                command += ["--dataset", dataset, "--seed", str(seed), *method["flags"],
                            *shlex.split(args.common_args), "--output-dir", str(output_dir), "--checkpoint-every", "0"]
                summary = run_example(command, f"{method['name']} seed {seed}")
                settings = json.loads(sorted(output_dir.rglob("run_config.json"))[-1].read_text())
                train = splits.train if settings["train_subset"] is None else splits.train.subset(
                    settings["train_subset"], seed=seed)
                view_size = settings["view_size"]
                model = saved_settings(settings).model
                arch, width, cifar_stem = model.backbone, model.width, model.cifar_stem
                backbone = resnet(arch, cifar_stem=cifar_stem, width=width)
                key = (seed, settings["train_subset"], view_size, arch, width, cifar_stem)
                if key not in baselines:
                    baselines[key] = baseline_runs(settings, seed, train, splits.test)
                    runs += baselines[key]["runs"]
                backbone.load_state_dict(torch.load(output_dir / "backbone.pt", map_location="cpu"))
                run = {"method": method["name"], "seed": seed,
                       **evaluate(backbone, train, splits.test, view_size, seed),
                       **last_quarter(output_dir / "metrics.jsonl"),
                       "train_seconds": summary["train_seconds"], "images_per_second": summary["images_per_second"],
                       "monitor_knn": summary["knn_accuracy"],
                       "command": shown_command(command, {dataset: label, str(output_dir): "<scratch>",
                                                          str(method["recipe"]): display(method["recipe"])})}
                runs.append(run)
                print(f"{run['method']} seed {seed}: kNN {100 * run['knn_k200_t0.1']:.2f}% / "
                      f"{100 * run['knn_k50_t0.05']:.2f}%, probe {100 * run['linear_probe']:.2f}%, "
                      f"train {run['train_seconds']:.0f}s", flush=True)
                write_report(args, label, methods, runs)


def shown_source(source: str | None) -> str | None:
    """A source string as recorded: a local file or folder by its name only."""
    if source is None or ":" not in source:
        return source
    kind, _, where = source.partition(":")
    return f"{kind}:<{Path(where).name}>" if kind in ("npz", "imagefolder") else source


def merge_reports(paths: list[Path], out: Path) -> None:
    """One report from several: their runs (baselines once per seed) and the union of their methods."""
    reports = [json.loads(path.read_text()) for path in paths]
    runs, seen = [], set()
    for report in reports:
        for run in report["runs"]:
            if (run["method"], run["seed"]) not in seen:
                seen.add((run["method"], run["seed"]))
                runs.append(run)
    settings = reports[0]["settings"]
    methods = [m for report in reports for m in report["settings"]["methods"]]
    seeds = sorted({seed for report in reports for seed in report["settings"]["seeds"]})
    args = argparse.Namespace(out=out, seeds=seeds, common_args=settings["common_args"],
                              evaluation=settings["evaluation"])
    write_report(args, settings["dataset"], methods, runs)


def cache_as_npz(source: str, path: Path) -> str:
    """Decodes an image source once into an ``.npz`` the runs load quickly; returns its source string."""
    splits = load_source(source)
    arrays = {"x_train": splits.train.images.numpy(), "y_train": splits.train.labels.numpy()}
    if splits.test is not None:
        arrays.update(x_test=splits.test.images.numpy(), y_test=splits.test.labels.numpy())
    np.savez(path, **arrays)
    return f"npz:{path}"


def baseline_runs(settings: dict[str, Any], seed: int, train, test) -> dict[str, Any]:
    """Raw pixels and the random-init network of ``seed`` (built as the examples build it)."""
    set_seed(seed)
    model = saved_settings(settings).model
    arch, width, cifar_stem = model.backbone, model.width, model.cifar_stem
    network = resnet(arch, cifar_stem=cifar_stem, width=width)
    view_size = settings["view_size"]
    return {"runs": [
        {"method": "raw pixels", "seed": seed, **evaluate(network, train, test, view_size, seed, raw_pixels=True)},
        {"method": "random init", "seed": seed, **evaluate(network, train, test, view_size, seed)},
    ]}


def display(path: Path | None) -> str:
    """A recipe path as recorded: relative to the repository."""
    if path is None:
        return ""
    try:
        return str(path.resolve().relative_to(EXAMPLES.parent))
    except ValueError:
        return path.name


def source_commit() -> str | None:
    """The checkout's commit (``git rev-parse --short HEAD``), or ``None`` outside a git checkout."""
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=EXAMPLES.parent, capture_output=True,
                               text=True)
    return completed.stdout.strip() or None if completed.returncode == 0 else None


def write_report(args: argparse.Namespace, dataset_label: str, methods: list[dict], runs: list[dict]) -> None:
    """Writes the JSON, the Markdown table and the chart of the runs finished so far."""
    trained = [run for run in runs if run["method"] not in ("raw pixels", "random init")]
    ordered = trained + [run for run in runs if run["method"] in ("raw pixels", "random init")]
    summary = summarize(ordered)
    report = {
        "benchmark": "reproduce",
        "machine": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0)
                    if torch.cuda.is_available() else None, "platform": platform.platform(terse=True)},
        "settings": {"dataset": dataset_label, "seeds": args.seeds, "common_args": args.common_args,
                     "methods": [m if "registered" not in m else
                                 {"name": m["name"], "recipe": display(m["recipe"]), "flags": " ".join(m["flags"]),
                                  "commit": source_commit()}
                                 for m in methods],
                     "evaluation": getattr(args, "evaluation", EVALUATION),
                     "beyond_spread": "|difference of means| > sum of the two standard deviations"},
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown_table(summary) + "\n")
    title = f"{dataset_label}, seeds {' '.join(map(str, args.seeds))} {args.common_args}".strip()
    bar_chart(summary, args.out.with_suffix(".png"), title)


if __name__ == "__main__":
    main()
