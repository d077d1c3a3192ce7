"""Hyperparameters shared by several methods, each written once.

A method's config inherits the groups it uses; a paper that sets another default
redefines that one field in its own config.
"""

from __future__ import annotations

from dataclasses import dataclass

from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.neighbors import BACKENDS
from softcontrast.components.targets import FalseNegativeCancellation
from softcontrast.components.targets.false_negatives import AGGREGATIONS, STRATEGIES
from softcontrast.methods.base import SYMMETRIC, TWO_VIEW, Pass
from softcontrast.settings import SettingError, setting


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

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise SettingError("queue_size", f"queue_size must be >= 1 key, got {self.queue_size}")

    @property
    def passes(self) -> tuple[Pass, ...]:
        """The query view against the key view, and with ``symmetric`` also the reverse."""
        return SYMMETRIC if self.symmetric else TWO_VIEW


@dataclass
class DetectionSettings:
    """False-negative detection (FNC)."""

    top_k: int = setting(10, "at most this many detected false negatives per image")
    threshold: float = setting(0.7, "cosine a detected false negative must exceed, in [-1, 1]")
    strategy: str = setting("attract", "attract (detected ones become positives) or eliminate (masked out)",
                            choices=STRATEGIES)
    aggregation: str = setting("max", "max or mean of an image's views' cosines to a column",
                               choices=AGGREGATIONS)
    search_backend: str = setting("torch", "neighbour search: torch (exact, on the device), faiss-* or auto",
                                  choices=BACKENDS)

    def detector(self, bank: EmbeddingBank | None = None) -> FalseNegativeCancellation:
        """The false-negative detector and target builder of these settings (searching ``bank`` if given)."""
        return FalseNegativeCancellation(self.top_k, self.threshold, self.strategy, self.aggregation,
                                         self.search_backend, bank)
