"""The one owner of how the conv rewrites lay out a conv for a target: layout and packing block.

For a CPU (LLVM) target the rewrites emit NHWC convs with ``alpha`` packed in blocks of output
channels; the block is what the CPU conv rule's register tile holds
(:func:`~tvm_structconv.schedules.cpu.tiling.channel_block`). Any other target gets NCHW and no
packing (the CUDA template and TVM's default pipeline read ``alpha`` as OIHW).
:func:`portable_block_size` is the target-free block of the rewrites' default (IR tests, or a
caller that does not name a target).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

from tvm.target import Target

from tvm_structconv.schedules.base import target_family
from tvm_structconv.schedules.cpu.tiling import channel_block

__all__ = ["BlockSize", "ConvLayout", "conv_layout", "divisor_block", "portable_block_size"]

#: ``(out_channels, groups, out_width) -> block``: the output-channel block ``alpha`` is packed
#: with for an NHWC conv.
BlockSize = Callable[[int, int, int], int]


def divisor_block(out_channels: int, groups: int, preferred: int, lanes: int = 1) -> int:
    """A packing block ``B`` of at most ``preferred`` channels, sharing most factors with ``lanes``.

    ``B`` divides ``out_channels`` and, for a grouped conv with several outputs per group, the
    outputs per group (so one block reads one group's channels of ``S``). Among the divisors up
    to ``preferred`` it takes the one sharing the most factors of two with ``lanes`` (whole
    vector registers), then the largest.
    """
    per_group = out_channels // groups
    bound = out_channels if groups == 1 or per_group == 1 else per_group
    candidates = [d for d in range(1, min(preferred, bound) + 1) if bound % d == 0]
    return max(candidates, key=lambda d: (math.gcd(d, lanes), d))


def portable_block_size(out_channels: int, groups: int, out_width: int) -> int:
    """Blocks of up to 16 output channels, multiples of 8 preferred (two AVX2 registers)."""
    return divisor_block(out_channels, groups, preferred=16, lanes=8)


@dataclass(frozen=True)
class ConvLayout:
    """How the conv rewrites emit convs for one target.

    Attributes
    ----------
    layout
        ``"NHWC"`` (CPU targets: the project's schedules) or ``"NCHW"``.
    block_size
        The packing block of an NHWC conv's ``alpha`` (unused for NCHW).
    """

    layout: str
    block_size: BlockSize


def conv_layout(target: Optional[Target] = None, scheduled: bool = True) -> ConvLayout:
    """The layout and packing block the conv rewrites use for ``target``.

    No target, ``scheduled=False`` (TVM's default pipeline instead of the project's schedules)
    and non-CPU targets get NCHW.
    """
    if target is not None and scheduled and target_family(target) == "cpu":
        return ConvLayout("NHWC", functools.partial(channel_block, target))
    return ConvLayout("NCHW", portable_block_size)
