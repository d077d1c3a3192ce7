"""Memory and time of the evaluation at scale: chunked kNN against unchunked, and the torch linear probe.

Features are drawn, not computed: ``--classes`` unit class means plus Gaussian noise of
norm about ``--noise``, L2-normalised (``--train`` × ``--dim`` training rows, ``--test``
test rows), so no data set is needed. Measured, one after the other in this process:

* ``knn_chunked``: :func:`~softcontrast.evaluation.knn_predict` with its default chunks
  (``TEST_CHUNK`` test × ``TRAIN_CHUNK`` training rows, running top-k merge) on the full set;
* ``knn_small_chunked`` and ``knn_small_unchunked``: the same kNN on ``--small-train`` ×
  ``--small-test`` rows, chunked, and in one block (all test rows against all training
  rows: the ``M×N`` similarity matrix), where that block still fits; their ratio;
* ``full_similarity_matrix_mib``: what the unchunked kNN's ``M×N`` similarity matrix alone
  would take at the full size (computed, not run);
* ``probe``: :func:`~softcontrast.evaluation.probe.torch_linear_probe_accuracy`
  (``--probe-iterations`` L-BFGS iterations, mini-batches of ``PROBE_BATCH`` rows) on the full set.

Each reports wall seconds and the peak memory increase over what was held before it
started: on the CPU the resident set's high-water mark (reset through
``/proc/self/clear_refs``), on a GPU ``torch.cuda.max_memory_allocated``. The results go to
``benchmarks/results/evaluation_memory_<device>.json``.

Run: ``nice python benchmarks/evaluation_memory.py [--device cpu] [--output PATH]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from softcontrast.evaluation.knn import TEST_CHUNK, TRAIN_CHUNK, knn_predict
from softcontrast.evaluation.probe import PROBE_BATCH, torch_linear_probe_accuracy

MIB = 2**20


def structured_features(rows: int, dim: int, classes: int, noise: float,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` L2-normalised features (class mean + noise of norm about ``noise``) and their labels."""
    generator = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(classes, dim, generator=generator), dim=1)
    generator.manual_seed(seed + 1)
    labels = torch.randint(classes, (rows,), generator=generator)
    features = means[labels]
    features += torch.randn(rows, dim, generator=generator).mul_(noise / dim**0.5)
    return F.normalize(features, dim=1), labels


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(device: torch.device, run: Callable[[], Any]) -> dict[str, Any]:
    """Wall seconds and peak memory increase (MiB) of ``run()``, and its value."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the present resident set
        before = _status("VmRSS")
    start = time.perf_counter()
    value = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status("VmHWM")
    return {"seconds": seconds, "peak_increase_mib": round((peak - before) / MIB, 1), "value": value}


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return round((predicted.cpu() == labels).float().mean().item(), 4)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=4.0)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--small-train", type=int, default=20_000, help="rows of the chunked vs unchunked comparison")
    parser.add_argument("--small-test", type=int, default=2_000)
    parser.add_argument("--probe-iterations", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/evaluation_memory_<device>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    train, train_labels = structured_features(args.train, args.dim, args.classes, args.noise, seed=0)
    test, test_labels = structured_features(args.test, args.dim, args.classes, args.noise, seed=1)
    train, test = train.to(device), test.to(device)
    features_mib = (train.numel() + test.numel()) * 4 / MIB

    def knn(rows: int, queries: int, test_chunk: int, train_chunk: int) -> float:
        predicted = knn_predict(train[:rows], train_labels[:rows], test[:queries], args.classes, args.k, 0.1,
                                chunk_size=test_chunk, train_chunk_size=train_chunk)
        return accuracy(predicted, test_labels[:queries])

    small_train, small_test = min(args.small_train, args.train), min(args.small_test, args.test)
    results = {
        "knn_chunked": measure(device, lambda: knn(args.train, args.test, TEST_CHUNK, TRAIN_CHUNK)),
        "knn_small_chunked": measure(device, lambda: knn(small_train, small_test, TEST_CHUNK, TRAIN_CHUNK)),
        "knn_small_unchunked": measure(device, lambda: knn(small_train, small_test, small_test, small_train)),
        "probe": measure(device, lambda: round(torch_linear_probe_accuracy(
            train, train_labels, test, test_labels, max_iter=args.probe_iterations), 4)),
    }
    chunked, unchunked = results["knn_small_chunked"], results["knn_small_unchunked"]
    report = {
        "benchmark": "evaluation_memory",
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sizes": {"train": args.train, "test": args.test, "dim": args.dim, "classes": args.classes, "k": args.k,
                  "small_train": small_train, "small_test": small_test, "test_chunk": TEST_CHUNK,
                  "train_chunk": TRAIN_CHUNK, "probe_batch": PROBE_BATCH, "probe_iterations": args.probe_iterations},
        "features_mib": round(features_mib, 1),
        "full_similarity_matrix_mib": round(args.test * args.train * 4 / MIB, 1),  # what one block would need
        "results": results,
        "unchunked_over_chunked": {
            "peak_increase": round(unchunked["peak_increase_mib"] / max(chunked["peak_increase_mib"], 0.1), 2),
            "seconds": round(unchunked["seconds"] / max(chunked["seconds"], 1e-3), 2),
        },
        "same_accuracy_small": chunked["value"] == unchunked["value"],
    }
    output = Path(args.output or Path(__file__).parent / "results" / f"evaluation_memory_{device.type}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in results.items():
        print(f"{name:22} {result['seconds']:8.2f} s  peak +{result['peak_increase_mib']:8.1f} MiB  "
              f"accuracy {result['value']}")
    print(f"unchunked / chunked at {small_train}×{small_test}: {report['unchunked_over_chunked']}; wrote {output}")
    return report


if __name__ == "__main__":
    main()
