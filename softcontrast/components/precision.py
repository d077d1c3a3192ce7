"""Full precision for the label math under mixed precision (DESIGN, "Performance").

Under ``torch.autocast`` a matrix product runs in bfloat16 (or float16) even when
both operands are float32, so casting its result afterwards is too late. Logits,
targets, refinery distributions and false-negative scores are therefore built from
:func:`similarities`, which upcasts both sides and turns autocast off for the
product. Encoders may emit bfloat16 embeddings; :func:`full_precision` upcasts them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it is float64 (half precisions are upcast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def similarities(x: Tensor, columns: Tensor) -> Tensor:
    """``x · columnsᵀ`` in float32 at least (float64 if either side is), autocast off.

    Args:
        x: ``B×D`` rows (gradients flow back to them in their own dtype).
        columns: ``N×D`` columns.

    Returns:
        ``B×N`` inner products.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, columns.dtype), torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        return x.to(dtype) @ columns.to(dtype).T
