"""Register and task tiling of the CPU conv rule, and the packing block it implies.

The accumulator tile of :mod:`tvm_structconv.schedules.cpu.conv` is ``pixels × block`` output
values held in vector registers, next to the block's weight vectors, one broadcast and one
spare register. Everything here is arithmetic on the target's vector width and register count
(:mod:`~tvm_structconv.schedules.target_info`): which output-channel block ``alpha`` is packed
with (:func:`channel_block`, used through :func:`tvm_structconv.schedules.packing.conv_layout`),
how many pixels one tile holds, and how rows and output-channel chunks are cut into parallel
tasks (:func:`choose_tiling`).

A tile's pixels are one row of the output, and each reads (input) and writes (output) its own
channels: in NHWC consecutive pixels are ``channels × 4`` bytes apart. With 1024 channels that
is exactly the 4 KB after which addresses fall into the same L1 set, so the 14 pixels of a
14-wide tile all compete for one set of 8–12 ways and evict each other on every pass over the
channels; :func:`alias_bound` keeps a tile to what the sets hold (ResNet-50's 1×1 convs of 1024
channels at 14×14: 0.90–0.92× of onnxruntime with 14-pixel tiles, 0.99–1.02× with 7), unless
the width has no divisor near the bound (13 pixels of 1024 channels: 13-pixel tiles, not 1).

On AArch64 the tile also holds :func:`channel_unroll` input channels' weight vectors: NEON has
no broadcast memory operand (x86's ``vfmadd231ps`` takes one, free), but has FMA *by element*
(``fmla v.4s, v.4s, v.s[i]``), so the conv rule unrolls four consecutive input channels inside
the pixel loop and loads their four ``S`` values of one pixel as one ``ldr q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from tvm.target import Target

from tvm_structconv.schedules.target_info import (
    divisors,
    is_aarch64,
    target_cores,
    vector_lanes,
    vector_registers,
    vector_widths,
)

__all__ = [
    "L1_ALIAS_PERIOD",
    "MAX_LINES_PER_SET",
    "MAX_TILE_PIXELS",
    "MAX_ROWS",
    "ConvTiling",
    "alias_bound",
    "channel_block",
    "channel_unroll",
    "choose_tiling",
    "pixel_bound",
    "pixel_budget",
    "pixel_tile",
    "tile_score",
]

#: Largest number of output rows one parallel task computes (bounds the ``S`` tile).
MAX_ROWS = 8
#: Independent accumulators needed to hide the FMA latency (2 pipes × 4 cycles).
MIN_ACCUMULATORS = 8
#: Bytes after which addresses map to the same L1 data-cache set: 64 sets of 64-byte lines, as
#: in every x86 and Arm core of the targets (32 KB 8-way, 48 KB 12-way, 64 KB 16-way).
L1_ALIAS_PERIOD = 4096
#: Most lines of one tile's pixels that may map to one L1 set: the ways of a 32 KB 8-way L1.
MAX_LINES_PER_SET = 8
#: More pixels than any register tile holds (32 AVX-512 registers, one vector per pixel).
MAX_TILE_PIXELS = 64


def alias_bound(pixel_strides: Sequence[int]) -> Optional[int]:
    """Most pixels of one tile whose rows of each tensor share no L1 set beyond its ways.

    ``pixel_strides``: the bytes between consecutive pixels of each tensor the tile reads or
    writes per pixel (its input and output: ``channels × 4`` in NHWC). Pixels ``stride`` bytes
    apart spread over ``L1_ALIAS_PERIOD / gcd(stride, L1_ALIAS_PERIOD)`` sets; with at most
    :data:`MAX_LINES_PER_SET` pixels on each, 1024 or 2048 channels allow 8 pixels, 512 allow 16,
    256 allow 32. Exact for strides of whole lines (channels a multiple of 16 floats); for
    other strides it holds for tiles up to :data:`MAX_TILE_PIXELS` (rows shorter than a line
    share lines, which the count above does not see). ``None`` when no stride is given (no
    bound).
    """
    bounds = [
        MAX_LINES_PER_SET * (L1_ALIAS_PERIOD // math.gcd(stride, L1_ALIAS_PERIOD))
        for stride in pixel_strides
        if stride > 0
    ]
    return min(bounds) if bounds else None


def channel_unroll(target: Target) -> int:
    """Input channels unrolled inside the pixel loop: the NEON lanes on AArch64, else 1."""
    return vector_lanes(target) if is_aarch64(target) else 1


def pixel_budget(block: int, lanes: int, registers: int, channel_unroll: int = 1) -> int:
    """Most pixels of ``block`` output channels whose accumulators fit the vector registers.

    Next to the accumulators: the block's weight vectors (of ``channel_unroll`` input
    channels), one broadcast and one spare register (a tile using all 16 AVX2 registers
    spilled and ran at half speed).
    """
    vectors = -(-block // lanes)
    return max((registers - vectors * channel_unroll - 2) // vectors, 1)


def pixel_bound(
    out_width: int,
    block: int,
    lanes: int,
    registers: int,
    channel_unroll: int = 1,
    pixel_strides: Sequence[int] = (),
) -> int:
    """Most pixels of one tile of an ``out_width``-wide row.

    What the registers hold (:func:`pixel_budget`) and, given the tensors' ``pixel_strides``,
    what the L1 sets hold (:func:`alias_bound`), unless no divisor of the width reaches half
    of the latter: a 13-wide row of 1024 channels would get 1-pixel tiles, which hide no FMA
    latency and cost 50 % more than 13 pixels sharing a set (SqueezeNet's classifier conv).
    """
    budget = pixel_budget(block, lanes, registers, channel_unroll)
    aliasing = alias_bound(pixel_strides)
    if aliasing is None or aliasing >= budget:
        return budget
    return aliasing if 2 * max(divisors(out_width, aliasing)) >= aliasing else budget


def pixel_tile(
    out_width: int,
    block: int,
    lanes: int,
    registers: int,
    channel_unroll: int = 1,
    pixel_strides: Sequence[int] = (),
) -> int:
    """Pixels per accumulator tile: the largest divisor of the width within :func:`pixel_bound`."""
    bound = pixel_bound(out_width, block, lanes, registers, channel_unroll, pixel_strides)
    return max(divisors(out_width, bound))


def tile_score(out_width: int, block: int, lanes: int, registers: int) -> float:
    """Expected fraction of peak of one tile shape: latency hiding × load intensity × lane use."""
    vectors = -(-block // lanes)
    pixels = pixel_tile(out_width, block, lanes, registers)
    accumulators = pixels * vectors
    latency = min(1.0, accumulators / MIN_ACCUMULATORS)
    intensity = min(1.0, accumulators / (pixels + vectors))
    return latency * intensity * block / (vectors * lanes)


def channel_block(target: Target, out_channels: int, groups: int, out_width: int) -> int:
    """The output-channel block to pack ``alpha`` with for this layer on ``target``.

    A divisor of ``out_channels`` (and of the outputs per group for a grouped conv with several
    outputs per group) of at most two vector registers, whole registers or a power of two
    (:func:`~tvm_structconv.schedules.target_info.vector_widths`), picked by
    :func:`tile_score`: on AVX2 a 7-wide output gets one register of channels × 7 pixels
    rather than two × 1.
    """
    lanes, registers = vector_lanes(target), vector_registers(target)
    per_group = out_channels // groups
    bound = out_channels if groups == 1 or per_group == 1 else per_group
    candidates = vector_widths(bound, lanes, 2)
    return max(candidates, key=lambda d: (round(tile_score(out_width, d, lanes, registers), 3), d))


@dataclass(frozen=True)
class ConvTiling:
    """The tile sizes of one conv.

    Attributes
    ----------
    block
        Output channels per accumulator tile (the packing block of ``alpha``).
    pixels
        Output pixels of one row per accumulator tile (unrolled).
    rows
        Output rows per parallel task.
    chunks
        Parallel chunks the output-channel blocks are cut into (``S`` is recomputed per chunk).
    """

    block: int
    pixels: int
    rows: int
    chunks: int


def choose_tiling(
    batch: int,
    out_height: int,
    out_width: int,
    out_channels: int,
    block: int,
    target: Target,
    channel_unroll: int = 1,
    pixel_strides: Sequence[int] = (),
) -> ConvTiling:
    """Tile sizes for an ``(batch, out_height, out_width, out_channels)`` NHWC output.

    Pixels: :func:`pixel_tile` (``pixel_strides``: of the conv's input and output, see
    :func:`alias_bound`). Rows and chunks give every core the same number of tasks where
    possible, then the most rows per task (less ``S`` overlap recomputed between tasks), then
    the fewest chunks.
    """
    lanes, registers, cores = vector_lanes(target), vector_registers(target), target_cores(target)
    pixels = pixel_tile(out_width, block, lanes, registers, channel_unroll, pixel_strides)
    best: Optional[Tuple[tuple, int, int]] = None
    for rows in divisors(out_height, MAX_ROWS):
        for chunks in divisors(out_channels // block, cores):
            tasks = batch * (out_height // rows) * chunks
            balance = tasks / (cores * -(-tasks // cores))
            overlap = rows / (rows + 2)
            score = (round(balance, 2), round(overlap / chunks**0.5, 3), rows)
            if best is None or score > best[0]:
                best = (score, rows, chunks)
    assert best is not None
    return ConvTiling(block, pixels, best[1], best[2])
