"""Multi-view steps: V views per image, any of them anchors (DESIGN, "Multi-view steps").

* :class:`MultiViewAugment` makes V views of a batch, each with its own recipe and
  size; :func:`embed_views` runs them through an encoder (views of one size in one
  pass) and returns ``V×B×D``.
* :class:`SmallCrops` are extra anchors that are never columns (multi-crop): they
  pass only through the online encoder.

The columns and rows of a multi-view step are :class:`~softcontrast.components.columns.Columns`
and :class:`~softcontrast.components.columns.Rows`, the same as for two views.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from softcontrast.components.augment import BatchAugment, ViewRecipe

Encode = Callable[[Tensor], Tensor]


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

    def forward(self, images: "Tensor | Sequence[Tensor]", generator: torch.Generator | None = None) -> list[Tensor]:
        """``V`` normalised float views of ``images`` (``B×3×H×W``), in recipe order, drawn
        from ``generator`` (default: the global generator).

        ``images`` may instead be ``V`` batches cropped in loader workers, one per recipe
        (``B×3×size×size``): each then gets the rest of its recipe.
        """
        if isinstance(images, Tensor):
            return [augment(images, generator) for augment in self.augments]
        if len(images) != len(self.augments):
            raise ValueError(f"{len(images)} cropped batches for {len(self.augments)} views")
        return [augment(crops, generator, cropped=True) for augment, crops in zip(self.augments, images)]


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


class SmallCrops(nn.Module):
    """Multi-crop: ``N`` small crops per image, extra anchors that are never columns.

    They pass only through the online encoder: crops of one size in one call, each
    other size in a call of its own (:func:`embed_views`; give crops of one size next
    to each other). ``SmallCrops(4, recipe)`` makes four crops of one recipe;
    :meth:`of` takes a recipe per crop (crops of several sizes, as SCE's official
    multi-crop).

    Args:
        count: N, small crops per image (>= 1).
        recipe: the recipe of every small crop (its ``size`` is the crop side).
    """

    def __init__(self, count: int, recipe: ViewRecipe):
        super().__init__()
        if count < 1:
            raise ValueError(f"small crops: count must be >= 1, got {count}")
        self.augment = MultiViewAugment([recipe] * count)

    @classmethod
    def of(cls, recipes: Sequence[ViewRecipe]) -> "SmallCrops":
        """Small crops with a recipe (and size) each, in this order.

        Raises:
            ValueError: no recipe.
        """
        if not recipes:
            raise ValueError("small crops: give at least one recipe")
        crops = cls(1, recipes[0])
        crops.augment = MultiViewAugment(list(recipes))
        return crops

    @property
    def recipes(self) -> list[ViewRecipe]:
        """The recipe of every small crop, in order."""
        return self.augment.recipes

    @property
    def count(self) -> int:
        """N, small crops per image."""
        return len(self.augment)

    @property
    def recipe(self) -> ViewRecipe:
        """The first small crop's recipe (every crop's when they share one)."""
        return self.recipes[0]

    @property
    def sizes(self) -> list[int]:
        """The side of every small crop, in order."""
        return [recipe.size for recipe in self.recipes]

    def forward(self, encode: Encode, images: "Tensor | Sequence[Tensor]",
                generator: torch.Generator | None = None) -> Tensor:
        """``N×B×D`` online embeddings of ``N`` small crops of ``images``, drawn from ``generator``
        (default: the global generator); or of ``N`` batches cropped in loader workers."""
        return embed_views(encode, self.augment(images, generator))
