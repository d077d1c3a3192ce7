"""Gathers across processes, with and without gradient, and Python objects shared between them.

When ``torch.distributed`` is not initialised or has one process, the gathers
return their input and :func:`on_main_process` simply calls its function. Every
process must call them together; the tensor gathers need a tensor of the same
shape from every process.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def world_size() -> int:
    """Number of processes (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_objects(value: Any) -> list[Any]:
    """The picklable ``value`` of every process, in rank order (``[value]`` on one process)."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def on_main_process(function: Callable[[], T]) -> T:
    """Runs ``function`` on the main process only and returns its result on every process.

    Whatever ``function`` raises is raised on every process (the same type and
    message; the main process keeps its traceback), so no process waits for the
    others in vain. The result must be picklable.
    """
    if world_size() == 1:
        return function()
    outcome: list[Any] = [None]
    failure: Exception | None = None
    if rank() == 0:
        try:
            outcome[0] = (True, function())
        except Exception as error:
            failure = error
            outcome[0] = (False, _picklable(error))
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if succeeded:
        return value
    raise failure or value


def _picklable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a ``RuntimeError`` with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


@torch.no_grad()
def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenates ``tensor`` of every process along dim 0, in rank order."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.batch = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Like :func:`gather_no_grad`, but gradients flow back to every process's part."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)
