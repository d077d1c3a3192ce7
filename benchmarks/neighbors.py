"""Times every NeighborSearch backend and writes the table ``auto`` is built from.

For index sizes 4k, 64k and 1M (dim 128) it builds each backend's index and
searches 256×S queries (S = 8 support views) for the top 10, on this machine's
CPU. Embeddings are drawn from a mixture of Gaussians on the unit sphere (real
embeddings cluster; uniform random vectors are IVF's worst case), queries from
the same mixture. Reported per backend and size: build seconds (add + IVF
training), search seconds (median of ``--repeats``), recall@k against the exact
torch result, and which backend ``auto`` should use among those with recall >=
``AUTO_MIN_RECALL``: least build + search for an index rebuilt every search (the
queue), least search for one built once (a bank). Paste the printed ``MEASURED_CPU`` table into
``softcontrast/components/neighbors.py``; ``auto`` chooses from it.

Run: ``python benchmarks/neighbors.py [--output benchmarks/results/neighbors_cpu.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import faiss

from softcontrast.components.neighbors import AUTO_MIN_RECALL, NeighborSearch, faiss_gpu_count

BACKENDS = ("torch", "faiss-flat", "faiss-ivf")


def clustered_embeddings(
    count: int, dim: int, centres: Tensor, generator: torch.Generator, spread: float = 0.5
) -> Tensor:
    """``count`` unit vectors: a random centre plus Gaussian noise of norm about ``spread``."""
    labels = torch.randint(centres.shape[0], (count,), generator=generator)
    noise = torch.randn(count, dim, generator=generator) * (spread / dim**0.5)
    return F.normalize(centres[labels] + noise, dim=-1)


def recall(found: Tensor, exact: Tensor) -> float:
    """Share of the exact top-k ids that ``found`` contains, over all queries."""
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=1)
    return hits.float().mean().item()


def time_backend(backend: str, index: Tensor, queries: Tensor, k: int, repeats: int) -> tuple[float, float, Tensor]:
    """(build seconds, median search seconds, ids of the last search)."""
    search = NeighborSearch(backend)
    start = time.perf_counter()
    search.add(index)
    search.build()
    build = time.perf_counter() - start
    times, ids = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = search.search(queries, k)
        times.append(time.perf_counter() - start)
    return build, sorted(times)[len(times) // 2], ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/neighbors_cpu.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4_096, 65_536, 1_048_576])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rows", type=int, default=256, help="batch rows")
    parser.add_argument("--support-views", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faiss_gpu_count()  # imports faiss and its torch bridge before any timing
    generator = torch.Generator().manual_seed(args.seed)
    centres = F.normalize(torch.randn(args.clusters, args.dim, generator=generator), dim=-1)
    queries = clustered_embeddings(args.rows * args.support_views, args.dim, centres, generator)
    rows, auto_rule = [], []
    for size in args.sizes:
        index = clustered_embeddings(size, args.dim, centres, generator)
        results, exact = {}, None
        for backend in BACKENDS:
            repeats = args.repeats if size < 1_000_000 else max(1, args.repeats - 1)
            build, search, ids = time_backend(backend, index, queries, args.k, repeats)
            exact = ids if backend == "torch" else exact
            results[backend] = {"build_s": build, "search_s": search, "recall": recall(ids, exact)}
            rows.append({"size": size, "backend": backend, **results[backend]})
            print(f"size {size:>9,}  {backend:<10}  build {build:8.3f} s  search {search:8.3f} s  "
                  f"recall@{args.k} {results[backend]['recall']:.4f}", flush=True)
        eligible = {b: r for b, r in results.items() if r["recall"] >= AUTO_MIN_RECALL}
        rebuilt = min(eligible, key=lambda b: eligible[b]["build_s"] + eligible[b]["search_s"])
        kept = min(eligible, key=lambda b: eligible[b]["search_s"])
        auto_rule.append({"size": size, "rebuilt_every_search": rebuilt, "built_once": kept})
        del index

    print(f"\n{'size':>10} | {'backend':<10} | {'build s':>8} | {'search s':>8} | {'recall':>6}")
    print("-" * 56)
    for row in rows:
        print(f"{row['size']:>10,} | {row['backend']:<10} | {row['build_s']:8.3f} | {row['search_s']:8.3f} | "
              f"{row['recall']:6.4f}")
    print(f"\nauto (fastest with recall >= {AUTO_MIN_RECALL}; rebuilt = build + search, kept = search):")
    for choice in auto_rule:
        print(f"  {choice['size']:>10,}: rebuilt every search -> {choice['rebuilt_every_search']}, "
              f"built once -> {choice['built_once']}")
    print("\nMEASURED_CPU for softcontrast/components/neighbors.py:")
    for size in args.sizes:
        entries = ", ".join(
            f'"{r["backend"]}": ({r["build_s"]:.3f}, {r["search_s"]:.3f}, {r["recall"]:.4f})'
            for r in rows if r["size"] == size
        )
        print(f"    {size}: {{{entries}}},")
    report = {
        "benchmark": "NeighborSearch backends, build + search, CPU",
        "command": "python benchmarks/neighbors.py",
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "faiss": faiss.__version__},
        "settings": {"dim": args.dim, "queries": args.rows * args.support_views, "k": args.k,
                     "clusters": args.clusters, "repeats": args.repeats, "seed": args.seed,
                     "nprobe": NeighborSearch("faiss-ivf").nprobe, "nlist": "default_nlist(size)"},
        "results": rows,
        "auto_rule": auto_rule,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
