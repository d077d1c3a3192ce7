"""Times the two-view training step before and after a change of ``ContrastiveMethod.forward``, as a ratio.

The "before" step is ``ContrastiveMethod.forward`` as it was at ``--before`` (a git
revision; read with ``git show``), bound to the same method object as today's
``forward`` (built through the method registry), so both run the same modules,
weights and data. A forward from before the one-step redesign does not fit today's
method object: compare such revisions whole with ``step_time_revisions.py``. For MoCo v2 and SCE it
times whole optimizer steps (forward, backward, SGD step, EMA update and enqueue) in
interleaved rounds in one process — round r times ``--steps`` steps of one, then of
the other, alternating which goes first — and reports the median step time of each
and the median over rounds of the paired ratio after / before (the issue asks for at
most 1.03). Pairing adjacent measurements cancels slow changes of the machine's load.

Run: ``python benchmarks/step_time.py [--out benchmarks/results/step_time_cpu.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.methods import Setup, method_spec

ROOT = Path(__file__).resolve().parent.parent
#: The one-step redesign (methods as registry presets of one step); the committed
#: results compared fae7e74, the last commit before the multi-view steps.
BEFORE = "b83ba78"


def forward_at(revision: str) -> types.FunctionType:
    """``ContrastiveMethod.forward`` as it was at ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:softcontrast/methods/base.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("base_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"base.py@{revision}", "exec"), module.__dict__)
    return module.ContrastiveMethod.forward


def build(name: str, view_size: int, width: int, queue: int):
    """The registered method ``name``, its default views at ``view_size``."""
    torch.manual_seed(0)
    backbone = resnet("resnet18", width=width)
    return method_spec(name)(backbone, setup=Setup(view=lambda recipe: for_image_size(recipe, view_size)),
                             queue_size=queue)


def time_steps(method, forward, optimizer, images, ids, steps: int) -> float:
    """Seconds per optimizer step over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        output = forward(images, ids)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(0, 1)
    return (time.perf_counter() - start) / steps


def measure(name: str, args: argparse.Namespace, before_forward) -> dict:
    method = build(name, args.view_size, args.width, args.queue_size)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    ids = torch.arange(args.batch_size)
    variants = {"before": types.MethodType(before_forward, method), "after": method.forward}
    try:
        time_steps(method, variants["before"], optimizer, images, ids, 1)
    except (AttributeError, TypeError) as error:
        raise SystemExit(f"forward at --before {args.before} does not fit today's method ({error}): "
                         "compare whole revisions with benchmarks/step_time_revisions.py") from None
    for forward in variants.values():  # warm-up, queue filled
        time_steps(method, forward, optimizer, images, ids, 2)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        for key in order:
            times[key].append(time_steps(method, variants[key], optimizer, images, ids, args.steps))
    ratios = [after / before for before, after in zip(times["before"], times["after"])]
    quartiles = statistics.quantiles(ratios, n=4)
    return {"method": name, "before_ms": round(1000 * statistics.median(times["before"]), 2),
            "after_ms": round(1000 * statistics.median(times["after"]), 2),
            "ratio_after_before": round(statistics.median(ratios), 4),
            "ratio_quartiles": [round(quartiles[0], 4), round(quartiles[2], 4)], "rounds": args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="git revision of the step before")
    parser.add_argument("--methods", nargs="+", default=["moco", "sce"], choices=["moco", "sce", "sane"],
                        help="two-view methods (registry names)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--view-size", type=int, default=24)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=1, help="steps per round and variant")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_time_cpu.json"))
    args = parser.parse_args()
    try:
        before_forward = forward_at(args.before)
    except ImportError as error:
        raise SystemExit(f"base.py at --before {args.before} does not import against today's library ({error}): "
                         "compare whole revisions with benchmarks/step_time_revisions.py") from None
    results = [measure(name, args, before_forward) for name in args.methods]
    report = {
        "benchmark": "two-view step time before/after the multi-view steps (CPU)",
        "command": "python benchmarks/step_time.py",
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in results:
        print(f"{row['method']}: before {row['before_ms']} ms, after {row['after_ms']} ms, "
              f"ratio {row['ratio_after_before']} (quartiles {row['ratio_quartiles']})")


if __name__ == "__main__":
    main()
