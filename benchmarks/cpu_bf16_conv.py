"""Which convolutions get a wrong bfloat16 weight gradient on this CPU, against the library's rule.

Draws random ``Conv2d`` calls (kernel, stride, padding, dilation, groups, input height and
width, batch, channels), runs forward and backward in bfloat16 on the CPU, and compares
the weight and input gradients with a float64 run of the same bfloat16 values. A gradient
is *wrong* when it is off the reference by more than half the reference's largest entry
(bfloat16 rounding stays far below that; the kernel's garbage reaches 1e30 and NaN).

It then counts the wrong and the crashed calls under each fault of
:func:`softcontrast.components.cpu_bf16.cpu_bf16_fault` (a stride wider than the input;
a kernel reading only padding along one axis) and outside them. The rules hold on this
machine when no call outside them was wrong or crashed. Each call runs once, so a call
of a rule that happened to come out right is counted as such: the kernel fails in many
calls, not in all, and more often in a process whose memory has been used before.

Every call runs in a child process of ``--chunk`` calls: besides wrong values, the kernel
sometimes corrupts memory and kills its process (a segmentation fault). The call a child
died on is recorded as crashed, and the rest run in a fresh child.

Run: ``python benchmarks/cpu_bf16_conv.py [--draws 4000] [--output benchmarks/results/cpu_bf16_conv.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from softcontrast.components.cpu_bf16 import ONLY_PADDING, STRIDE_WIDER_THAN_INPUT, cpu_bf16_fault

WRONG = 0.5
"""A gradient is wrong when its largest error exceeds this share of the reference's largest entry."""

OUTSIDE = "outside the rules"
FAULTS = (STRIDE_WIDER_THAN_INPUT, ONLY_PADDING)


def draw(rng: random.Random) -> dict | None:
    """A random convolution call, or ``None`` when the kernel does not fit the padded input."""
    kernel = (rng.choice([1, 2, 3, 5, 7]), rng.choice([1, 2, 3, 5, 7]))
    stride = (rng.choice([1, 2, 3]), rng.choice([1, 2, 3]))
    padding = (rng.randint(0, kernel[0] // 2), rng.randint(0, kernel[1] // 2))
    dilation = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3]))
    size = (rng.choice([1, 2, 3, 4, 5, 7, 9]), rng.choice([1, 2, 3, 4, 5, 7, 9]))
    channels = rng.choice([3, 8, 16, 32])
    groups = rng.choice([1, 1, channels])
    out_channels = channels if groups > 1 else rng.choice([8, 16, 32])
    for axis in (0, 1):
        if size[axis] + 2 * padding[axis] < dilation[axis] * (kernel[axis] - 1) + 1:
            return None
    return {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
            "input": size, "channels": channels, "out_channels": out_channels, "batch": rng.choice([1, 2, 8, 40])}


def relative_errors(call: dict, generator: torch.Generator) -> tuple[float, float]:
    """(weight, input) gradient errors of the bfloat16 call relative to float64, NaN counted as infinite."""
    options = {name: call[name] for name in ("stride", "padding", "dilation", "groups")}
    x = torch.randn(call["batch"], call["channels"], *call["input"], generator=generator)
    weight = torch.randn(call["out_channels"], call["channels"] // call["groups"], *call["kernel"], generator=generator)
    errors = []
    low_x, low_w = x.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    out = F.conv2d(low_x, low_w, **options)
    grad = torch.randn(out.shape, generator=generator)
    out.backward(grad.bfloat16())
    ref_x, ref_w = low_x.detach().double().requires_grad_(), low_w.detach().double().requires_grad_()
    F.conv2d(ref_x, ref_w, **options).backward(grad.bfloat16().double())
    for low, ref in ((low_w.grad, ref_w.grad), (low_x.grad, ref_x.grad)):
        error = (low.double() - ref).abs().max().item() / (ref.abs().max().item() + 1e-12)
        errors.append(error if error == error else float("inf"))
    return errors[0], errors[1]


def run_calls(calls: list[tuple[int, dict]]) -> list[dict]:
    """The gradient errors of each ``(seed, call)``: each call's tensors come from its own seed."""
    results = []
    for seed, call in calls:
        weight_error, input_error = relative_errors(call, torch.Generator().manual_seed(seed))
        results.append({"seed": seed, "weight_error": weight_error, "input_error": input_error})
    return results


def run_calls_in_children(calls: list[tuple[int, dict]], chunk: int) -> tuple[list[dict], list[dict]]:
    """:func:`run_calls` in child processes of ``chunk`` calls each, since some calls corrupt
    memory and kill their process. Returns the results of the calls that finished and the
    calls a child died on (each is dropped, and the rest run in a fresh child)."""
    results, crashed, todo = [], [], list(calls)
    while todo:
        part = todo[:chunk]
        child = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(part), capture_output=True,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        done = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        results += done
        if child.returncode == 0:
            todo = todo[len(part):]
        else:
            seed, call = todo[len(done)]
            crashed.append({"seed": seed, **call, "returncode": child.returncode})
            todo = todo[len(done) + 1:]
    return results, crashed


def child() -> None:
    """Runs the calls read from stdin, printing one JSON line per finished call."""
    for seed, call in json.loads(sys.stdin.read()):
        call = {key: tuple(value) if isinstance(value, list) else value for key, value in call.items()}
        print(json.dumps(run_calls([(seed, call)])[0]), flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000, help="random calls drawn (those that do not fit are skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=500, help="calls per child process")
    parser.add_argument("--output", default="benchmarks/results/cpu_bf16_conv.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    groups: dict[str, list[tuple[int, dict]]] = {}
    for index in range(args.draws):
        call = draw(rng)
        if call is None:
            continue
        layer = nn.Conv2d(call["channels"], call["out_channels"], call["kernel"], call["stride"], call["padding"],
                          call["dilation"], call["groups"])
        fault = cpu_bf16_fault(layer, *call["input"]) or OUTSIDE
        groups.setdefault(fault, []).append((args.seed * 10**6 + index, call))
    counts: dict = {"calls": sum(len(calls) for calls in groups.values()), "input_gradient_wrong": 0}
    wrong_examples, crashed_examples = {}, {}
    for fault in (OUTSIDE, *FAULTS):
        calls = groups.get(fault, [])
        results, crashed = run_calls_in_children(calls, args.chunk)
        by_seed = dict(calls)
        wrong = [{**by_seed[r["seed"]], **r} for r in results if r["weight_error"] > WRONG]
        counts[fault] = {"calls": len(calls), "wrong": len(wrong), "crashed": len(crashed)}
        counts["input_gradient_wrong"] += sum(r["input_error"] > WRONG for r in results)
        wrong_examples[fault], crashed_examples[fault] = wrong[:5], crashed[:5]
    report = {
        "benchmark": "cpu_bf16_conv",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "wrong_threshold": WRONG,
        "counts": counts,
        "rules_hold": counts[OUTSIDE]["wrong"] == counts[OUTSIDE]["crashed"] == 0,
        "wrong_examples": wrong_examples,
        "crashed_examples": crashed_examples,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1, default=list) + "\n")
    print(json.dumps({key: report[key] for key in ("torch", "cpu_capability", "counts", "rules_hold")}))
    return report


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        main()
