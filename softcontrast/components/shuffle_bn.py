"""Shuffle-BN and split-BN for the momentum (key) encoder (DESIGN "Distributed").

A key encoder with batch norm normalises each key with statistics of the batch it
was encoded in. When the query and its positive key come from the same batch, those
statistics leak which samples belong together, and the encoder can lower the loss
through them instead of learning (MoCo, He et al. 2020). MoCo's repair: permute the
keys' batch before encoding and un-permute the keys after, so that a key's batch-norm
group is unrelated to the query batch.

:class:`ShuffleBatchNorm` implements both forms as one rule over the global batch of
``W`` processes (``W·B`` rows) and ``G`` groups in total:

1. draw one permutation ``π`` of the ``W·B`` rows that every process agrees on, fresh
   at every step, from a generator all processes share (no communication);
2. process ``r`` takes rows ``π[r·B : (r+1)·B]`` of the gathered views (its shard)
   and encodes it in ``G / W`` groups (``torch.tensor_split``), each in its own
   forward pass, so each group is normalised with its own statistics;
3. the encoded shards are gathered and un-permuted; each process keeps its own rows.

With one process this is **split-BN** (``G`` simulated devices, as in the official
SCE and MoCo CIFAR code); with ``G = W`` it is MoCo's **shuffle-BN** across devices.
The math core, :func:`grouped_forward`, is a pure function of the views and the
permutation.

Running statistics: each group's forward pass updates the encoder's running
batch-norm statistics once, as batch norm does, so one step moves them ``G / W``
times. The momentum encoder always runs in training mode and its running statistics
are never used by the methods; they matter only to someone who evaluates the
momentum encoder itself.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from softcontrast.components.distributed import gather_no_grad, rank, world_size

Encode = Callable[[Tensor], Tensor]


def grouped_forward(encode: Encode, views: Tensor, permutation: Tensor, groups: int) -> Tensor:
    """``encode`` applied to each of ``groups`` groups of ``views[permutation]`` alone.

    Args:
        encode: the encoder (batch norm in training mode normalises each call's batch).
        views: ``N×...`` inputs.
        permutation: ``N`` indices, a permutation of ``range(N)``.
        groups: number of groups (``torch.tensor_split`` of the permuted rows).

    Returns:
        The ``N`` encodings in the order of ``views``: row ``i`` is the encoding of
        ``views[i]`` within its group.

    Raises:
        ValueError: ``groups < 1`` or more groups than rows.
    """
    return unshuffle(encode_in_groups(encode, views[permutation], groups), permutation)


def encode_in_groups(encode: Encode, rows: Tensor, groups: int) -> Tensor:
    """``encode`` applied to each of ``groups`` consecutive groups of ``rows`` alone, concatenated.

    Raises:
        ValueError: ``groups < 1`` or more groups than rows.
    """
    if groups < 1 or groups > rows.shape[0]:
        raise ValueError(
            f"split-BN needs 1 <= groups <= rows, got {groups} groups for {rows.shape[0]} rows: "
            "lower --split-bn-groups or raise the batch size"
        )
    return torch.cat([encode(group) for group in torch.tensor_split(rows, groups)])


def unshuffle(shuffled: Tensor, permutation: Tensor) -> Tensor:
    """The inverse of ``x[permutation]``: returns ``x`` from ``shuffled = x[permutation]``."""
    restored = torch.empty_like(shuffled)
    restored[permutation] = shuffled
    return restored


def shared_permutation(batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of the global batch (``world_size()·batch`` rows), drawn from ``generator``.

    Every process holds the same permutation, without communication, when
    ``generator`` is a stream that all processes hold identically
    (:attr:`~softcontrast.components.streams.RandomStreams.shared`); each call draws
    a fresh one.

    Args:
        batch: the local batch size B (equal on all processes).
        device: where the permutation lives (``generator``'s device).
        generator: a generator shared by all processes; in one process it may be
            omitted (the global generator draws).

    Raises:
        ValueError: several processes and no generator.
    """
    world = world_size()
    if generator is None and world > 1:
        raise ValueError(
            f"a permutation of the global batch of {world} processes needs a generator that every process "
            "holds identically: pass one (e.g. a method's streams.shared)"
        )
    return torch.rand(world * batch, device=device, generator=generator).argsort(stable=True)


class ShuffleBatchNorm(nn.Module):
    """Encodes keys with shuffled (several processes) or split (one process) batch norm.

    Args:
        groups: ``G``, batch-norm groups of the global batch (default 8, the official
            SCE CIFAR setting). With ``W`` processes, ``G`` must be a multiple of ``W``;
            ``G = W`` is MoCo's shuffle-BN, ``G = 1`` on one process is plain batch norm.

    Raises:
        ValueError: ``groups < 1``.
    """

    def __init__(self, groups: int = 8):
        super().__init__()
        if groups < 1:
            raise ValueError(f"split-BN groups must be >= 1, got {groups}")
        self.groups = groups

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def groups_per_process(self) -> int:
        """``G / W``: groups each process encodes.

        Raises:
            ValueError: ``G`` is not a multiple of the number of processes.
        """
        world = world_size()
        if self.groups % world:
            raise ValueError(
                f"split-BN groups ({self.groups}) must be a multiple of the number of processes ({world}): "
                f"set --split-bn-groups to {world * max(1, round(self.groups / world))}"
            )
        return self.groups // world

    @torch.no_grad()
    def forward(self, encode: Encode, views: Tensor, permutation: Tensor | None = None) -> Tensor:
        """The keys of this process's ``views``, each encoded within its shuffled group.

        Args:
            encode: the momentum encoder.
            views: this process's ``B×...`` key views (``B`` equal on all processes).
            permutation: a permutation of the global ``W·B`` rows shared by all
                processes (default: :func:`shared_permutation` from the global
                generator, one process only).

        Returns:
            ``B×D`` keys in the order of ``views``.
        """
        per_process = self.groups_per_process()
        batch = views.shape[0]
        if permutation is None:
            permutation = shared_permutation(batch, views.device)
        if world_size() == 1:
            return grouped_forward(encode, views, permutation, per_process)
        start = rank() * batch
        shard = gather_no_grad(views)[permutation[start : start + batch]]
        local = encode_in_groups(encode, shard, per_process)
        return unshuffle(gather_no_grad(local), permutation)[start : start + batch]
