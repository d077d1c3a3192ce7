"""Memory: a ring buffer of momentum embeddings with their sample ids and view indices.

One memory serves every method: MoCo's queue of keys (one view per image) and FNC's
memory of view entries. Entries arrive already gathered over processes (the step's
block of columns, :meth:`~softcontrast.components.columns.Columns.block_entries`), so
every process keeps an identical memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Sample id of an empty slot.
EMPTY_ID = -1
#: View index of an empty slot, and the own column of a row that is no column.
NO_COLUMN = -1


class Memory(nn.Module):
    """FIFO of the last ``capacity`` entries of all processes.

    Embeddings, sample ids (``-1`` = empty), view indices, the write pointer and the
    fill count are persistent buffers, so a checkpoint of the owning module holds the
    memory. A block that does not divide the capacity wraps around; of a block larger
    than the capacity only its last ``capacity`` entries are kept. ``capacity = 0`` is
    no memory.

    The columns read it in one of two orders (:meth:`entries`): every slot in slot
    order, or (as FNC publishes it, a memory whose head is the new block) only the
    ``capacity − block`` entries that follow the block.

    Args:
        capacity: number of entries (0 = none).
        dim: embedding size D.
    """

    embeddings: Tensor
    ids: Tensor
    views: Tensor
    pointer: Tensor
    filled: Tensor

    def __init__(self, capacity: int, dim: int):
        super().__init__()
        if capacity < 0:
            raise ValueError(f"memory capacity must be >= 0 entries (0 = no memory), got {capacity}")
        if dim < 1:
            raise ValueError(f"memory dim must be >= 1, got {dim}")
        self.capacity = capacity
        self.register_buffer("embeddings", torch.zeros(capacity, dim))
        self.register_buffer("ids", torch.full((capacity,), EMPTY_ID, dtype=torch.long))
        self.register_buffer("views", torch.full((capacity,), NO_COLUMN, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def valid(self) -> Tensor:
        """``K`` flags: slots that hold an entry."""
        return self.ids != EMPTY_ID

    def entries(self, block: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Embeddings, ids and view indices of the entries the columns read.

        Args:
            block: ``None``: every slot, in slot order. An integer (entries in the new
                block, ``G·V``): as the official FNC memory of ``capacity`` rows whose head
                is the new block (``[block | memory[:−block]]``), the ``capacity − block``
                entries it keeps, the newest earlier block first, each block in its own order.

        Raises:
            ValueError: ``block`` is larger than the memory.
        """
        if block is None:
            return self.embeddings, self.ids, self.views
        if block > self.capacity:
            raise ValueError(
                f"memory of {self.capacity} entries is smaller than one block of {block}: "
                f"raise the memory size to at least {block} (or 0 for no memory)"
            )
        offsets = torch.arange(self.capacity - block, device=self.ids.device)
        slots = (self.pointer - block * (offsets // block + 1) + offsets % block) % self.capacity
        return self.embeddings[slots], self.ids[slots], self.views[slots]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, ids: Tensor, views: Tensor | None = None) -> None:
        """Writes a block of entries that is already gathered over processes.

        Args:
            embeddings: ``n×D`` momentum embeddings.
            ids: ``n`` sample ids.
            views: ``n`` view indices (default: all 0).
        """
        if self.capacity == 0:
            return
        views = torch.zeros_like(ids) if views is None else views
        embeddings, ids, views = embeddings[-self.capacity:], ids[-self.capacity:], views[-self.capacity:]
        count = embeddings.shape[0]
        slots = (self.pointer + torch.arange(count, device=self.ids.device)) % self.capacity
        self.embeddings.index_copy_(0, slots, embeddings.detach().to(self.embeddings.dtype))
        self.ids.index_copy_(0, slots, ids.to(self.ids.dtype))
        self.views.index_copy_(0, slots, views.to(self.views.dtype))
        self.pointer.copy_((self.pointer + count) % self.capacity)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.capacity))

    def reset(self) -> None:
        """Empties the memory."""
        self.embeddings.zero_()
        self.ids.fill_(EMPTY_ID)
        self.views.fill_(NO_COLUMN)
        self.pointer.zero_()
        self.filled.zero_()
