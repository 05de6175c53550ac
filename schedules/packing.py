"""The one owner of how the conv rewrites lay out a conv for a target: layout and packing block.

For a CPU (LLVM) target the rewrites emit NHWC convs with ``alpha`` packed in blocks of output
channels; the block is what the CPU conv rule's register tile holds
(:func:`~tvm_structconv.schedules.cpu.tiling.channel_block`), or, for a conv whose output
channels no whole vector register divides (1000 classes, 200 channels), whole registers over
zero-padded filters (:func:`cpu_block_size`): the rewrite then pads ``alpha`` and slices the
output. Any other target gets NCHW and no
packing (the CUDA template and TVM's default pipeline read ``alpha`` as OIHW).
:func:`portable_block_size` is the target-free block of the rewrites' default (IR tests, or a
caller that does not name a target).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

from tvm.target import Target

from tvm_structconv.schedules.base import target_family
from tvm_structconv.schedules.cpu.tiling import channel_block, tile_score
from tvm_structconv.schedules.cpu.winograd import choose_winograd_tile
from tvm_structconv.schedules.target_info import is_aarch64, vector_lanes, vector_registers

__all__ = [
    "MAX_PADDING",
    "BlockSize",
    "ConvLayout",
    "WinogradTile",
    "conv_layout",
    "cpu_block_size",
    "divisor_block",
    "padded_channels",
    "portable_block_size",
]

#: ``(out_channels, groups, out_width) -> block``: the output-channel block ``alpha`` is packed
#: with for an NHWC conv. It divides ``out_channels``, except for an ungrouped conv whose
#: output the rewrite pads with zero filters to a multiple of the block (and slices back).
BlockSize = Callable[[int, int, int], int]

#: ``(batch, out_height, out_width) -> m or None``: the Winograd F(m, 2) tile of a layer whose
#: structure allows it, ``None`` for the direct kernel.
WinogradTile = Callable[[int, int, int], Optional[int]]

#: Largest share of zero filters a packing block may add to an ungrouped conv's outputs.
MAX_PADDING = Fraction(1, 8)


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


def padded_channels(out_channels: int, block: int) -> int:
    """``out_channels`` rounded up to a whole number of packing blocks of ``block`` channels."""
    return -(-out_channels // block) * block


def portable_block_size(out_channels: int, groups: int, out_width: int) -> int:
    """Blocks of up to 16 output channels, multiples of 8 preferred (two AVX2 registers)."""
    return divisor_block(out_channels, groups, preferred=16, lanes=8)


def cpu_block_size(target: Target, out_channels: int, groups: int, out_width: int) -> int:
    """The packing block of an NHWC conv on a CPU ``target``.

    :func:`~tvm_structconv.schedules.cpu.tiling.channel_block` (a divisor of the outputs),
    unless no whole vector register divides the outputs of an ungrouped conv: then one or two
    whole registers over outputs padded with zero filters, when the padding adds at most
    :data:`MAX_PADDING` and the tile scores better (the register tile's score,
    :func:`~tvm_structconv.schedules.cpu.tiling.tile_score`, times the share of real
    outputs). SqueezeNet's classifier (1000 outputs, 13 wide) on AVX-512: 8 channels per
    half-empty register -> 32 of 1008 outputs, 1.55 -> 0.72 ms on one thread.
    """
    lanes, registers = vector_lanes(target), vector_registers(target)
    block = channel_block(target, out_channels, groups, out_width)
    if groups != 1 or block % lanes == 0:
        return block

    def score(width: int) -> float:
        real_share = out_channels / padded_channels(out_channels, width)
        return tile_score(out_width, width, lanes, registers) * real_share

    padded_blocks = [
        width
        for width in (lanes, 2 * lanes)
        if out_channels % width
        and padded_channels(out_channels, width) - out_channels <= MAX_PADDING * out_channels
    ]
    return max([block, *padded_blocks], key=lambda width: (round(score(width), 3), width))


@dataclass(frozen=True)
class ConvLayout:
    """How the conv rewrites emit convs for one target.

    Attributes
    ----------
    layout
        ``"NHWC"`` (CPU targets: the project's schedules) or ``"NCHW"``.
    block_size
        The packing block of an NHWC conv's ``alpha`` (unused for NCHW).
    winograd_tile
        For the NHWC convs that can run as Winograd F(m, 2) (stride 1, ``c = C``, ``n = 2``):
        ``m`` for a ``(batch, out_height, out_width)`` output, or ``None`` for the direct
        kernel (:data:`WinogradTile`); ``None`` here: never Winograd.
    """

    layout: str
    block_size: BlockSize
    winograd_tile: Optional[WinogradTile] = None


def conv_layout(target: Optional[Target] = None, scheduled: bool = True) -> ConvLayout:
    """The layout and packing block the conv rewrites use for ``target``.

    No target, ``scheduled=False`` (TVM's default pipeline instead of the project's schedules)
    and non-CPU targets get NCHW. x86 targets run the layers that allow it as Winograd
    (:func:`~tvm_structconv.schedules.cpu.winograd.choose_winograd_tile`; measured on x86
    only, so AArch64 keeps the direct kernel).
    """
    if target is not None and scheduled and target_family(target) == "cpu":
        winograd = None if is_aarch64(target) else choose_winograd_tile
        return ConvLayout("NHWC", functools.partial(cpu_block_size, target), winograd)
    return ConvLayout("NCHW", portable_block_size)
