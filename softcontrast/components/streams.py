"""The random number generators of a training step (DESIGN "Distributed").

Two streams, each a ``torch.Generator`` on the training device:

* ``local``: this process's own stream, seeded from the seed **and the process
  index**, for everything that must differ between processes: the augmentations
  (crops, flips, jitter, blur of each process's images).
* ``shared``: seeded from the seed alone, so every process holds the same stream;
  it draws what all processes must agree on (the shuffle-BN permutation and the
  mixup partners of the global batch) without any communication. Every process
  must draw the same amounts from it, in the same order.

Both are part of every checkpoint (each process saves its own), so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from softcontrast.components.distributed import rank


def stream_seed(seed: int, stream: str, process_index: int = 0) -> int:
    """A 64-bit seed: a hash of the three arguments, so that neighbouring seeds and
    process indices give unrelated generators.

    Args:
        seed: the run's seed.
        stream: the stream's name (``local`` or ``shared``).
        process_index: the process (0 for a stream all processes share).
    """
    digest = hashlib.sha256(f"softcontrast:{stream}:{seed}:{process_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _resolved(device: torch.device | str) -> torch.device:
    """``device`` as tensors on it report theirs (``cpu:0`` is ``cpu``; ``cuda`` the current GPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class RandomStreams:
    """A per-process and a shared random stream on one device.

    Args:
        seed: seed of both streams (default: ``torch.initial_seed()``, the seed of
            the global generator, so ``torch.manual_seed`` before building a method
            also fixes its streams).
        process_index: this process's index (default: its rank, 0 without a
            process group); only the ``local`` stream depends on it.
        device: where the generators live (the device of the images they serve).

    Attributes:
        seed: the seed both streams started from.
        process_index: the process the ``local`` stream belongs to.
        device: where the generators live.
        local: this process's generator (augmentations).
        shared: the generator every process holds identically (permutations of the
            global batch).
    """

    def __init__(self, seed: int | None = None, process_index: int | None = None, device: torch.device | str = "cpu"):
        self.reset(seed, process_index, device)

    def reset(self, seed: int | None = None, process_index: int | None = None,
              device: torch.device | str = "cpu") -> None:
        """Restarts both streams from ``seed`` for ``process_index`` on ``device`` (defaults as in the constructor)."""
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.process_index = rank() if process_index is None else int(process_index)
        self.device = _resolved(device)
        self.local = torch.Generator(self.device).manual_seed(stream_seed(self.seed, "local", self.process_index))
        self.shared = torch.Generator(self.device).manual_seed(stream_seed(self.seed, "shared"))

    def at(self, device: torch.device | str) -> RandomStreams:
        """These streams, on ``device``: restarted there from their seeds if they live on another device."""
        if _resolved(device) != self.device:
            self.reset(self.seed, self.process_index, device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Both generators' states (CPU ``uint8`` tensors)."""
        return {"local": self.local.get_state(), "shared": self.shared.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restores both generators from :meth:`state_dict` of streams on the same kind of device."""
        self.local.set_state(state["local"])
        self.shared.set_state(state["shared"])
