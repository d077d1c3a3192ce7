"""NeighborSearch: maximum-inner-product search over L2-normalised embeddings.

One interface, :meth:`NeighborSearch.add` / :meth:`~NeighborSearch.reset` /
:meth:`~NeighborSearch.search`, over four backends:

* ``torch``: exact, ``queries @ index.T`` then ``topk``, in index chunks so memory
  stays at ``queries × chunk_size`` scores. Runs wherever the tensors live.
* ``faiss-flat``: exact FAISS ``IndexFlatIP`` (CPU, or GPU where faiss sees one).
* ``faiss-ivf``: approximate FAISS ``IndexIVFFlat`` (inverted lists, ``nprobe`` of
  ``nlist`` lists scanned), trained on a subsample of the added vectors.
* ``auto``: picks one of the above by index size from :data:`AUTO_RULE_CPU`, the
  table measured by ``benchmarks/neighbors.py``.

Stored vectors are L2-normalised on :meth:`~NeighborSearch.add`. Queries are used
as given, so scores are ``q · x̂``: cosines for unit queries, and for the mean of
unit vectors the mean of their cosines (what FNC's ``mean`` aggregation needs).
Entries added under a negative id (an empty memory slot) are never returned.

A FAISS index is made once and refilled after :meth:`~NeighborSearch.reset` (its
IVF lists kept, see ``retrain_every`` and ``retrain_growth``). On a GPU it lives on
the process's device, with one ``StandardGpuResources`` per process and device
(:func:`gpu_resources`), and finds at most :data:`FAISS_GPU_MAX_K` neighbours.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from softcontrast.components.precision import similarities

BACKENDS = ("torch", "faiss-flat", "faiss-ivf", "auto")
Backend = Literal["torch", "faiss-flat", "faiss-ivf", "auto"]

# Measured by `python benchmarks/neighbors.py` (benchmarks/results/neighbors_cpu.json):
# 2 CPU cores, dim 128, 2048 queries (256 rows × 8 support views), k = 10.
# index size -> backend -> (build seconds, search seconds, recall@10).
MEASURED_CPU: dict[int, dict[str, tuple[float, float, float]]] = {
    4096: {"torch": (0.001, 0.049, 1.0000), "faiss-flat": (0.002, 0.036, 1.0000), "faiss-ivf": (0.023, 0.033, 0.8334)},
    65536: {"torch": (0.035, 0.728, 1.0000), "faiss-flat": (0.061, 0.449, 1.0000), "faiss-ivf": (0.986, 0.214, 1.0000)},
    1048576: {"torch": (0.541, 12.355, 1.0000), "faiss-flat": (1.002, 5.663, 1.0000), "faiss-ivf": (6.229, 0.874, 1.0000)},
}
AUTO_MIN_RECALL = 0.95
FAISS_GPU_MAX_K = 2048  # FAISS's GPU k-selection returns at most this many neighbours per query


def _faiss():
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take torch tensors without copies)
    except ImportError as error:  # pragma: no cover - faiss is a dependency
        raise ImportError("the faiss backends need the faiss package: pip install faiss-cpu (or faiss-gpu)") from error
    return faiss


def faiss_gpu_count() -> int:
    """Number of GPUs faiss can use (0 without faiss GPU support)."""
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@functools.cache
def gpu_resources(device: int):
    """This process's one ``faiss.StandardGpuResources`` for GPU ``device``, made at first use."""
    return _faiss().StandardGpuResources()


def faiss_device(requested: torch.device | None, data: torch.device) -> torch.device:
    """Where a FAISS index lives: ``requested``, else the data's GPU where faiss sees
    one, else the CPU. A GPU without an index is the process's current device
    (``torch.cuda.current_device()``, set per process by the launcher)."""
    if requested is None:
        requested = data if data.type == "cuda" and faiss_gpu_count() > 0 else torch.device("cpu")
    if requested.type == "cuda" and requested.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return requested


def auto_backend(size: int, device: torch.device | str = "cpu", searches_per_build: float = 1.0) -> str:
    """The backend ``auto`` uses for an index of ``size`` vectors on ``device``.

    On the CPU: from the :data:`MEASURED_CPU` entry nearest in ``log(size)``, the
    backend of least ``build / searches_per_build + search`` seconds among those
    with recall >= :data:`AUTO_MIN_RECALL`. On a GPU (not measured on the benchmark
    machine): ``torch``, exact and free of host transfers.

    Args:
        size: vectors in the index.
        device: where the vectors are.
        searches_per_build: how many searches one build serves (1 for an index
            rebuilt every step, like the queue; large for a bank refreshed per epoch).
    """
    if torch.device(device).type != "cpu":
        return "torch"
    nearest = min(MEASURED_CPU, key=lambda measured: abs(math.log(measured) - math.log(max(size, 1))))
    eligible = {name: row for name, row in MEASURED_CPU[nearest].items() if row[2] >= AUTO_MIN_RECALL}
    return min(eligible, key=lambda name: eligible[name][0] / searches_per_build + eligible[name][1])


def default_nlist(size: int) -> int:
    """IVF lists for ``size`` vectors: about ``sqrt(size)``, with at least 39 vectors per list."""
    return max(1, min(int(round(math.sqrt(size))), size // 39))


class NeighborSearch:
    """Top-k inner-product search over an index of L2-normalised embeddings.

    Args:
        backend: ``torch``, ``faiss-flat``, ``faiss-ivf`` or ``auto``.
        device: where a FAISS index lives: ``"cuda"`` (the process's current GPU;
            needs faiss GPU support), ``"cuda:N"``, ``"cpu"``, or ``None`` to follow
            the added tensors (their GPU when they are on CUDA and faiss sees a GPU).
            The ``torch`` backend always computes where the added tensors are.
        chunk_size: index rows scored at once by the ``torch`` backend.
        nlist: IVF lists (default :func:`default_nlist` of the vectors it is trained on).
        nprobe: IVF lists scanned per query.
        train_size: at most this many vectors (a seeded random subsample) train IVF.
        seed: seed of the IVF training subsample and k-means.
        searches_per_build: searches one build serves, for ``auto``'s choice
            (see :func:`auto_backend`).
        retrain_every: IVF lists are trained at the first build that has vectors
            and kept across :meth:`reset`; with ``retrain_every = N`` they are
            trained again at every N-th refill after that (``None``: only as below).
        retrain_growth: the IVF lists are trained again at a refill of at least this
            many times the vectors they were trained on, so a filling queue or bank
            is retrained a few times, then never (``None``: never for growth).

    Raises:
        ValueError: unknown backend, non-positive sizes, or a FAISS GPU index
            requested where faiss sees no GPU.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        device: str | torch.device | None = None,
        chunk_size: int = 65_536,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 65_536,
        seed: int = 0,
        searches_per_build: float = 1.0,
        retrain_every: int | None = None,
        retrain_growth: float | None = 2.0,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown neighbor-search backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for name, value in (("chunk_size", chunk_size), ("nprobe", nprobe), ("train_size", train_size),
                            ("nlist", nlist), ("retrain_every", retrain_every)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if retrain_growth is not None and not retrain_growth > 1:
            raise ValueError(f"retrain_growth must be > 1 (or None), got {retrain_growth}")
        self.device = None if device is None else torch.device(device)
        if backend.startswith("faiss") and self.device is not None and self.device.type == "cuda":
            if faiss_gpu_count() == 0:
                raise ValueError(
                    f"backend {backend!r} on device {device!r} needs a FAISS GPU index, but faiss sees no GPU "
                    "(faiss.get_num_gpus() == 0): use device='cpu', backend='torch', or install faiss-gpu"
                )
        self.backend = backend
        self.chunk_size = chunk_size
        self.nlist = nlist
        self.nprobe = nprobe
        self.train_size = train_size
        self.seed = seed
        self.searches_per_build = searches_per_build
        self.retrain_every = retrain_every
        self.retrain_growth = retrain_growth
        self._index = None
        self._index_key: tuple[str, int, torch.device] | None = None
        self._trained_on = 0
        self._refills_since_training = 0
        self.reset()

    def reset(self) -> None:
        """Empties the index (a FAISS index is kept, emptied, for the next fill)."""
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._vectors: Tensor | None = None
        self._ids: Tensor | None = None
        self._resolved: str | None = None
        if self._index is not None:
            self._index.reset()

    def __len__(self) -> int:
        stored = 0 if self._ids is None else self._ids.shape[0]
        return stored + sum(ids.shape[0] for _, ids in self._pending)

    @property
    def resolved_backend(self) -> str | None:
        """The backend in use (``auto`` resolved), once the index is built."""
        return self._resolved

    @property
    def faiss_index(self):
        """The FAISS index (``None`` before the first FAISS build); the same object across refills."""
        return self._index

    @torch.no_grad()
    def add(self, embeddings: Tensor, ids: Tensor | None = None) -> None:
        """Adds ``embeddings`` (``n×D``), L2-normalised, under ``ids`` (``n``, int).

        Args:
            embeddings: vectors to index.
            ids: what :meth:`search` returns for them (default: running positions).
                A negative id marks an empty entry (such as ``EMPTY_ID``): it is
                never returned, and a FAISS index leaves it out.
        """
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be n×D, got shape {tuple(embeddings.shape)}")
        if ids is None:
            ids = torch.arange(len(self), len(self) + embeddings.shape[0], device=embeddings.device)
        if ids.shape != embeddings.shape[:1]:
            raise ValueError(f"need one id per embedding, got {tuple(ids.shape)} ids for {embeddings.shape[0]} rows")
        self._pending.append((F.normalize(embeddings.detach().float(), dim=-1), ids.detach().long()))

    @torch.no_grad()
    def build(self) -> None:
        """Indexes everything added so far (otherwise done by the next :meth:`search`).

        The first build after :meth:`reset` resolves ``auto``; a FAISS index is
        made (and IVF trained) only when there is none of this backend, size and
        device yet, or when its IVF lists are due for training.
        """
        if not self._pending:
            return
        vectors = torch.cat([v for v, _ in self._pending])
        ids = torch.cat([i.to(vectors.device) for _, i in self._pending])
        self._pending = []
        if self._resolved is None:
            total = vectors.shape[0] + (0 if self._ids is None else self._ids.shape[0])
            backend = self.backend
            if backend == "auto":
                backend = auto_backend(total, self.device or vectors.device, self.searches_per_build)
            self._resolved = backend
        if self._resolved == "torch":
            if self.device is not None:
                vectors = vectors.to(self.device)
            self._vectors = vectors if self._vectors is None else torch.cat([self._vectors, vectors.to(self._vectors)])
            ids = ids.to(self._vectors.device)
        else:
            filled = ids >= 0
            vectors, ids = vectors[filled], ids[filled]
            self._faiss_add(vectors)
        self._ids = ids if self._ids is None else torch.cat([self._ids.to(ids.device), ids])

    def _faiss_add(self, vectors: Tensor) -> None:
        if vectors.shape[0] == 0:
            return
        key = (self._resolved, vectors.shape[1], faiss_device(self.device, vectors.device))
        if self._index is None or self._index.ntotal == 0:
            if self._index_key != key or self._due_for_training(vectors.shape[0]):
                self._index_key = key
                self._index = self._new_faiss_index(vectors)
            self._refills_since_training += 1
        self._index.add(self._for_index(vectors))

    def _due_for_training(self, count: int) -> bool:
        if self._resolved != "faiss-ivf":
            return False
        due = self.retrain_every is not None and self._refills_since_training >= self.retrain_every
        return due or (self.retrain_growth is not None and count >= self.retrain_growth * self._trained_on)

    def _new_faiss_index(self, vectors: Tensor):
        faiss = _faiss()
        backend, dim, device = self._index_key
        if backend == "faiss-flat":
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = self.nlist or default_nlist(vectors.shape[0])
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = self.seed
        if device.type == "cuda":
            if backend == "faiss-ivf" and self.nprobe > FAISS_GPU_MAX_K:
                raise ValueError(
                    f"FAISS on a GPU scans at most {FAISS_GPU_MAX_K} IVF lists per query, got nprobe={self.nprobe}: "
                    f"lower nprobe to {FAISS_GPU_MAX_K} or less, or search on the CPU"
                )
            index = faiss.index_cpu_to_gpu(gpu_resources(device.index), device.index, index)
        if backend == "faiss-ivf":
            generator = torch.Generator().manual_seed(self.seed)
            count = min(self.train_size, vectors.shape[0])
            sample = torch.randperm(vectors.shape[0], generator=generator)[:count].to(vectors.device)
            index.train(self._for_index(vectors[sample]))
            index.nprobe = self.nprobe
            self._trained_on, self._refills_since_training = vectors.shape[0], 0
        return index

    def _for_index(self, tensor: Tensor) -> Tensor:
        """``tensor`` as the FAISS index reads it: CUDA tensors on the index's device,
        host tensors as they are (a GPU index copies host memory itself)."""
        return (tensor.to(self._index_key[2]) if tensor.is_cuda else tensor).contiguous()

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` indexed vectors of largest inner product with each query.

        Args:
            queries: ``Q×D`` (used as given; pass unit vectors for cosines).
            k: neighbours per query, ``>= 1``. At most the index size are returned
                (for FAISS: its filled entries); at most :data:`FAISS_GPU_MAX_K` on a GPU.

        Returns:
            ``(scores, indices)``, both ``Q×min(k, size)`` on the queries' device,
            best first; ``indices`` are the ids given to :meth:`add`. Missing hits
            (IVF may find fewer than ``k``; the ``torch`` backend keeps empty
            entries in its size) have score ``-inf`` and id ``-1``.

        Raises:
            ValueError: ``k < 1``, queries not ``Q×D``, or a FAISS GPU index asked
                for more than :data:`FAISS_GPU_MAX_K` neighbours.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if queries.ndim != 2:
            raise ValueError(f"queries must be Q×D, got shape {tuple(queries.shape)}")
        self.build()
        size = 0 if self._ids is None else self._ids.shape[0]
        k = min(k, size)
        if k == 0:
            empty = queries.new_zeros(queries.shape[0], 0)
            return empty.float(), empty.long()
        queries = queries.detach().float()
        if self._resolved == "torch":
            scores, positions = self._torch_search(queries, k)
        else:
            if self._index_key[2].type == "cuda" and k > FAISS_GPU_MAX_K:
                raise ValueError(
                    f"FAISS on a GPU finds at most {FAISS_GPU_MAX_K} neighbours per query, asked for k={k} "
                    f"of {size} filled entries: lower k (FNC asks for top_k, --top-k, plus the row's own "
                    "entries), or use the 'torch' backend on the GPU"
                )
            scores, positions = self._index.search(self._for_index(queries), k)
            scores, positions = scores.to(queries.device), positions.to(queries.device)
        ids = self._ids.to(queries.device)[positions.clamp(min=0)].masked_fill(positions < 0, -1)
        found = ids >= 0
        return scores.masked_fill(~found, float("-inf")), ids

    def _torch_search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        vectors = self._vectors
        queries = queries.to(vectors.device)
        best_scores = best_positions = None
        for start in range(0, vectors.shape[0], self.chunk_size):
            block = similarities(queries, vectors[start : start + self.chunk_size])
            block = block.masked_fill(self._ids[start : start + self.chunk_size] < 0, float("-inf"))
            scores, positions = block.topk(min(k, block.shape[1]), dim=1)
            positions = positions + start
            if best_scores is not None:
                merged = torch.cat([best_scores, scores], dim=1)
                scores, order = merged.topk(min(k, merged.shape[1]), dim=1)
                positions = torch.cat([best_positions, positions], dim=1).gather(1, order)
            best_scores, best_positions = scores, positions
        return best_scores, best_positions
