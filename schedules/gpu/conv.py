"""CUDA schedule of the fused structured conv (NCHW): shared-memory tiles of ``S`` and ``alpha``.

One thread block computes a tile of ``ov·ot`` output channels × ``yt`` rows × ``xv·xt`` columns
of one image; its ``ot·yt·xt`` threads each accumulate ``ov × xv`` outputs in registers. The
reduction over the reduced channels runs in chunks of ``rc``; for each chunk the block

1. computes the chunk's tile of ``S`` *in shared memory* from the (zero-padded) input: every
   pool stage (channel, width, height window sums, each one a few adds per element) is
   computed at the chunk loop into shared memory by all threads together, so ``S`` is never
   written to global memory;
2. copies the chunk's ``alpha`` tile to shared memory;
3. runs the reduced conv out of shared memory (``rc × nh × nw`` FMAs per output, unrolled).

The fused epilogue (bias, ReLU/ReLU6, residual add) is applied when the accumulators are
written back. With the trivial structure (an ordinary conv, ``D = M = 1``) the only producer
is the padding stage, which then holds the input tile: the same template serves both builds.

A function the template does not fit (shared memory over budget, or an unexpected shape) is
left to dlight's ``Fallback`` (spatial loops bound to blocks and threads, the reduction serial).
dlight's own GPU ``Reduction`` rule asserts on the pool stages (window reads) instead of
declining, so every function holding the fused op is answered here, before dlight's rules run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from tvm_structconv.ops import SCHEDULE_RULE, schedule_of_conv, stages_around
from tvm_structconv.schedules.base import SCHEDULE_FAILURES, TargetRule, schedule_whole_function
from tvm_structconv.schedules.target_info import divisors

__all__ = [
    "CudaTiling",
    "StructuredConv2dCUDA",
    "choose_cuda_tiling",
    "chunk_channels",
    "schedule_structured_conv2d_cuda",
    "shared_bytes",
]

#: Shared memory per block the template may use, bytes (under the 48 KiB static limit).
SHARED_BUDGET = 40 * 1024
#: Shared memory for the ``alpha`` tile of one chunk, bytes.
ALPHA_BUDGET = 16 * 1024


@dataclass(frozen=True)
class CudaTiling:
    """Tile sizes of one conv on the GPU.

    Attributes
    ----------
    ov, ot
        Output channels per thread, threads over output channels.
    yt
        Threads over output rows (one row each).
    xv, xt
        Output columns per thread, threads over columns.
    rc
        Reduced channels per shared-memory chunk.
    """

    ov: int
    ot: int
    yt: int
    xv: int
    xt: int
    rc: int

    @property
    def threads(self) -> int:
        """Threads per block."""
        return self.ot * self.yt * self.xt


def shared_bytes(func: tirx.PrimFunc) -> int:
    """Shared memory one block of a scheduled ``func`` allocates, in bytes (buffers compacted)."""
    from tvm.s_tir import analysis, transform

    mod = tvm.IRModule({"main": func})
    mod = tvm.transform.Sequential(
        [
            transform.LowerInitBlock(),
            transform.PlanAndUpdateBufferAllocationLocation(),
            transform.ConvertBlocksToOpaque(),
            transform.CompactBufferAllocation(),
            transform.LowerOpaqueBlock(),
        ]
    )(mod)
    sizes = analysis.calculate_allocated_bytes(mod)
    return int(sum(int(v) for scope, v in sizes["main"].items() if str(scope) == "shared"))


def choose_cuda_tiling(
    batch: int, out_channels: int, out_height: int, out_width: int, reduced: int, kernel_area: int
) -> CudaTiling:
    """Tile sizes for a ``(batch, out_channels, out_height, out_width)`` output.

    One output channel and one row per thread, 32 threads over channels (a divisor of the
    channels), two columns per thread for even widths of 8 or more and up to 8 threads over
    columns; chunks of up to 16 reduced channels, fewer where the chunk's ``alpha`` tile would
    pass :data:`ALPHA_BUDGET` (a 7×7 stem).

    Fitted to a sweep of ten tilings over ResNet-18's convs on an H200
    (``benchmarks/results/gpu_tiling_sweep-h200.json``): this one was the fastest that fits
    every layer, 2.5–6× faster than 4 channels per thread (the thread count is what matters
    at batch 1: a 7×7 layer with 4 channels per thread ran 28-thread blocks).
    """
    ov, yt = 1, 1
    xv = 2 if out_width % 2 == 0 and out_width >= 8 else 1
    xt = max(divisors(out_width // xv, 8))
    ot = max(divisors(out_channels, 32))
    return CudaTiling(ov, ot, yt, xv, xt, chunk_channels(reduced, ov * ot, kernel_area))


def chunk_channels(reduced: int, out_channels_per_block: int, kernel_area: int) -> int:
    """Reduced channels per chunk: up to 16, fewer where the chunk's ``alpha`` tile
    (``out_channels_per_block × rc × kernel_area`` floats) would pass :data:`ALPHA_BUDGET`."""
    bound = ALPHA_BUDGET // (4 * out_channels_per_block * kernel_area)
    return max(divisors(reduced, max(min(16, bound), 1)))


def _is_nchw_conv(sch: s_tir.Schedule, conv: s_tir.schedule.SBlockRV) -> bool:
    stmt = sch.get(conv)
    return (
        len(stmt.reads) == 2
        and len(stmt.reads[1].source.shape) == 4
        and len(stmt.iter_vars) == 7
        and len(sch.get_loops(conv)) == 7
    )


def _cooperative(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, depth: int, threads: int
) -> None:
    """Bind the loops of ``block`` below the first ``depth`` loops to ``threadIdx.x``.

    ``block`` is a copy or an elementwise pool stage: all its loops are spatial.
    """
    loops = sch.get_loops(block)[depth:]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, inner = sch.split(fused, [None, threads])
    sch.bind(inner, "threadIdx.x")


def schedule_structured_conv2d_cuda(
    sch: s_tir.Schedule, conv: s_tir.schedule.SBlockRV, tiling: Optional[CudaTiling] = None
) -> bool:
    """Schedule the NCHW fused conv ``conv``, its pool stages and epilogue in place.

    Returns ``False`` (``sch`` untouched) when the function is not of the expected shape.
    Whether the tiles fit in shared memory is checked on the result (:func:`shared_bytes`).
    """
    if not _is_nchw_conv(sch, conv):
        return False
    producers, epilogue = stages_around(sch, conv)
    stmt = sch.get(conv)
    batch, out_channels, out_height, out_width = (int(d) for d in stmt.writes[0].source.shape)
    _, reduced, kernel_h, kernel_w = (int(d) for d in stmt.reads[1].source.shape)
    if tiling is None:
        tiling = choose_cuda_tiling(
            batch, out_channels, out_height, out_width, reduced, kernel_h * kernel_w
        )
    for extra in epilogue[:-1]:
        sch.compute_inline(extra)

    n, o, y, x, rc, ry, rx = sch.get_loops(conv)
    o_block, o_thread, o_vec = sch.split(o, [None, tiling.ot, tiling.ov])
    y_block, y_thread = sch.split(y, [None, tiling.yt])
    x_block, x_thread, x_vec = sch.split(x, [None, tiling.xt, tiling.xv])
    rc_outer, rc_inner = sch.split(rc, [None, tiling.rc])
    sch.reorder(
        n,
        o_block,
        y_block,
        x_block,
        o_thread,
        y_thread,
        x_thread,
        rc_outer,
        rc_inner,
        ry,
        rx,
        o_vec,
        x_vec,
    )
    block_loop = sch.fuse(n, o_block, y_block, x_block)
    thread_loop = sch.fuse(o_thread, y_thread, x_thread)
    sch.bind(block_loop, "blockIdx.x")
    sch.bind(thread_loop, "threadIdx.x")

    write_back = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(write_back, thread_loop, preserve_unit_loops=True)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])

    alpha_shared = sch.cache_read(conv, 1, "shared")
    sch.compute_at(alpha_shared, rc_outer, preserve_unit_loops=True)

    for producer in reversed(producers):
        # shared before compute_at, so that the region relaxes over the block's threads
        sch.set_scope(producer, 0, "shared")
        sch.compute_at(producer, rc_outer, preserve_unit_loops=True)
    depth = len(sch.get_loops(alpha_shared)) - 4  # the loops above the copy: block, thread, chunk
    for stage in [*producers, alpha_shared]:
        _cooperative(sch, stage, depth, tiling.threads)

    for loop in (ry, rx, o_vec, x_vec):
        sch.unroll(loop)
    sch.decompose_reduction(conv, rc_outer)
    return True


def _fits(sch: s_tir.Schedule) -> bool:
    return shared_bytes(sch.mod["main"]) <= SHARED_BUDGET


class StructuredConv2dCUDA(TargetRule):
    """The shared-memory template for functions holding the fused conv; else ``None``.

    A function holding the fused conv that the template declines gets dlight's ``Fallback``
    schedule instead.
    """

    family = "gpu"

    def schedule(
        self, func: tirx.PrimFunc, target: Target, tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """Schedule ``func`` if it holds the fused structured conv."""
        found = schedule_of_conv(func)
        if found is None:
            return None
        sch, conv = found
        try:
            if schedule_structured_conv2d_cuda(sch, conv) and _fits(sch):
                return sch
        except SCHEDULE_FAILURES:
            pass
        return dlight.gpu.Fallback().apply(func, target, tunable)


@tvm.register_global_func(f"s_tir.meta_schedule.cuda.{SCHEDULE_RULE}", override=True)
def _meta_schedule_rule(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
) -> List[s_tir.Schedule]:
    """MetaSchedule custom rule for CUDA targets (key ``cuda``): the shared-memory template.

    The whole function is scheduled, so the other blocks and the root are marked
    ``schedule_rule = "None"``; a function the template does not fit is left to
    MetaSchedule's own GPU rules.
    """
    space = sch.copy()
    if not schedule_structured_conv2d_cuda(space, block) or not _fits(space):
        return [sch]
    schedule_whole_function(space, block)
    return [space]
