"""Hyperparameters shared by several methods, each written once.

A method's config inherits the groups it uses; a paper that sets another default
redefines that one field in its own config.
"""

from __future__ import annotations

from dataclasses import dataclass

from softcontrast.settings import setting


@dataclass
class MomentumSettings:
    """The momentum (EMA) encoder g."""

    momentum: float = setting(0.99, "EMA momentum of the momentum encoder")
    final_momentum: float | None = setting(
        None, "momentum at the end of training (cosine schedule from momentum); none keeps it constant")


@dataclass
class QueueSettings(MomentumSettings):
    """A two-view step against a momentum queue."""

    queue_size: int = setting(4096, "K, momentum keys in the queue")
    symmetric: bool = setting(False, "also contrast the key view's query against the query view's key; average both")


@dataclass
class DetectionSettings:
    """False-negative detection (FNC)."""

    top_k: int = setting(10, "at most this many detected false negatives per image")
    threshold: float = setting(0.7, "cosine a detected false negative must exceed, in [-1, 1]")
    strategy: str = setting("attract", "attract (detected ones become positives) or eliminate (masked out)",
                            choices=("attract", "eliminate"))
    aggregation: str = setting("max", "max or mean of an image's views' cosines to a column",
                               choices=("max", "mean"))
    search_backend: str = setting("torch", "neighbour search: torch (exact, on the device), faiss-* or auto",
                                  choices=("torch", "faiss-flat", "faiss-ivf", "auto"))
