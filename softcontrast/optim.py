"""Optimizers of a run: LARS, parameter groups without weight decay, and learning-rate scaling.

LARS (You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks",
arXiv 1708.03888, Algorithm 1) gives each parameter tensor (a "layer") ``w`` its own local
learning rate from the ratio of its norm to the norm of its gradient, so that every layer
moves by about the same fraction ``η`` of its norm whatever the batch size.

:func:`param_groups` splits a model's trainable parameters into the ones that get weight
decay (and LARS adaptation) and the ones that do not: the one-dimensional parameters, that is
the normalisation layers' scales and shifts and every bias. :func:`scaled_lr` turns the
learning rate for a batch of 256 into the one for the run's global batch.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

#: The ways of scaling the learning rate with the global batch (:func:`scaled_lr`).
LR_SCALINGS = ("linear", "sqrt-batch", "sqrt-per-256", "none")
#: The optimizers :func:`make_optimizer` builds.
OPTIMIZERS = ("sgd", "adamw", "lars")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum and weight decay (LARS, Algorithm 1 of the paper).

    For each parameter tensor ``w`` with gradient ``g``, at learning rate ``γ``:

    - ``d = g + β·w`` (β the weight decay);
    - the trust ratio ``λ = η·‖w‖ / ‖d‖`` (η the trust coefficient), or ``1`` when ``‖w‖`` or
      ``‖d‖`` is zero (a zero-initialised bias would otherwise never move);
    - ``v ← m·v + γ·λ·d`` (m the momentum; ``v`` starts at zero);
    - ``w ← w − v``.

    The paper writes the denominator as ``‖g‖ + β‖w‖``; the reference LARS of SimCLR (which
    FNC's code builds on) and of eztorch (SCE's code) use ``‖g + β·w‖``, the norm of the step's
    own direction. ``denominator="update"`` (the default) is the latter, ``"sum"`` the paper's
    text. As in the paper, the learning rate enters the momentum buffer (with a constant rate
    this equals applying it after the buffer).

    A parameter group with ``adapt=False`` skips the trust ratio (``λ = 1``): with
    ``weight_decay=0`` it is SGD with momentum. :func:`param_groups` builds such a group for
    the normalisation scales and the biases.

    Args:
        params: parameters or parameter groups (dicts that may set any of the options below).
        lr: learning rate ``γ`` (the trainer sets it every step).
        momentum: ``m`` in [0, 1).
        weight_decay: ``β`` >= 0.
        trust_coefficient: ``η`` > 0 (1e-3 in the paper, SCE and FNC).
        adapt: apply the trust ratio (default for every group).
        denominator: ``"update"`` (``‖g + β·w‖``) or ``"sum"`` (``‖g‖ + β‖w‖``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        adapt: bool = True,
        denominator: str = "update",
    ):
        if not lr > 0:
            raise ValueError(f"LARS lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}")
        if not trust_coefficient > 0:
            raise ValueError(f"LARS trust_coefficient must be > 0, got {trust_coefficient}")
        if denominator not in ("update", "sum"):
            raise ValueError(f"LARS denominator must be 'update' or 'sum', got {denominator!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        adapt=adapt, denominator=denominator)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One LARS step for every parameter that has a gradient; returns ``closure()`` when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay, momentum = group["weight_decay"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                direction = param.grad.add(param, alpha=decay) if decay else param.grad.clone()
                if group["adapt"]:
                    direction.mul_(self._trust_ratio(param, direction, group))
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(direction, alpha=group["lr"])
                param.sub_(buffer)
        return loss

    @staticmethod
    def _trust_ratio(param: torch.Tensor, direction: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """``η‖w‖ / denominator`` as a 0-d tensor on the parameter's device (no host read), 1 where a norm is 0."""
        weight_norm = torch.linalg.vector_norm(param)
        if group["denominator"] == "update":
            denominator = torch.linalg.vector_norm(direction)
        else:
            grad_norm = torch.linalg.vector_norm(param.grad)
            denominator = grad_norm + group["weight_decay"] * weight_norm
        usable = (weight_norm > 0) & (denominator > 0)
        ratio = group["trust_coefficient"] * weight_norm / torch.where(usable, denominator, 1.0)
        return torch.where(usable, ratio, 1.0)


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer parameter groups.

    Args:
        model: its parameters with ``requires_grad`` are trained.
        weight_decay: the decay of the decayed group.
        exclude_norm_bias: put the parameters with at most one dimension (batch- and layer-norm
            scales and shifts, every bias) in a second group with no weight decay and
            ``adapt=False`` (no LARS trust ratio; other optimizers ignore the key). Off: one group.

    Returns:
        One or two groups (an empty group is left out).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0, "adapt": False}]
    return [group for group in groups if group["params"]]


def scaled_lr(lr: float, global_batch: int, scaling: str) -> float:
    """The learning rate for ``global_batch`` ``B`` from the base rate ``lr``.

    ``linear``: ``lr × B/256`` (SCE, MoCo: ``lr`` is the rate at 256); ``sqrt-batch``:
    ``lr × √B``, the square-root scaling of SimCLR's and FNC's code (``learning_rate_schedule``
    in ``model_util.py``: FNC's default 0.1 gives 6.4 at B = 4096, although its flag's help
    calls 0.1 the rate "per batch size of 256"); ``sqrt-per-256``: ``lr × √(B/256)`` (ours:
    ``lr`` stays the rate at 256; 0.1 gives 0.4 at 4096); ``none``: ``lr`` whatever the batch.

    Raises:
        ValueError: ``scaling`` is not one of :data:`LR_SCALINGS`, or the batch is not positive.
    """
    if global_batch < 1:
        raise ValueError(f"the global batch must be >= 1, got {global_batch}")
    if scaling == "linear":
        return lr * global_batch / 256
    if scaling == "sqrt-batch":
        return lr * math.sqrt(global_batch)
    if scaling == "sqrt-per-256":
        return lr * math.sqrt(global_batch / 256)
    if scaling == "none":
        return lr
    raise ValueError(f"lr scaling must be one of {', '.join(LR_SCALINGS)}; got {scaling!r}")


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    exclude_norm_bias: bool = False,
    trust_coefficient: float = 1e-3,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``model``'s trainable parameters.

    Args:
        model: the model to train.
        name: ``sgd`` (with momentum), ``adamw`` or ``lars`` (:class:`LARS`).
        lr: the starting learning rate.
        weight_decay: weight decay (decoupled for AdamW).
        momentum: momentum of SGD and LARS.
        exclude_norm_bias: no weight decay (and no LARS adaptation) for one-dimensional
            parameters (:func:`param_groups`).
        trust_coefficient: LARS's ``η``.

    Raises:
        ValueError: ``name`` is not one of :data:`OPTIMIZERS`.
    """
    groups = param_groups(model, weight_decay, exclude_norm_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
