"""CPU rule of the Winograd structured conv (:mod:`tvm_structconv.winograd`), NHWC.

The template:

* ``parallel`` over fused (batch, chunk of tile rows, chunk of output channels); everything
  else is computed per chunk, so the transformed input ``V`` and the GEMM's products ``M`` of
  one chunk stay in cache (channel chunks only where rows alone cannot balance the cores);
* per chunk: ``S`` (the pool stages, the padding inlined into the first), vectorized over
  channels; ``V`` per tile and channel vector, both 1-D transforms unrolled over the tile
  (the constant matrices fold into adds and multiplies by constants);
* the GEMM per position: output-channel block → register tile of tiles → input channel →
  tiles (unrolled) → channels of the block (vectorized), the accumulators a ``cache_write``
  to ``local`` sized like the direct conv's (:func:`~.tiling.pixel_budget`);
* the output transform per tile and channel vector, unrolled, with the fused elementwise
  epilogue (bias, ReLU, residual add) inlined into its write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from tvm_structconv.ops import stages_around
from tvm_structconv.schedules.base import TargetRule, schedule_whole_function
from tvm_structconv.schedules.cpu.conv import host_target, schedule_tail, split_epilogue
from tvm_structconv.schedules.cpu.tiling import pixel_budget
from tvm_structconv.schedules.target_info import (
    divisors,
    extent,
    target_cores,
    vector_lanes,
    vector_partition,
    vector_registers,
)
from tvm_structconv.winograd import WINOGRAD_RULE

__all__ = [
    "MIN_TILES",
    "WINOGRAD_TILES",
    "WinogradRule",
    "WinogradTiling",
    "choose_winograd_tile",
    "choose_winograd_tiling",
    "find_winograd_block",
    "schedule_winograd",
]

#: Tiles (of all positions' transformed input) one chunk may hold, at most.
MAX_CHUNK_TILES = 64
#: Output tile sizes ``m`` of F(m, 2) tried, largest first.
WINOGRAD_TILES = (4, 2)
#: Fewest tiles (over the batch) a layer needs for Winograd: each element of the transformed
#: kernel ``U`` (``(m+1)²/4`` times the size of ``alpha``) is used once per tile, so with few
#: tiles the GEMM waits on memory. One thread on znver5 (benchmarks/winograd_layers.py): F(4, 2)
#: 1.96x of the direct kernel at 56² (196 tiles) and 1.98x at 28² (49), 1.1-1.25x at 14² (16);
#: F(2, 2) 1.43x at 14² (49 tiles), 0.97x at 7² (16).
MIN_TILES = 32


@dataclass(frozen=True)
class WinogradTiling:
    """Tile sizes of one Winograd conv.

    Attributes
    ----------
    rows
        Tile rows per chunk (``V`` and ``M`` of one chunk stay in cache).
    tiles
        Tiles per register tile of the GEMM (unrolled).
    channel_chunks
        Parallel chunks the output channels are cut into (the input transform of a chunk of
        rows is recomputed for each): a parallel task is one chunk of rows and one of
        channels.
    """

    rows: int
    tiles: int
    channel_chunks: int = 1


def choose_winograd_tiling(
    tiles_h: int,
    tiles_w: int,
    block: int,
    target: Target,
    max_tiles: int = MAX_CHUNK_TILES,
    batch: int = 1,
    out_channels: Optional[int] = None,
) -> WinogradTiling:
    """Chunks that give every core the same number of tasks where possible, then the fewest
    channel chunks (each recomputes the input transform), then the most tile rows within
    ``max_tiles`` tiles; and the widest register tile.

    Output channels are cut into chunks only when ``out_channels`` (the real ones) is a
    multiple of ``block``. The register tile is part of one tile row, or whole rows (so each
    is a rectangle of tiles).
    """
    cores = target_cores(target)
    blocks = out_channels // block if out_channels and out_channels % block == 0 else 1
    best = None
    for rows in divisors(tiles_h, max(1, max_tiles // tiles_w)):
        for channel_chunks in divisors(blocks, cores):
            tasks = batch * (tiles_h // rows) * channel_chunks
            balance = tasks / (cores * -(-tasks // cores))
            score = (round(balance, 2), -channel_chunks, rows)
            if best is None or score > best[0]:
                best = (score, rows, channel_chunks)
    assert best is not None
    _, rows, channel_chunks = best
    budget = pixel_budget(block, vector_lanes(target), vector_registers(target))
    candidates = divisors(tiles_w, budget) + [
        r * tiles_w for r in divisors(rows, budget // tiles_w)
    ]
    return WinogradTiling(rows, max(candidates), channel_chunks)


def choose_winograd_tile(batch: int, out_height: int, out_width: int) -> Optional[int]:
    """``m`` of the F(m, 2) a stride-1 layer with this output runs as, or ``None`` (direct).

    The largest of :data:`WINOGRAD_TILES` that cuts the output into at least
    :data:`MIN_TILES` tiles.
    """
    for tile in WINOGRAD_TILES:
        if batch * -(-out_height // tile) * -(-out_width // tile) >= MIN_TILES:
            return tile
    return None


def find_winograd_block(sch: s_tir.Schedule) -> Optional[s_tir.schedule.SBlockRV]:
    """The root-level block tagged ``schedule_rule = structured_winograd``, or ``None``."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).annotations.get("schedule_rule") == WINOGRAD_RULE:
            return block
    return None


def _unroll_all(sch: s_tir.Schedule, loops) -> None:
    for loop in loops:
        sch.unroll(loop)


def schedule_winograd(
    sch: s_tir.Schedule,
    gemm: s_tir.schedule.SBlockRV,
    target: Target,
    tiling: Optional[WinogradTiling] = None,
) -> bool:
    """Schedule the Winograd conv around its GEMM block ``gemm`` in place.

    Returns ``False`` (``sch`` untouched) when the function does not have the stages of
    :func:`tvm_structconv.winograd.winograd_structured_conv2d_nhwc`.
    """
    producers, consumers = stages_around(sch, gemm)
    names = [sch.get(b).name_hint for b in producers[-2:] + consumers[:2]]
    expected = ["winograd_input_rows", "winograd_input", "winograd_output_rows", "winograd_output"]
    if names != expected:
        return False
    *pool_stages, input_rows, input_tiles = producers
    output_rows, output, *epilogue = consumers
    lanes = vector_lanes(target)
    stmt = sch.get(gemm)
    positions, _, batch, tiles_h, tiles_w, _ = (int(d) for d in stmt.writes[0].source.shape)
    block = int(stmt.reads[1].source.shape[-1])
    if tiling is None:
        out_channels = int(sch.get(output).writes[0].source.shape[-1])
        tiling = choose_winograd_tiling(
            tiles_h, tiles_w, block, target, batch=batch, out_channels=out_channels
        )

    head, tail = split_epilogue(sch, output, epilogue)
    for extra in head[:-1]:
        sch.compute_inline(extra)
    schedule_tail(sch, tail, target)
    if head:
        sch.reverse_compute_inline(head[-1])

    # the output (the anchor: the transforms read constant positions, which compute_at's
    # region analysis of a consumer cannot solve): chunk of tile rows → tile → channel vector
    tile_size = positions - 1
    n, y, x, k = sch.get_loops(output)
    y_chunk, y_tile, y_in = sch.split(y, [None, tiling.rows, tile_size])
    x_tile, x_in = sch.split(x, [None, tile_size])
    k_chunk, k = sch.split(k, [tiling.channel_chunks, None])
    k_outer, k_vector = sch.split(k, [None, lanes]) if extent(sch, k) % lanes == 0 else (k, None)
    sch.reorder(n, y_chunk, k_chunk, y_tile, x_tile, k_outer, y_in, x_in)
    chunk = sch.fuse(n, y_chunk, k_chunk)
    sch.parallel(chunk)
    sch.compute_at(output_rows, k_outer, preserve_unit_loops=True)
    _unroll_all(sch, [y_in, x_in])
    if k_vector is not None:
        sch.vectorize(k_vector)
    *_, eta, nu_out, k_rows = sch.get_loops(output_rows)
    _unroll_all(sch, [eta, nu_out])
    if k_vector is not None:
        sch.vectorize(k_rows)

    # the GEMM per chunk: position → channel block → register tile → c → tiles → lanes
    sch.compute_at(gemm, chunk, preserve_unit_loops=True)
    xi, nu, n, th, tw, k, c = sch.get_loops(gemm)[-7:]
    k_block, k_lane = sch.split(k, [None, block])
    sch.reorder(xi, nu, k_block, n, th, tw, c, k_lane)
    tile = sch.fuse(n, th, tw)
    tile_outer, tile_inner = sch.split(tile, [None, tiling.tiles])
    sch.reorder(tile_outer, c, tile_inner, k_lane)
    write_back = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(write_back, tile_outer, preserve_unit_loops=True)

    # the input transform per chunk: per tile and channel vector, unrolled
    sch.compute_at(input_tiles, chunk, preserve_unit_loops=True)
    loops = sch.get_loops(input_tiles)
    xi_in, nu_in, _, th_v, tw_v, c_v = loops[-6:]
    c_outer, c_vector = (
        sch.split(c_v, [None, lanes]) if extent(sch, c_v) % lanes == 0 else (c_v, None)
    )
    sch.reorder(th_v, tw_v, c_outer, xi_in, nu_in)
    if c_vector is not None:
        sch.vectorize(c_vector)
    _unroll_all(sch, [xi_in, nu_in])
    sch.compute_at(input_rows, c_outer, preserve_unit_loops=True)
    *_, i_rows, nu_rows, c_rows = sch.get_loops(input_rows)
    _unroll_all(sch, [i_rows, nu_rows])
    if c_vector is not None:
        sch.vectorize(c_rows)

    # S per chunk: padding inlined into the first window sum, each stage vectorized
    while len(pool_stages) > 1 and sch.get(pool_stages[0]).name_hint == "pad":
        sch.compute_inline(pool_stages[0])
        pool_stages = pool_stages[1:]
    for stage in reversed(pool_stages):
        sch.compute_at(stage, chunk, preserve_unit_loops=True)
    for stage in pool_stages:
        vector_partition(sch, sch.get_loops(stage)[-1], lanes)

    sch.unroll(tile_inner)
    sch.vectorize(k_lane)
    init = sch.decompose_reduction(gemm, c)
    for other in (write_back, init):
        tile_loop, lane_loop = sch.get_loops(other)[-2:]
        sch.unroll(tile_loop)
        sch.vectorize(lane_loop)
    return True


class WinogradRule(TargetRule):
    """Schedules a PrimFunc holding the Winograd structured conv, else ``None``."""

    def schedule(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func`` for ``target``, or ``None`` when ``func`` is not this op."""
        sch = s_tir.Schedule(func)
        gemm = find_winograd_block(sch)
        if gemm is None:
            return None
        return sch if schedule_winograd(sch, gemm, target) else None


@tvm.register_global_func(f"s_tir.meta_schedule.cpu.{WINOGRAD_RULE}", override=True)
def _meta_schedule_rule(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
) -> Sequence[s_tir.Schedule]:
    """MetaSchedule custom rule of the Winograd GEMM block: the hand schedule, one space.

    Called without a target in scope while MetaSchedule generates design spaces: the target
    is then this host (as for the direct conv's rule).
    """
    target = Target.current(allow_none=True) or host_target()
    space = sch.copy()
    if not schedule_winograd(space, block, target):
        return [sch]
    schedule_whole_function(space, block)
    return [space]
