"""Mixers: mix the inputs of a batch and mix their targets the same way (DESIGN step 6).

Momentum mixup (MM, Zhou et al., NeurIPS 2021, eqs. 8–9) makes a virtual query from
a query view and *another* sample's key view, and gives it the mixed target::

    θ ~ Beta(κ, κ),  π a random permutation of the (global) batch
    x̃_i      = θ_i·x_i^query + (1 − θ_i)·x_π(i)^key
    target̃_i = θ_i·target_i  + (1 − θ_i)·target_π(i)

over the columns ``[gathered batch keys | Q]`` (:class:`LogitColumns` with
``in_batch=True``), where every row's target lives on the same columns. Plain input
mixup mixes query views with query views instead.

A mixer is three calls any method can use::

    params = mixer.sample(batch, device)
    virtual = mixer.mix_inputs(query_views, key_views, params)
    targets = mixer.mix_targets(targets, params)

Details the paper leaves open are parameters:

* ``per_sample``: one ``θ`` for the whole batch (default, the paper's text) or one
  ``θ_i`` per sample.
* ``across_processes``: ``π`` permutes the global batch of all processes (default;
  then several processes compute exactly what one process computes on the
  concatenated batch) or only each process's local batch (no pixel gather).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from softcontrast.components.distributed import gather_no_grad, gather_with_grad, rank
from softcontrast.components.targets.base import Targets


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
    batch: int, kappa: float, device: torch.device | str, per_sample: bool = False, across_processes: bool = True
) -> MixParams:
    """Draws ``θ ~ Beta(κ, κ)`` and a random permutation ``π``.

    Across processes, every process draws uniform noise for its rows; ``π`` is the
    stable argsort of the gathered noise, so all processes hold the same global
    permutation without a broadcast. A per-batch ``θ`` is the first process's.

    Args:
        batch: local batch size B.
        kappa: ``κ > 0`` of the Beta distribution.
        device: device of the returned tensors.
        per_sample: one ``θ_i`` per row, or one ``θ`` for the batch (default).
        across_processes: permute the global batch, or each local batch.

    Raises:
        ValueError: ``κ <= 0`` or ``batch < 1``.
    """
    if not kappa > 0:
        raise ValueError(f"mixup kappa (--mixup-kappa) must be > 0, got {kappa}")
    if batch < 1:
        raise ValueError(f"mixup batch must be >= 1, got {batch}")
    concentration = torch.full((), float(kappa), device=device)  # a fill, not a copy from the host
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)  # checks read the host
    theta = beta.sample((batch if per_sample else 1,))
    if not across_processes:
        return MixParams(theta.expand(batch), torch.randperm(batch, device=device), False)
    if not per_sample:
        theta = gather_no_grad(theta)[:1]
    order = gather_no_grad(torch.rand(batch, device=device)).argsort(stable=True)
    partner = order[rank() * batch : (rank() + 1) * batch]
    return MixParams(theta.expand(batch), partner, True)


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

    def sample(self, batch: int, device: torch.device | str) -> MixParams:
        """Draws the mixing parameters of a local batch of ``batch`` rows."""
        ...

    def mix_inputs(self, queries: Tensor, keys: Tensor, params: MixParams) -> Tensor:
        """The virtual query views."""
        ...

    def mix_targets(self, targets: Targets, params: MixParams) -> Targets:
        """The targets of the virtual queries."""
        ...


@dataclass(frozen=True)
class _BetaMixup:
    kappa: float = 2.0
    per_sample: bool = False
    across_processes: bool = True

    def __post_init__(self) -> None:
        if not self.kappa > 0:
            raise ValueError(f"mixup kappa (--mixup-kappa) must be > 0, got {self.kappa}")

    def sample(self, batch: int, device: torch.device | str) -> MixParams:
        """Draws ``θ ~ Beta(κ, κ)`` and ``π`` (see :func:`sample_mix_params`)."""
        return sample_mix_params(batch, self.kappa, device, self.per_sample, self.across_processes)

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
        kappa: ``κ > 0`` of ``θ ~ Beta(κ, κ)`` (default 2, the paper's CIFAR setting).
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
        kappa: ``κ > 0`` of ``θ ~ Beta(κ, κ)`` (default 2, the paper's CIFAR setting).
        per_sample: one ``θ`` per batch (default, the paper's text) or one per sample.
        across_processes: permute the global batch (default) or each local batch.

    Raises:
        ValueError: ``κ <= 0``.
    """

    def mix_inputs(self, queries: Tensor, keys: Tensor, params: MixParams) -> Tensor:
        """``θ_i·queries_i + (1 − θ_i)·queries_π(i)`` (``keys`` is unused)."""
        return mix_with_partners(queries, queries, params)
