"""The logit columns every query row is scored against (DESIGN step 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from softcontrast.components.distributed import gather_no_grad, rank
from softcontrast.components.precision import full_precision, similarities
from softcontrast.components.queue import EMPTY_ID, MemoryQueue


@dataclass(frozen=True)
class LogitColumns:
    """Columns ``C`` of one step and which of them each row may use.

    Two layouts:

    * ``[k_i | Q]`` (``in_batch=False``): column 0 is the row's own key, then the
      K queue slots. ``positive`` is 0 for every row.
    * ``[gathered batch keys | Q]`` (``in_batch=True``): the keys of every process
      in rank order, then the queue. Row ``i``'s positive is its own key's column.

    ``mask`` flags the columns excluded from the softmax: empty queue slots and
    entries whose sample id equals the row's id (another key of the same image is
    not a negative). The positive column is never masked.

    Attributes:
        keys: ``B×D`` momentum keys ``k_i`` of the local rows.
        shared: ``M×D`` columns common to all rows (``Q`` or ``[keys_all | Q]``).
        column_ids: ``M`` sample ids of the shared columns (``-1`` = empty).
        row_ids: ``B`` sample ids of the rows.
        positive: ``B`` column index of each row's positive.
        mask: ``B×N`` excluded columns.
        queue_start: column index of the first queue slot.
        in_batch: which layout.
    """

    keys: Tensor
    shared: Tensor
    column_ids: Tensor
    row_ids: Tensor
    positive: Tensor
    mask: Tensor
    queue_start: int
    in_batch: bool

    @classmethod
    def build(cls, keys: Tensor, ids: Tensor, queue: MemoryQueue, in_batch: bool = False) -> "LogitColumns":
        """Lays out the columns for local ``keys`` with sample ``ids`` and a queue.

        With ``in_batch=True`` the keys and ids of all processes are gathered. Keys
        and columns are kept in float32 at least (bfloat16 keys are upcast).
        """
        keys = full_precision(keys)
        batch = keys.shape[0]
        rows = torch.arange(batch, device=keys.device)
        if in_batch:
            all_keys, all_ids = gather_no_grad(keys), gather_no_grad(ids)
            shared = full_precision(torch.cat([all_keys, queue.keys]))
            column_ids = torch.cat([all_ids, queue.ids])
            positive = rows + rank() * batch
            queue_start = all_keys.shape[0]
        else:
            shared = full_precision(queue.keys)
            column_ids = queue.ids
            positive = torch.zeros_like(rows)
            queue_start = 1
        shared_mask = (column_ids == EMPTY_ID)[None, :] | (column_ids[None, :] == ids[:, None])
        if in_batch:
            mask = shared_mask.index_put((rows, positive), torch.zeros((), dtype=torch.bool, device=keys.device))
        else:
            mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=keys.device), shared_mask], dim=1)
        return cls(keys, shared, column_ids, ids, positive, mask, queue_start, in_batch)

    @property
    def num_columns(self) -> int:
        """N, the number of columns."""
        return self.mask.shape[1]

    def scores(self, x: Tensor) -> Tensor:
        """``x_i · C_ij`` for every row ``i`` and column ``j`` (``B×N``), in float32 at
        least and outside autocast (:func:`~softcontrast.components.precision.similarities`)."""
        shared = similarities(x, self.shared)
        if self.in_batch:
            return shared
        own = (full_precision(x) * self.keys).sum(dim=-1, keepdim=True)
        return torch.cat([own, shared], dim=1)

    def positive_one_hot(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``B×N`` one-hot rows ``e_pos``."""
        target = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
        return target.scatter_(1, self.positive[:, None], 1.0)
