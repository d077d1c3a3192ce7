"""Mixers: mix the inputs of a batch and mix their targets the same way (DESIGN step 6).

Momentum mixup (MM, Zhou et al., NeurIPS 2021, eqs. 8–9) makes a virtual query from
a query view and *another* sample's key view, and gives it the mixed target::

    θ ~ Beta(κ, κ),  π a random permutation of the (global) batch
    x̃_i      = θ_i·x_i^query + (1 − θ_i)·x_π(i)^key
    target̃_i = θ_i·target_i  + (1 − θ_i)·target_π(i)

over the columns ``[gathered batch keys | Q]`` (:class:`~softcontrast.components.columns.Columns` with
``in_batch=True``), where every row's target lives on the same columns. Plain input
mixup mixes query views with query views instead.

A mixer is three calls any method can use::

    params = mixer.sample(batch, device, streams)
    virtual = mixer.mix_inputs(query_views, key_views, params)
    targets = mixer.mix_targets(targets, params)

Details the paper leaves open are parameters:

* ``per_sample``: one ``θ`` for the whole batch (default, the paper's text) or one
  ``θ_i`` per sample.
* ``across_processes``: ``π`` permutes the global batch of all processes (default;
  then several processes compute exactly what one process computes on the
  concatenated batch) or only each process's local batch (no pixel gather).

Random draws: across processes, ``θ`` and ``π`` are drawn for the whole global batch
from a generator that every process holds identically
(:attr:`~softcontrast.components.streams.RandomStreams.shared`), and each process
keeps its rows, so all agree without communication; a local mixup draws from the
process's own stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from softcontrast.components.distributed import gather_no_grad, gather_with_grad, rank
from softcontrast.components.shuffle_bn import shared_permutation
from softcontrast.components.streams import RandomStreams
from softcontrast.components.targets.base import Targets
from softcontrast.settings import SettingError


@dataclass(frozen=True)
class MixParams:
    """The random draw of one mixing step.

    Attributes:
        theta: ``B`` weights ``θ_i`` in ``[0, 1]`` of each local row's own sample.
        partner: ``B`` partner indices ``π(i)``: rows of the gathered batch of all
            processes when ``across_processes``, else rows of the local batch.
        across_processes: which batch ``partner`` indexes.
    """

    theta: Tensor
    partner: Tensor
    across_processes: bool = False


def sample_mix_params(
    batch: int,
    kappa: float,
    device: torch.device | str,
    per_sample: bool = False,
    across_processes: bool = True,
    generator: torch.Generator | None = None,
) -> MixParams:
    """Draws ``θ ~ Beta(κ, κ)`` and a random permutation ``π``.

    Across processes, ``θ`` and ``π`` are drawn for the global batch from
    ``generator`` and each process keeps its rows: with a generator that every
    process holds identically, all hold the same draw without communication (and
    exactly what one process draws for the concatenated batch).

    Args:
        batch: local batch size B.
        kappa: ``κ > 0`` of the Beta distribution.
        device: device of the returned tensors (and of ``generator``).
        per_sample: one ``θ_i`` per row, or one ``θ`` for the batch (default).
        across_processes: permute the global batch, or each local batch.
        generator: draws ``θ`` and ``π``; across several processes it must be
            shared by all of them; default: the global generator (one process).

    Raises:
        ValueError: ``κ <= 0``, ``batch < 1``, or a global draw of several
            processes without a generator.
    """
    if not kappa > 0:
        raise SettingError("mixup_kappa", f"mixup kappa must be > 0, got {kappa}")
    if batch < 1:
        raise ValueError(f"mixup batch must be >= 1, got {batch}")
    if not across_processes:
        theta = beta_sample(kappa, batch if per_sample else 1, device, generator)
        return MixParams(theta.expand(batch), torch.randperm(batch, device=device, generator=generator), False)
    order = shared_permutation(batch, device, generator)
    own = slice(rank() * batch, (rank() + 1) * batch)
    theta = beta_sample(kappa, order.shape[0] if per_sample else 1, device, generator)
    return MixParams((theta[own] if per_sample else theta).expand(batch), order[own], True)


def beta_sample(
    kappa: float, count: int, device: torch.device | str, generator: torch.Generator | None = None
) -> Tensor:
    """``count`` draws of ``Beta(κ, κ)`` from ``generator``.

    ``torch.distributions.Beta`` takes no generator; this samples as it does: the
    first coordinate of a ``Dirichlet(κ, κ)`` draw.

    Args:
        kappa: ``κ > 0``.
        count: number of draws.
        device: device of the draws (and of ``generator``).
        generator: default: the global generator.
    """
    return torch._sample_dirichlet(torch.full((count, 2), float(kappa), device=device), generator)[:, 0]


def partner_rows(x: Tensor, params: MixParams) -> Tensor:
    """Row ``π(i)`` of ``x`` for every local row ``i`` (gathered across processes if needed;
    the gather keeps gradients when ``x`` has them)."""
    if params.across_processes:
        source = gather_with_grad(x) if x.requires_grad else gather_no_grad(x)
    else:
        source = x
    return source[params.partner]


def mix(own: Tensor, partners: Tensor, theta: Tensor) -> Tensor:
    """``θ_i·own_i + (1 − θ_i)·partners_i``, with ``θ`` broadcast over trailing dims."""
    theta = theta.to(own.dtype).reshape(-1, *([1] * (own.dim() - 1)))
    return theta * own + (1 - theta) * partners


def mix_with_partners(own: Tensor, source: Tensor, params: MixParams) -> Tensor:
    """``θ_i·own_i + (1 − θ_i)·source_π(i)``."""
    return mix(own, partner_rows(source, params), params.theta)


def mix_targets(targets: Targets, params: MixParams) -> Targets:
    """``target̃_i = θ_i·target_i + (1 − θ_i)·target_π(i)`` over shared columns.

    A column is excluded from a mixed row when a source row with weight excludes
    it (``θ_i > 0`` for the row, ``θ_i < 1`` for its partner) and the mixed target
    there is zero. So older keys of either source image are never negatives (as
    DESIGN requires of every row), every column that carries target mass stays in
    the softmax, the mixed target is exactly the convex combination, and ``θ = 1``
    changes nothing.

    Args:
        targets: rows over the same columns for every row and process (the
            ``in_batch`` layout).
        params: the mixing draw.
    """
    theta = params.theta
    target = mix(targets.target, partner_rows(targets.target, params), theta)
    partner_mask = partner_rows(targets.mask.to(torch.uint8), params).bool()
    own_weighted, partner_weighted = (theta > 0)[:, None], (theta < 1)[:, None]
    mask = ((targets.mask & own_weighted) | (partner_mask & partner_weighted)) & (target == 0)
    return Targets(target, mask)


class Mixer(Protocol):
    """Anything that mixes a batch's views and targets alike."""

    def sample(self, batch: int, device: torch.device | str, streams: RandomStreams | None = None) -> MixParams:
        """Draws the mixing parameters of a local batch of ``batch`` rows from ``streams``."""
        ...

    def mix_inputs(self, queries: Tensor, keys: Tensor, params: MixParams) -> Tensor:
        """The virtual query views."""
        ...

    def mix_targets(self, targets: Targets, params: MixParams) -> Targets:
        """The targets of the virtual queries."""
        ...


@dataclass(frozen=True)
class _BetaMixup:
    kappa: float
    per_sample: bool = False
    across_processes: bool = True

    def __post_init__(self) -> None:
        if not self.kappa > 0:
            raise SettingError("mixup_kappa", f"mixup kappa must be > 0, got {self.kappa}")

    def sample(self, batch: int, device: torch.device | str, streams: RandomStreams | None = None) -> MixParams:
        """Draws ``θ ~ Beta(κ, κ)`` and ``π`` (see :func:`sample_mix_params`) from the shared
        stream of ``streams`` across processes, else from its local one (default: the global
        generator, one process only)."""
        generator = None
        if streams is not None:
            streams = streams.at(device)
            generator = streams.shared if self.across_processes else streams.local
        return sample_mix_params(batch, self.kappa, device, self.per_sample, self.across_processes, generator)

    def mix_targets(self, targets: Targets, params: MixParams) -> Targets:
        """``θ_i·target_i + (1 − θ_i)·target_π(i)`` (see :func:`mix_targets`)."""
        return mix_targets(targets, params)


@dataclass(frozen=True)
class MomentumMixup(_BetaMixup):
    """Momentum mixup: ``x̃_i = θ_i·x_i^query + (1 − θ_i)·x_π(i)^key``, targets alike.

    Mixing with the *key* view of the partner (rather than its query view) is what
    the paper calls momentum mixup: the partner's component is the one whose
    momentum embedding sits in the columns.

    Args:
        kappa: ``κ > 0`` of ``θ ~ Beta(κ, κ)`` (SANE's CIFAR setting: 2).
        per_sample: one ``θ`` per batch (default, the paper's text) or one per sample.
        across_processes: permute the global batch (default) or each local batch.

    Raises:
        ValueError: ``κ <= 0``.
    """

    def mix_inputs(self, queries: Tensor, keys: Tensor, params: MixParams) -> Tensor:
        """``θ_i·queries_i + (1 − θ_i)·keys_π(i)`` in pixel space."""
        return mix_with_partners(queries, keys, params)


@dataclass(frozen=True)
class InputMixup(_BetaMixup):
    """Plain input mixup: ``x̃_i = θ_i·x_i^query + (1 − θ_i)·x_π(i)^query``, targets alike.

    Args:
        kappa: ``κ > 0`` of ``θ ~ Beta(κ, κ)`` (SANE's CIFAR setting: 2).
        per_sample: one ``θ`` per batch (default, the paper's text) or one per sample.
        across_processes: permute the global batch (default) or each local batch.

    Raises:
        ValueError: ``κ <= 0``.
    """

    def mix_inputs(self, queries: Tensor, keys: Tensor, params: MixParams) -> Tensor:
        """``θ_i·queries_i + (1 − θ_i)·queries_π(i)`` (``keys`` is unused)."""
        return mix_with_partners(queries, queries, params)
