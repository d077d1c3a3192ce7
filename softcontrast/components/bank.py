"""EmbeddingBank: a dataset-wide, searchable bank of momentum embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from softcontrast.components.neighbors import Backend, NeighborSearch


class EmbeddingBank(nn.Module):
    """One momentum embedding per training image, searched with :class:`NeighborSearch`.

    :meth:`update` writes each step's gathered keys under their sample ids; the
    search index is rebuilt from the bank by :meth:`refresh` once
    ``refresh_every × num_samples`` keys were written since the last refresh (about
    every ``refresh_every`` epochs). Between refreshes searches see the bank as it
    was at the last refresh; before the first refresh it is empty. The embeddings
    and written flags are persistent buffers (they are in checkpoints); the index
    is rebuilt from them at the first search after loading.

    Args:
        num_samples: images in the training set (sample ids lie in ``[0, num_samples)``).
        dim: embedding size D.
        refresh_every: epochs between refreshes of the search index (>= 1).
        backend: :class:`NeighborSearch` backend (``auto`` chooses for an index
            searched many times per build).
        **search_options: further :class:`NeighborSearch` arguments (``nprobe``, ...).
    """

    embeddings: Tensor
    written: Tensor

    def __init__(self, num_samples: int, dim: int, refresh_every: int = 1, backend: Backend = "auto", **search_options):
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise ValueError(f"bank needs num_samples >= 1 and dim >= 1, got {num_samples} and {dim}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1 epoch, got {refresh_every}")
        self.num_samples = num_samples
        self.refresh_every = refresh_every
        self.register_buffer("embeddings", torch.zeros(num_samples, dim))
        self.register_buffer("written", torch.zeros(num_samples, dtype=torch.bool))
        self.index = NeighborSearch(backend, **{"searches_per_build": math.inf, **search_options})
        self._since_refresh = 0
        self._indexed = False

    @torch.no_grad()
    def update(self, keys: Tensor, ids: Tensor) -> None:
        """Stores ``keys`` (``n×D``, already gathered over processes) under sample ``ids``."""
        self.embeddings.index_copy_(0, ids, keys.detach().to(self.embeddings.dtype))
        self.written.index_fill_(0, ids, True)
        self._since_refresh += ids.shape[0]
        if self._since_refresh >= self.refresh_every * self.num_samples:
            self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuilds the search index from every written embedding."""
        self.index.reset()
        ids = self.written.nonzero().squeeze(1)
        self.index.add(self.embeddings[ids], ids)
        self._since_refresh = 0
        self._indexed = True

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """:meth:`NeighborSearch.search` over the bank at its last refresh; returns sample ids."""
        if not self._indexed:
            self.refresh()
        return self.index.search(queries, k)
