"""Times whole training steps of two revisions of the library side by side, as a ratio.

Unlike ``step_time.py`` (which swaps one function inside one process), this compares
any two revisions, whatever changed between them: ``--before`` is a git revision
extracted with ``git archive`` into a scratch folder, ``--after`` the working tree
(or another revision). Each measurement is a fresh process that imports one tree,
builds a tiny MoCo v2, SCE or FNC as published (same seed, data and settings; through the method
registry, or by class name in a revision from before it), runs warm-up steps and
then times ``--steps`` whole optimizer steps (views, forward, backward, SGD step,
EMA update, enqueue) on one thread. Rounds alternate which revision goes first; the
report holds each side's median step time and the median over rounds of the paired
ratio after / before (adjacent measurements share the machine's load).

Run: ``python benchmarks/step_time_revisions.py --before REV [--out FILE.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("moco", "sce", "fnc")

#: One measurement, run in a fresh process whose import path starts at the tree under test.
CHILD = """
import json, sys, time, torch
from softcontrast.components.augment import for_image_size, moco_v2_cifar, sce_strong, sce_weak
from softcontrast.components.backbones import resnet
method_name, batch, size, width, warmup, steps = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(1)
torch.manual_seed(0)
backbone = resnet("resnet18", width=width)
# The two-view methods against a queue of 4 batches; FNC as published with V = 4 views per
# image (S = 2) and a memory of 16 batches of images' view entries.
settings = {"fnc": {"support_views": 2, "memory_size": 16 * batch}}.get(method_name, {"queue_size": 4 * batch})
try:
    from softcontrast.methods.registry import Setup, method_spec
except ImportError:  # a revision from before the method registry: its classes
    from softcontrast.methods import FNC, SCE, MoCoV2
    if method_name == "moco":
        method = MoCoV2(backbone, view=for_image_size(moco_v2_cifar(), size), **settings)
    elif method_name == "fnc":
        method = FNC(backbone, view=for_image_size(moco_v2_cifar(), size), **settings)
    else:
        method = SCE(backbone, query_view=for_image_size(sce_strong(), size),
                     key_view=for_image_size(sce_weak(), size), **settings)
else:
    setup = Setup(view=lambda recipe: for_image_size(recipe, size), global_batch=batch)
    method = method_spec(method_name)(backbone, setup=setup, **settings)
optimizer = torch.optim.SGD(method.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
ids = torch.arange(batch)
times = []
for step in range(warmup + steps):
    start = time.perf_counter()
    loss = method(images, ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.after_optimizer_step(step, warmup + steps)
    float(loss)
    times.append(time.perf_counter() - start)
print(json.dumps({"median_step_s": sorted(times[warmup:])[steps // 2]}))
"""


def extract(revision: str, scratch: Path) -> Path:
    """The files of ``revision`` in a folder of ``scratch`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    folder = scratch / revision.replace("/", "_")
    folder.mkdir()
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def measure(tree: Path, method: str, args: argparse.Namespace) -> float:
    """Median step time (s) of ``method`` in a fresh process importing ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CHILD, method, *map(str, (args.batch_size, args.size, args.width,
                                                              args.warmup, args.steps))]
    completed = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])["median_step_s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' side")
    parser.add_argument("--after", default=None, help="git revision of the 'after' side (default: the working tree)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=24, help="view and image side")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width")
    parser.add_argument("--out", default=None, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"before": extract(args.before, Path(scratch))}
        trees["after"] = extract(args.after, Path(scratch)) if args.after else ROOT
        results = []
        for method in args.methods:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for side in order:
                    times[side].append(measure(trees[side], method, args))
            ratios = [a / b for a, b in zip(times["after"], times["before"])]
            results.append({
                "method": method,
                "before_median_step_s": round(statistics.median(times["before"]), 5),
                "after_median_step_s": round(statistics.median(times["after"]), 5),
                "ratio_after_over_before": round(statistics.median(ratios), 3),
                "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)] if len(ratios) > 1 else [],
            })
            print(json.dumps(results[-1]), flush=True)
    report = {
        "before": args.before,
        "after": args.after or "working tree",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "before", "after")},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "command": "python benchmarks/step_time_revisions.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
