"""The columns every anchor row is scored against, and the rows' layout (DESIGN step 4).

One :class:`Columns` serves every method: the momentum view embeddings of the
*global* batch (the block, image-major: entry ``g·V + v`` is view ``v`` of global
image ``g``), then the entries of a :class:`~softcontrast.components.memory.Memory`;
each column has a sample id and a view index. Two layouts:

* **shared** (``batch_negatives=True``): ``[block | memory]`` for every row. MoCo's
  in-batch keys, SANE's ``B̄ = [gathered batch keys | Q]`` and FNC's view columns.
* **own key** (``batch_negatives=False``): ``[k_i | memory]``: column 0 is the row's
  own key (one view per image), the other images of the batch are no columns.
  MoCo v2's and SCE's layout.

:meth:`Columns.rows` gives the anchor rows' :class:`Rows`: positives (the other
views of the row's image in the block), mask (the anchor's own column, empty memory
slots, and memory entries of the row's own image) and own column. Targets may put
mass on several positive columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from softcontrast.components.distributed import gather_no_grad, gather_with_grad, rank
from softcontrast.components.memory import EMPTY_ID, NO_COLUMN, Memory
from softcontrast.components.precision import full_precision, similarities


@dataclass(frozen=True)
class Rows:
    """The anchor rows of one contrast and how each treats the columns.

    Rows are image-major: row ``i·A + a`` is anchor ``a`` of local image ``i``.

    Attributes:
        ids: ``R`` sample id of each row's image.
        own: ``R`` the anchor's own column (``-1``: the anchor is no column).
        positive: ``R×N`` positive columns (the other views of the row's image).
        mask: ``R×N`` columns excluded from the softmax.
        per_image: ``A``, anchor rows per image.
        keys: ``R×D`` the momentum key of each row's image (one column view per
            image), or ``None``.
        detectors: ``B×S×D`` embeddings of each image that detect false negatives
            (its column views, then any extra detection views), or ``None``.
    """

    ids: Tensor
    own: Tensor
    positive: Tensor
    mask: Tensor
    per_image: int = 1
    keys: Tensor | None = None
    detectors: Tensor | None = None

    def positive_one_hot(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``R×N`` indicator of the positive columns (``e_pos`` for one positive)."""
        return self.positive.to(dtype)

    def per_row(self, image_flags: Tensor) -> Tensor:
        """Repeats per-image rows ``B×N`` for each of the image's anchor rows (``R×N``)."""
        return image_flags if self.per_image == 1 else image_flags.repeat_interleave(self.per_image, dim=0)

    @property
    def first_of_each_image(self) -> slice:
        """The rows of each image's first anchor."""
        return slice(None, None, self.per_image)


@dataclass(frozen=True)
class Columns:
    """Columns of one contrast: ``[block | memory]``, or ``[k_i | memory]``.

    Attributes:
        shared: ``M×D`` columns common to all rows.
        ids: ``M`` sample ids of the shared columns (``-1`` = empty memory slot).
        views: ``M`` view indices of the shared columns (``-1`` = empty).
        block: ``G·V×D`` the gathered block (to write to the memory after the step).
        block_ids: ``G·V`` its sample ids.
        block_views: ``G·V`` its view indices.
        num_views: V, column views per image in the block.
        first_image: global index of this process's first image.
        own_keys: ``B×D`` each local image's key, column 0 of its rows (own-key
            layout), or ``None`` (shared layout).
    """

    shared: Tensor
    ids: Tensor
    views: Tensor
    block: Tensor
    block_ids: Tensor
    block_views: Tensor
    num_views: int
    first_image: int
    own_keys: Tensor | None = None

    @classmethod
    def build(cls, embeddings: Tensor, ids: Tensor, memory: Memory | None = None, batch_negatives: bool = True,
              memory_counts_block: bool = False, gradient: bool = False) -> "Columns":
        """Gathers the block of every process and appends the memory.

        Args:
            embeddings: ``B×V×D`` this process's column embeddings (momentum ones, or
                online ones with ``gradient``), in float32 at least.
            ids: ``B`` sample ids.
            memory: earlier blocks' entries, or ``None``.
            batch_negatives: shared layout ``[block | memory]``; ``False``: own-key layout
                ``[k_i | memory]`` (one view per image).
            memory_counts_block: the memory's capacity counts the block too, as FNC
                publishes it: ``[block | memory[:−G·V]]`` (:meth:`Memory.entries`);
                ``False``: every memory slot in slot order.
            gradient: keep the gradient through the block (gathered with gradient).

        Raises:
            ValueError: the own-key layout with more than one view per image.
        """
        batch, num_views, dim = embeddings.shape
        if not batch_negatives and num_views != 1:
            raise ValueError(f"the own-key layout [k_i | memory] takes one view per image, got {num_views}")
        local = full_precision(embeddings if gradient else embeddings.detach())
        gathered = gather_with_grad(local.contiguous()) if gradient else gather_no_grad(local.contiguous())
        block = gathered.reshape(-1, dim)
        block_ids = gather_no_grad(ids).repeat_interleave(num_views)
        block_views = torch.arange(num_views, device=ids.device).repeat(block.shape[0] // num_views)
        parts = [(block, block_ids, block_views)] if batch_negatives else []
        if memory is not None and memory.capacity > 0:
            older, older_ids, older_views = memory.entries(block.shape[0] if memory_counts_block else None)
            parts.append((full_precision(older), older_ids, older_views))
        if len(parts) == 1:  # one part (the memory of [k_i | memory]): no copy
            shared, shared_ids, shared_views = parts[0]
        elif parts:
            shared, shared_ids, shared_views = (torch.cat(column) for column in zip(*parts))
        else:
            shared, shared_ids, shared_views = block[:0], block_ids[:0], block_views[:0]
        own_keys = None if batch_negatives else local[:, 0]
        return cls(shared, shared_ids, shared_views, block, block_ids, block_views, num_views, rank() * batch,
                   own_keys)

    @property
    def lead(self) -> int:
        """Columns in front of the shared ones (1 in the own-key layout: ``k_i``)."""
        return 0 if self.own_keys is None else 1

    @property
    def num_columns(self) -> int:
        """N, the number of columns."""
        return self.lead + self.shared.shape[0]

    @property
    def block_size(self) -> int:
        """Shared columns that belong to the current block (0 in the own-key layout)."""
        return self.block.shape[0] if self.own_keys is None else 0

    def block_entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The block's embeddings (detached), ids and view indices, to write to the memory."""
        return self.block.detach(), self.block_ids, self.block_views

    def scores(self, x: Tensor) -> Tensor:
        """``x_r · c_n`` for every row and column (``R×N``), in float32 at least and
        outside autocast (:func:`~softcontrast.components.precision.similarities`).
        In the own-key layout the rows are image-major over the local images."""
        shared = similarities(x, self.shared)
        if self.own_keys is None:
            return shared
        keys = self.own_keys.repeat_interleave(x.shape[0] // self.own_keys.shape[0], dim=0)
        own = (full_precision(x) * keys).sum(dim=-1, keepdim=True)
        return torch.cat([own, shared], dim=1)

    def column_ids(self, row_ids: Tensor) -> Tensor:
        """``R×N`` sample id of every column of every row (``-1`` = empty)."""
        shared = self.ids[None, :].expand(row_ids.shape[0], -1)
        return shared if self.own_keys is None else torch.cat([row_ids[:, None], shared], dim=1)

    def rows(self, ids: Tensor, own_views: Sequence[int | None] | Tensor, keys: Tensor | None = None,
             detectors: Tensor | None = None) -> Rows:
        """The layout of anchor rows: ``len(own_views)`` anchors for each local image.

        Args:
            ids: ``B`` sample ids of the local images.
            own_views: per anchor, the column view it is (its own column, masked), or
                ``None`` for an anchor that is no column (a query view); or these as a
                tensor on the device, ``-1`` for ``None`` (:func:`own_view_indices`).
            keys: ``B×D`` each image's momentum key, if any (repeated per anchor).
            detectors: ``B×S×D`` each image's detection embeddings, if any.
        """
        per_image = len(own_views)
        row_ids = ids.repeat_interleave(per_image)
        device = ids.device
        images = torch.arange(ids.shape[0], device=device).repeat_interleave(per_image)
        if not isinstance(own_views, Tensor):
            own_views = own_view_indices(own_views, device)
        view_of = own_views.repeat(ids.shape[0])
        same_image = self.ids[None, :] == row_ids[:, None]
        empty = (self.ids == EMPTY_ID)[None, :]
        if self.own_keys is None:
            own = torch.where(view_of >= 0, (images + self.first_image) * self.num_views + view_of, NO_COLUMN)
            columns = torch.arange(self.shared.shape[0], device=device)
            in_block = (columns < self.block_size)[None, :]
            is_own = columns[None, :] == own[:, None]
            positive = same_image & in_block & ~is_own
            mask = is_own | empty | (same_image & ~in_block)
        else:
            own = torch.full_like(row_ids, NO_COLUMN)
            lead = torch.ones(row_ids.shape[0], 1, dtype=torch.bool, device=device)
            positive = torch.cat([lead, torch.zeros_like(same_image)], dim=1)
            mask = torch.cat([~lead, same_image | empty], dim=1)
        if keys is not None and per_image > 1:
            keys = keys.repeat_interleave(per_image, dim=0)
        return Rows(row_ids, own, positive, mask, per_image, keys, detectors)


def own_view_indices(own_views: Sequence[int | None], device: torch.device | str = "cpu") -> Tensor:
    """``own_views`` (a column view per anchor, or ``None``) as a tensor on ``device``, ``-1`` for ``None``;
    filled on the device (no copy from the host)."""
    indices = torch.full((len(own_views),), NO_COLUMN, dtype=torch.long, device=device)
    for anchor, view in enumerate(own_views):
        if view is not None:
            indices[anchor] = view
    return indices
