"""Multi-view steps: V views per image, every view an anchor (DESIGN, "Multi-view steps").

One mechanism serves FNC as published, SCE multi-crop and any method with more than
one query view per image:

* :class:`MultiViewAugment` makes V views of a batch, each with its own recipe and
  size; :func:`embed_views` runs them through an encoder (views of one size in one
  pass) and returns ``V×B×D``.
* :class:`ViewColumns` lays out the columns: the momentum embeddings of the *global*
  views of every image of the global batch (the current block, image-major: column
  ``g·V + v`` is view ``v`` of global image ``g``), then a :class:`ViewMemory` of
  earlier blocks' view entries; each column has a sample id and a view index. As
  published, the memory's size counts the block too (``[block | memory[:−V·B]]``);
  the block may also be online embeddings that keep their gradient (no memory).
* :meth:`ViewColumns.layout` gives, for anchor rows, the positives (the other views
  of the row's image in the current block), the mask (the anchor's own column,
  empty memory slots, and older memory entries of the row's own image) and the
  anchor's own column. Targets may put mass on several positive columns.
* :class:`SmallCrops` are extra anchors that are never columns (multi-crop): they
  pass only through the online encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from softcontrast.components.augment import BatchAugment, ViewRecipe
from softcontrast.components.distributed import gather_no_grad, gather_with_grad, rank
from softcontrast.components.precision import full_precision, similarities
from softcontrast.components.queue import EMPTY_ID

Encode = Callable[[Tensor], Tensor]
NO_COLUMN = -1


class MultiViewAugment(nn.Module):
    """Makes one view of a batch per recipe, on the batch's device.

    Args:
        recipes: one recipe per view (each with its own transformations and size).
    """

    def __init__(self, recipes: Sequence[ViewRecipe]):
        super().__init__()
        if not recipes:
            raise ValueError("a multi-view step needs at least one view recipe")
        self.augments = nn.ModuleList(BatchAugment(recipe) for recipe in recipes)

    @property
    def recipes(self) -> list[ViewRecipe]:
        """The recipe of every view."""
        return [augment.recipe for augment in self.augments]

    def __len__(self) -> int:
        return len(self.augments)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """``V`` normalised float views of ``images`` (``B×3×H×W``), in recipe order, drawn
        from ``generator`` (default: the global generator)."""
        return [augment(images, generator) for augment in self.augments]


def embed_views(encode: Encode, views: Sequence[Tensor]) -> Tensor:
    """``V×B×D`` embeddings of ``V`` views of one batch.

    Consecutive views of one size go through ``encode`` in one call (their batch-norm
    statistics are shared, as in multi-crop training); views of another size get
    their own call.

    Args:
        encode: the encoder (online, or momentum without gradient).
        views: ``V`` tensors ``B×3×h×w`` (``h`` may differ between views).
    """
    groups: list[list[Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape[1:] == view.shape[1:]:
            groups[-1].append(view)
        else:
            groups.append([view])
    batch = views[0].shape[0]
    parts = [encode(torch.cat(group)).reshape(len(group), batch, -1) for group in groups]
    return torch.cat(parts)


class ViewMemory(nn.Module):
    """FIFO of the last ``capacity`` view entries of all processes.

    Embeddings, sample ids (``-1`` = empty), view indices, the write pointer and the
    fill count are persistent buffers, so checkpoints hold the memory. A block that
    does not divide the capacity wraps around. ``capacity = 0`` is no memory. The
    columns take every slot, or (as published) only what :meth:`behind_block` keeps.

    Args:
        capacity: number of view entries (0 = none).
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
            raise ValueError(f"memory size must be >= 0 view entries (0 = no memory), got {capacity}")
        if dim < 1:
            raise ValueError(f"memory dim must be >= 1, got {dim}")
        self.capacity = capacity
        self.register_buffer("embeddings", torch.zeros(capacity, dim))
        self.register_buffer("ids", torch.full((capacity,), EMPTY_ID, dtype=torch.long))
        self.register_buffer("views", torch.full((capacity,), NO_COLUMN, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def _check_block(self, count: int) -> None:
        if count > self.capacity:
            raise ValueError(
                f"memory of {self.capacity} view entries is smaller than one block of {count}: "
                f"raise the memory size to at least {count} (or 0 for no memory)"
            )

    def behind_block(self, block: int) -> tuple[Tensor, Tensor, Tensor]:
        """Embeddings, ids and view indices of the entries that follow a new block in the columns.

        As the official memory of ``capacity`` rows whose head is the new block
        (``[block | memory[:−block]]``): the ``capacity − block`` entries it keeps,
        the newest earlier block first, each block in its own order.

        Args:
            block: entries in the new block (``G·V``).

        Raises:
            ValueError: the block holds more entries than the memory.
        """
        self._check_block(block)
        offsets = torch.arange(self.capacity - block, device=self.ids.device)
        slots = (self.pointer - block * (offsets // block + 1) + offsets % block) % self.capacity
        return self.embeddings[slots], self.ids[slots], self.views[slots]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, ids: Tensor, views: Tensor) -> None:
        """Writes a block of view entries that is already gathered over processes.

        Args:
            embeddings: ``n×D`` momentum embeddings.
            ids: ``n`` sample ids.
            views: ``n`` view indices.

        Raises:
            ValueError: the block holds more entries than the memory.
        """
        count = embeddings.shape[0]
        if self.capacity == 0:
            return
        self._check_block(count)
        slots = (self.pointer + torch.arange(count, device=self.ids.device)) % self.capacity
        self.embeddings.index_copy_(0, slots, embeddings.detach().to(self.embeddings.dtype))
        self.ids.index_copy_(0, slots, ids.to(self.ids.dtype))
        self.views.index_copy_(0, slots, views.to(self.views.dtype))
        self.pointer.copy_((self.pointer + count) % self.capacity)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.capacity))


@dataclass(frozen=True)
class ViewLayout:
    """Which columns each anchor row treats how.

    Attributes:
        own: ``R`` column index of each anchor's own view (``-1`` for an anchor that
            is no column, such as a small crop).
        positive: ``R×N`` the other views of the row's image in the current block.
        mask: ``R×N`` excluded columns: the anchor's own column, empty memory slots,
            and memory entries of the row's own image.
    """

    own: Tensor
    positive: Tensor
    mask: Tensor


@dataclass(frozen=True)
class ViewColumns:
    """Columns of a multi-view step: ``[current block | memory]`` of view entries.

    Attributes:
        embeddings: ``N×D`` embeddings (momentum; online ones keep their gradient).
        ids: ``N`` sample ids (``-1`` = empty memory slot).
        views: ``N`` view indices (``-1`` = empty).
        block_size: columns of the current block, ``G·V`` (G images of the global batch).
        num_views: V, global views per image.
        first_image: global index of this process's first image.
    """

    embeddings: Tensor
    ids: Tensor
    views: Tensor
    block_size: int
    num_views: int
    first_image: int

    @classmethod
    def build(cls, embeddings: Tensor, ids: Tensor, memory: ViewMemory | None = None,
              memory_counts_block: bool = True, gradient: bool = False) -> "ViewColumns":
        """Gathers the block of every process and appends the memory.

        Args:
            embeddings: ``B×V×D`` embeddings of this process's global views (momentum ones,
                or online ones with ``gradient``).
            ids: ``B`` sample ids.
            memory: earlier blocks' view entries, or ``None``.
            memory_counts_block: ``True`` (published): the memory's capacity counts all
                columns, the block included, ``[block | memory[:−G·V]]``
                (:meth:`ViewMemory.behind_block`); ``False`` (this library's earlier
                layout): the block in front of every memory slot.
            gradient: keep the gradient through the block (gathered with gradient).
        """
        batch, num_views, dim = embeddings.shape
        if gradient:
            block = full_precision(gather_with_grad(embeddings.contiguous())).reshape(-1, dim)
        else:
            block = full_precision(gather_no_grad(embeddings.detach().contiguous())).reshape(-1, dim)
        block_ids = gather_no_grad(ids).repeat_interleave(num_views)
        block_views = torch.arange(num_views, device=ids.device).repeat(block.shape[0] // num_views)
        parts = [(block, block_ids, block_views)]
        if memory is not None and memory.capacity > 0:
            older, older_ids, older_views = (memory.behind_block(block.shape[0]) if memory_counts_block
                                             else (memory.embeddings, memory.ids, memory.views))
            parts.append((older.to(block.dtype), older_ids, older_views))
        embeddings, column_ids, views = (torch.cat(column) for column in zip(*parts))
        return cls(embeddings, column_ids, views, block.shape[0], num_views, rank() * batch)

    @property
    def num_columns(self) -> int:
        """N, the number of columns."""
        return self.embeddings.shape[0]

    def block_entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The current block's embeddings (detached), ids and view indices (to enqueue)."""
        size = self.block_size
        return self.embeddings[:size].detach(), self.ids[:size], self.views[:size]

    def own_columns(self, batch: int) -> Tensor:
        """``B·V`` own column of each local anchor ``(i, a)``, row ``i·V + a``."""
        rows = torch.arange(batch * self.num_views, device=self.ids.device)
        return rows + self.first_image * self.num_views

    def scores(self, x: Tensor) -> Tensor:
        """``x_r · c_n`` for every row and column (``R×N``), in float32 at least and
        outside autocast (:func:`~softcontrast.components.precision.similarities`)."""
        return similarities(x, self.embeddings)

    def layout(self, row_ids: Tensor, own: Tensor) -> ViewLayout:
        """Positives and mask of anchor rows.

        Args:
            row_ids: ``R`` sample id of each anchor's image.
            own: ``R`` the anchor's own column (``-1``: the anchor is no column).
        """
        columns = torch.arange(self.num_columns, device=row_ids.device)
        same_image = self.ids[None, :] == row_ids[:, None]
        in_block = (columns < self.block_size)[None, :]
        is_own = columns[None, :] == own[:, None]
        empty = (self.ids == EMPTY_ID)[None, :]
        positive = same_image & in_block & ~is_own
        mask = is_own | empty | (same_image & ~in_block)
        return ViewLayout(own, positive, mask)


class SmallCrops(nn.Module):
    """Multi-crop: ``N`` small crops per image, extra anchors that are never columns.

    They pass only through the online encoder (in one call, as they share a size).

    Args:
        count: N, small crops per image (>= 1).
        recipe: the recipe of every small crop (its ``size`` is the crop side).
    """

    def __init__(self, count: int, recipe: ViewRecipe):
        super().__init__()
        if count < 1:
            raise ValueError(f"small crops: count must be >= 1, got {count}")
        self.count = count
        self.augment = MultiViewAugment([recipe] * count)

    def forward(self, encode: Encode, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``N×B×D`` online embeddings of ``N`` small crops of ``images``, drawn from ``generator``
        (default: the global generator)."""
        return embed_views(encode, self.augment(images, generator))
