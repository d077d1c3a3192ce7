"""bfloat16 autocast on the CPU, refused where torch's convolution backward is broken.

torch's CPU kernels (seen with torch 2.14 on an AVX-512 CPU, through oneDNN) break the
bfloat16 backward pass of two kinds of convolution:

- **stride wider than the input**: a stride along the width larger than the input's width,
  with a kernel wider than one pixel. The weight gradient of the taps that only read
  padding gets uninitialised values (up to 1e36, often NaN) in many calls, not in all.
  The input gradient is right (the benchmark found no wrong one) and the step's loss
  looks normal; the run diverges at the next step. A ResNet meets it when its views are
  small for its stem: with the ImageNet stem, 16-px views reach ``layer4.0.conv2`` (3×3,
  stride 2) one pixel wide.
- **only padding**: along one axis every tap of the kernel reads padding at every output
  position (a dilated kernel on a one- or two-pixel input). The backward pass can kill
  the process (a segmentation fault).

Both rules were measured (``benchmarks/cpu_bf16_conv.py``): among random convolutions
(kernel, stride, padding, dilation, groups, input size, batch and channels drawn at
random), every weight gradient off the float64 reference by more than half its scale, and
every crash, came from a convolution of a rule, and none from the others. With oneDNN
held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) no call broke: the fault lies in its AVX-512
bf16 kernels. The refusal does not read the CPU: where the rules name a layer it refuses
on every CPU.

So training in bfloat16 on the CPU first traces the online encoder at every crop size of
the step and refuses, before any step, a network that would run such a convolution. On a
GPU none of this applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from softcontrast.settings import SettingError


@dataclass(frozen=True)
class Bf16Hazard:
    """A convolution whose bfloat16 backward pass on the CPU would be broken.

    Attributes:
        layer: its name in ``named_modules``.
        view_size: the view size that brings it the input.
        input_size: its input's height and width at that view size.
        fault: what breaks (:func:`cpu_bf16_fault`).
    """

    layer: str
    view_size: int
    input_size: tuple[int, int]
    fault: str


STRIDE_WIDER_THAN_INPUT = "stride wider than the input"
ONLY_PADDING = "only padding"


def _reads_only_padding(size: int, kernel: int, stride: int, before: int, after: int, dilation: int) -> bool:
    """Whether, along one axis, every kernel tap reads padding at every output position
    (``before`` and ``after`` pixels of zero padding around ``size`` input pixels)."""
    outputs = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    return all(not 0 <= position * stride + tap * dilation - before < size
               for position in range(max(outputs, 0)) for tap in range(kernel))


def _zero_padding(layer: nn.Conv2d, axis: int) -> tuple[int, int]:
    """(before, after) zero padding of ``layer`` along ``axis`` as its kernel sees it."""
    if layer.padding_mode != "zeros" or layer.padding == "valid":
        return 0, 0  # other modes pad the input first, then convolve without padding
    if layer.padding == "same":
        total = layer.dilation[axis] * (layer.kernel_size[axis] - 1)
        return total // 2, total - total // 2
    return layer.padding[axis], layer.padding[axis]


def cpu_bf16_fault(layer: nn.Conv2d, height: int, width: int) -> str | None:
    """What breaks in ``layer``'s bfloat16 backward pass on the CPU for a ``height × width`` input.

    Returns:
        :data:`STRIDE_WIDER_THAN_INPUT` (its stride along the width exceeds the width its
        kernel sees and its kernel is wider than one: wrong weight gradients),
        :data:`ONLY_PADDING` (along one axis every tap reads only padding: the process can
        crash), or ``None``.
    """
    sides = [height, width]
    if layer.padding_mode != "zeros" and not isinstance(layer.padding, str):
        sides = [side + 2 * pad for side, pad in zip(sides, layer.padding)]
    if layer.stride[1] > sides[1] and layer.kernel_size[1] > 1:
        return STRIDE_WIDER_THAN_INPUT
    for axis, size in enumerate(sides):
        if _reads_only_padding(size, layer.kernel_size[axis], layer.stride[axis], *_zero_padding(layer, axis),
                               layer.dilation[axis]):
            return ONLY_PADDING
    return None


def cpu_bf16_hazards(encoder: nn.Module, sizes: Iterable[int], channels: int = 3) -> list[Bf16Hazard]:
    """The convolutions of ``encoder`` that views of ``sizes`` would bring an input their
    bfloat16 backward pass on the CPU breaks on (:func:`cpu_bf16_fault`).

    Each size is traced once with one black image in float32, without gradient and with
    ``encoder`` in eval mode (its batch-norm statistics are untouched; every module's mode is restored).

    Args:
        encoder: the network that takes the views (``B×channels×S×S``).
        sizes: the view sizes ``S`` of the step.
        channels: the views' channels.

    Returns:
        The hazards, in the order met; empty when the network is safe at every size.
    """
    convolutions = [(name, layer) for name, layer in encoder.named_modules() if isinstance(layer, nn.Conv2d)]
    if not convolutions:
        return []
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    found: list[Bf16Hazard] = []
    tracing = {"size": 0}

    def record(module, inputs, output):
        height, width = (int(side) for side in inputs[0].shape[-2:])
        fault = cpu_bf16_fault(module, height, width)
        if fault is not None:
            found.append(Bf16Hazard(names[module], tracing["size"], (height, width), fault))

    names = {layer: name for name, layer in convolutions}
    modes = {module: module.training for module in encoder.modules()}
    handles = [layer.register_forward_hook(record) for _, layer in convolutions]
    try:
        encoder.eval()
        with torch.no_grad():
            for size in sorted(set(sizes)):
                tracing["size"] = size
                encoder(torch.zeros(1, channels, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return found


def smallest_safe_size(encoder: nn.Module, size: int, channels: int = 3, limit: int = 4) -> int | None:
    """The smallest view size above ``size``, up to ``limit × size``, with no
    :func:`cpu_bf16_hazards` in ``encoder``; ``None`` when there is none."""
    for candidate in range(size + 1, limit * size + 1):
        if not cpu_bf16_hazards(encoder, [candidate], channels):
            return candidate
    return None


def refuse_cpu_bf16_hazards(encoder: nn.Module, sizes: Iterable[int], channels: int = 3) -> None:
    """Refuses bfloat16 training on the CPU of an ``encoder`` with :func:`cpu_bf16_hazards` at ``sizes``.

    Raises:
        SettingError: (``precision``) naming the convolution, the view size, the fault and the
            remedies: float32, or the smallest safe view size.
    """
    hazards = cpu_bf16_hazards(encoder, sizes, channels)
    if not hazards:
        return
    first = hazards[0]
    safer = smallest_safe_size(encoder, max(hazard.view_size for hazard in hazards), channels)
    larger = f", or make every view at least {safer} px" if safer is not None else ""
    size = f"{first.input_size[0]}×{first.input_size[1]}"
    layer = encoder.get_submodule(first.layer)
    if first.fault == STRIDE_WIDER_THAN_INPUT:
        what = (f"gets a {size} input narrower than its stride ({layer.stride[1]}), and torch's CPU bf16 "
                "backward returns garbage weight gradients (often NaN) there")
    else:
        what = (f"gets a {size} input on which every tap of its kernel along one axis reads only padding, "
                "and torch's CPU bf16 backward can crash the process there")
    raise SettingError(
        "precision",
        f"bf16 on the CPU would break this network's backward pass: at {first.view_size}-px views its "
        f"convolution {first.layer!r} {what}. Train in float32 (--precision no){larger}; on a GPU bf16 is safe",
    )
