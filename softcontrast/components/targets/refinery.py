"""SANE's self-labeling refinery (Zhou et al., NeurIPS 2021, eqs. 4–5 and Algorithm 1).

The one-hot contrastive label ``y_i`` calls every other column a negative, including
columns of the same class: it is a *noisy* label. SANE refines it with the momentum
key's own view of the columns ``B̄ = [gathered batch keys | Q]``::

    p_i = softmax over the unmasked columns of k_i·B̄ᵀ/(τ·τ′)        (positive included)
    q_i = the same with the positive column removed (q_ii = 0), renormalised
    z   = 1 + µ_t·max_k p_ik + µ_t·max_k q_ik
    α_i = µ_t·max_k p_ik / z,   β_i = µ_t·max_k q_ik / z
    ȳ_i = (1 − α_i − β_i)·y_i + α_i·p_i + β_i·q_i

with the confidence ``µ_t = m2 − (m2 − m1)·(cos(πt/T) + 1)/2`` rising from ``m1`` to
``m2`` over the ``T`` steps of training. The label is recomputed every step from the
current momentum encoder and carries no gradient. There is no truncation of ``p`` or
``q``: every unmasked column keeps its mass.

The math lives in pure functions (:func:`key_distributions`,
:func:`confidence_weights`, :func:`refined_label`, :func:`confidence_schedule`);
:class:`SelfLabelingRefinery` holds the hyperparameters and ``µ_t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.precision import full_precision
from softcontrast.components.targets.base import Targets
from softcontrast.settings import SettingError


def key_distributions(
    key_scores: Tensor, positive_one_hot: Tensor, mask: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """The key's distributions ``p_i`` and ``q_i`` over the columns (eq. 4).

    Args:
        key_scores: ``B×N`` ``k_i·B̄_j``.
        positive_one_hot: ``B×N`` ``y_i``, one-hot on the positive column.
        mask: ``B×N`` excluded columns (never the positive).
        temperature: ``τ·τ′ > 0``.

    Returns:
        ``(p, q)``, both ``B×N`` and zero on masked columns. ``p`` rows sum to 1;
        ``q`` is zero at the positive and its rows sum to 1, or are all zero when
        the row has no unmasked column besides the positive.
    """
    # All-masked rows give zeros, not NaN.
    scores = full_precision(key_scores) / temperature
    p = scores.masked_fill(mask, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    q = scores.masked_fill(mask | positive_one_hot.bool(), float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    return p, q


def confidence_weights(p: Tensor, q: Tensor, mu: float | Tensor) -> tuple[Tensor, Tensor]:
    """The per-row weights ``α_i`` and ``β_i`` of ``p_i`` and ``q_i`` (eq. 5).

    ``z = 1 + µ·max_k p_ik + µ·max_k q_ik``, ``α = µ·max_k p_ik / z``,
    ``β = µ·max_k q_ik / z``. For ``µ >= 0`` both are ``>= 0`` and ``α + β < 1``.

    Args:
        p: ``B×N`` rows of ``p``.
        q: ``B×N`` rows of ``q``.
        mu: confidence ``µ >= 0`` (a number or a scalar tensor).

    Returns:
        ``(α, β)``, each ``B×1``.
    """
    confident_p = mu * p.amax(dim=-1, keepdim=True)
    confident_q = mu * q.amax(dim=-1, keepdim=True)
    z = 1 + confident_p + confident_q
    return confident_p / z, confident_q / z


def refined_label(y: Tensor, p: Tensor, q: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """The refined label ``ȳ = (1 − α − β)·y + α·p + β·q`` (eq. 5).

    Args:
        y: ``B×N`` one-hot labels.
        p: ``B×N`` distributions ``p``.
        q: ``B×N`` distributions ``q``.
        alpha: ``B×1`` (or broadcastable) weights ``α``.
        beta: ``B×1`` (or broadcastable) weights ``β``.
    """
    return (1 - alpha - beta) * y + alpha * p + beta * q


def confidence_schedule(step: int, total_steps: int, mu_start: float, mu_end: float) -> float:
    """``µ_t = m2 − (m2 − m1)·(cos(πt/T) + 1)/2``: ``m1`` at step 0, ``m2`` at step ``T``.

    Args:
        step: iteration ``t`` (clamped to ``[0, T]``).
        total_steps: ``T``, the number of training steps.
        mu_start: ``m1``.
        mu_end: ``m2``.
    """
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return mu_end - (mu_end - mu_start) * (math.cos(math.pi * progress) + 1) / 2


def self_labeling_target(
    key_scores: Tensor,
    positive_one_hot: Tensor,
    mask: Tensor,
    mu: float | Tensor,
    temperature: float,
    use_p: bool = True,
    use_q: bool = True,
) -> Tensor:
    """SANE's refined label ``ȳ`` from the key scores, in one call.

    Args:
        key_scores: ``B×N`` ``k_i·B̄_j``.
        positive_one_hot: ``B×N`` ``y_i``.
        mask: ``B×N`` excluded columns (never the positive).
        mu: confidence ``µ >= 0``.
        temperature: ``τ·τ′``.
        use_p: keep the ``p`` term; ``False`` sets ``α = 0`` (the paper's "q only"
            ablation; ``p`` then also leaves ``z``).
        use_q: keep the ``q`` term; ``False`` sets ``β = 0`` ("p only").

    Returns:
        ``B×N`` rows that sum to 1 and are zero on masked columns.
    """
    p, q = key_distributions(key_scores, positive_one_hot, mask, temperature)
    y = positive_one_hot.to(p.dtype)
    alpha, beta = confidence_weights(p if use_p else torch.zeros_like(p), q if use_q else torch.zeros_like(q), mu)
    return refined_label(y, p, q, alpha, beta)


class SelfLabelingRefinery(nn.Module):
    """SANE's label builder: ``ȳ_i = (1 − α_i − β_i)·y_i + α_i·p_i + β_i·q_i``.

    ``µ`` lives in a persistent buffer (so a checkpoint holds it). The method sets it
    from the training step with :meth:`set_step`, as the momentum schedule is driven
    by the step; a fresh builder starts at ``µ_0 = m1``. Meant for the
    ``[gathered batch keys | Q]`` layout, but works with ``[k_i | Q]`` too.

    Args:
        tau: ``τ > 0``, the temperature of the contrastive loss.
        tau_prime: ``τ′`` in ``(0, 1]``; the key's distributions use ``τ·τ′``.
        mu_start: ``m1 >= 0``, the confidence at the first step.
        mu_end: ``m2 >= m1``, the confidence at the last step.
        use_p: keep the ``p`` term (``False``: the paper's "q only" ablation).
        use_q: keep the ``q`` term (``False``: the paper's "p only" ablation).

    Raises:
        SettingError: a hyperparameter outside its range (naming its config field).
    """

    def __init__(
        self,
        tau: float,
        tau_prime: float,
        mu_start: float,
        mu_end: float,
        use_p: bool = True,
        use_q: bool = True,
    ):
        super().__init__()
        if not tau > 0:
            raise SettingError("temperature", f"SANE temperature (τ) must be > 0, got {tau}")
        if not 0 < tau_prime <= 1:
            raise SettingError("tau_prime", f"SANE tau_prime (τ′) must lie in (0, 1], got {tau_prime}")
        if not mu_start >= 0:
            raise SettingError("mu_start", f"SANE mu_start (m1) must be >= 0, got {mu_start}")
        if not mu_end >= mu_start:
            raise SettingError(
                "mu_end", f"SANE mu_end (m2) must be >= mu_start (m1), got {mu_end} < {mu_start}: "
                "the confidence rises from m1 to m2"
            )
        self.tau, self.tau_prime = float(tau), float(tau_prime)
        self.mu_start, self.mu_end = float(mu_start), float(mu_end)
        self.use_p, self.use_q = use_p, use_q
        self.register_buffer("mu", torch.tensor(float(mu_start)))

    @property
    def temperature(self) -> float:
        """``τ·τ′``, the temperature of ``p`` and ``q``."""
        return self.tau * self.tau_prime

    def set_step(self, step: int, total_steps: int) -> None:
        """Sets ``µ`` to ``µ_t`` of :func:`confidence_schedule` for step ``t``."""
        self.mu.fill_(confidence_schedule(step, total_steps, self.mu_start, self.mu_end))

    def after_optimizer_step(self, step: int, total_steps: int, blocks: object = None) -> None:
        """``µ ← µ_{t+1}`` for the next step (the step's hook after the optimizer step)."""
        self.set_step(step + 1, total_steps)

    def metrics(self) -> dict[str, Tensor]:
        """What to log each step: the confidence ``µ``."""
        return {"mu": self.mu.detach().clone()}

    def forward(self, columns: Columns, rows: Rows) -> Targets:
        """Builds ``ȳ`` from the keys' similarities to the columns (one key per row)."""
        if rows.keys is None:
            raise ValueError("SANE's refined labels need one momentum key per row (one column view per image)")
        with torch.no_grad():
            key_scores = columns.scores(rows.keys)
            target = self_labeling_target(
                key_scores, rows.positive_one_hot(), rows.mask, self.mu, self.temperature, self.use_p, self.use_q
            )
        return Targets(target, rows.mask)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, tau_prime={self.tau_prime}, mu_start={self.mu_start}, mu_end={self.mu_end}, "
                f"use_p={self.use_p}, use_q={self.use_q}")
