"""Channels-last memory format, kept off on the CPU where torch's kernel is unsafe.

On some CPUs (seen with torch 2.14 on an AVX2-only CPU), the backward pass of a
1×1 stride-2 convolution with 2–6 input channels in channels-last format corrupts
the heap and kills the process. Narrow ResNets have exactly that convolution in
their shortcuts (width 2 or 4). Channels-last brings nothing on the CPU for such
tiny networks, so on the CPU the library keeps the default format for any network
that contains one (with a one-line notice); on a GPU, and on the CPU for every
other network, channels-last is used as asked.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

SAFE_CPU_MIN_CHANNELS = 8
"""Fewest input channels of a 1×1 stride-2 convolution that are safe in channels-last on the CPU."""


def cpu_channels_last_hazards(module: nn.Module) -> list[str]:
    """Names of the convolutions of ``module`` that must not run in channels-last on the CPU.

    Args:
        module: any network.

    Returns:
        The names (as in ``named_modules``) of its 1×1 stride-2 ``Conv2d`` layers with
        fewer than :data:`SAFE_CPU_MIN_CHANNELS` input channels; empty when it is safe.
    """
    return [
        name
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Conv2d)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.stride) != (1, 1)
        and layer.in_channels < SAFE_CPU_MIN_CHANNELS
    ]


def channels_last_allowed(module: nn.Module, device: torch.device | str, notice: bool = True) -> bool:
    """Whether ``module`` may run in channels-last on ``device``.

    Always on a GPU; on the CPU only without :func:`cpu_channels_last_hazards`.

    Args:
        module: the network.
        device: where it runs.
        notice: print one line on stderr when the answer is no.
    """
    if torch.device(device).type != "cpu":
        return True
    hazards = cpu_channels_last_hazards(module)
    if hazards and notice:
        print(
            f"softcontrast: channels_last is off on the CPU for this network: its 1×1 stride-2 convolution "
            f"{hazards[0]!r} has fewer than {SAFE_CPU_MIN_CHANNELS} input channels, which torch's CPU backward "
            "does not handle safely in that format (use a width of at least 8 to enable it)",
            file=sys.stderr,
            flush=True,
        )
    return not hazards


def to_channels_last(module: nn.Module, device: torch.device | str) -> bool:
    """Converts ``module``'s weights to channels-last when :func:`channels_last_allowed`.

    Returns:
        Whether the module is now in channels-last (feed it channels-last inputs then).
    """
    allowed = channels_last_allowed(module, device)
    if allowed:
        module.to(memory_format=torch.channels_last)
    return allowed
