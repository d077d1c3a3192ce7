"""MemoryQueue: a ring buffer of momentum keys and their sample ids."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from softcontrast.components.distributed import gather_no_grad

EMPTY_ID = -1


class MemoryQueue(nn.Module):
    """Ring buffer of the last ``capacity`` keys of all processes.

    Keys, sample ids (``-1`` = empty slot), the write pointer and the fill count are
    persistent buffers, so a checkpoint of the owning module holds the queue.
    :meth:`enqueue` gathers the keys of every process before writing, so all
    processes keep identical queues. A global batch that does not divide the
    capacity wraps around.

    Args:
        capacity: number of slots K.
        dim: embedding size D.
    """

    keys: Tensor
    ids: Tensor
    pointer: Tensor
    filled: Tensor

    def __init__(self, capacity: int, dim: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        if dim < 1:
            raise ValueError(f"queue dim must be >= 1, got {dim}")
        self.capacity = capacity
        self.register_buffer("keys", torch.zeros(capacity, dim))
        self.register_buffer("ids", torch.full((capacity,), EMPTY_ID, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def valid(self) -> Tensor:
        """``K`` flags: slots that hold a key."""
        return self.ids != EMPTY_ID

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor) -> None:
        """Writes the gathered ``keys`` (``B×D``) and ``ids`` (``B``) of all processes.

        When the global batch exceeds the capacity only its last ``capacity`` rows
        are kept.
        """
        keys, ids = gather_no_grad(keys.detach()), gather_no_grad(ids)
        keys, ids = keys[-self.capacity :], ids[-self.capacity :]
        count = keys.shape[0]
        slots = (self.pointer + torch.arange(count, device=self.ids.device)) % self.capacity
        self.keys.index_copy_(0, slots, keys.to(self.keys.dtype))
        self.ids.index_copy_(0, slots, ids.to(self.ids.dtype))
        self.pointer.copy_((self.pointer + count) % self.capacity)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.capacity))

    def reset(self) -> None:
        """Empties the queue."""
        self.keys.zero_()
        self.ids.fill_(EMPTY_ID)
        self.pointer.zero_()
        self.filled.zero_()
