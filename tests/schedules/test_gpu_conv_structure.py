"""The CUDA template's tile arithmetic and the loop nest it builds, read off the scheduled
function without a GPU (schedules mutation survivors of ``schedules/gpu/conv.py``; its numerics
need a GPU: ``benchmarks/gpu_speedup.py``).

One thread block per tile of ``ot·ov`` output channels × ``yt`` rows × ``xt·xv`` columns, its
threads bound to ``threadIdx.x``; per chunk of reduced channels the pool stages and the
``alpha`` tile are computed into shared memory by all the block's threads together; the reduced
conv's kernel and per-thread loops unrolled; the epilogue applied in the write-back.
"""

from __future__ import annotations

import re
from typing import List, Tuple

import pytest
import tvm
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.gpu import conv as cuda
from tvm_structconv.structure import Structure

CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
HOST = tvm.target.Target({"kind": "llvm", "num-cores": 2})

UNROLLED, THREAD_BINDING = tvm.tirx.ForKind.UNROLLED, tvm.tirx.ForKind.THREAD_BINDING


def nest(sch: s_tir.Schedule, block: str) -> List[Tuple[tvm.tirx.ForKind, int, str]]:
    """(kind, extent, thread tag or "") of each loop around ``block``, outermost first."""
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock(block))]
    return [
        (
            loop.kind,
            int(loop.extent),
            str(loop.thread_binding.thread_tag) if loop.thread_binding is not None else "",
        )
        for loop in loops
    ]


@pytest.mark.parametrize(
    "out_channels, width, reduced, area, tiling",
    [
        # (ov, ot, yt, xv, xt, rc)
        (64, 56, 64, 4, (1, 32, 1, 2, 7, 16)),  # 28 column pairs: 7 threads
        (32, 8, 8, 4, (1, 32, 1, 2, 4, 8)),  # width 8: two columns per thread
        (32, 6, 8, 4, (1, 32, 1, 1, 6, 8)),  # even but under 8: one column per thread
        (24, 7, 20, 9, (1, 24, 1, 1, 7, 10)),  # 24 channels: 24 threads; 20 -> chunks of 10
        (48, 14, 17, 9, (1, 24, 1, 2, 7, 1)),  # 48: 24 threads (its largest divisor to 32); prime
        (64, 112, 3, 49, (1, 32, 1, 2, 8, 1)),  # the stem: 32·rc·49 floats within 16 KiB
    ],
)
def test_tiling_by_hand(out_channels, width, reduced, area, tiling):
    chosen = cuda.choose_cuda_tiling(1, out_channels, width, width, reduced, area)
    assert (chosen.ov, chosen.ot, chosen.yt, chosen.xv, chosen.xt, chosen.rc) == tiling
    assert chosen.threads == chosen.ot * chosen.yt * chosen.xt


@pytest.mark.parametrize(
    "reduced, per_block, area, chunk",
    [
        (64, 32, 4, 16),  # up to 16
        (64, 32, 32, 4),  # 16384 / (4·32·32) = 4
        (64, 32, 33, 2),  # 16384 / (4·32·33) = 3.9: 3 is no divisor of 64, 2 is
        (48, 32, 8, 16),  # 16384 / (4·32·8) = 16 exactly
        (48, 32, 9, 12),  # 14.2: the largest divisor of 48 within 14 is 12
        (64, 32, 200, 1),  # under one channel fits: still one
    ],
)
def test_chunks_keep_the_alpha_tile_within_its_budget(reduced, per_block, area, chunk):
    assert cuda.chunk_channels(reduced, per_block, area) == chunk
    assert chunk == 1 or 4 * per_block * chunk * area <= cuda.ALPHA_BUDGET


def conv_with_relu(structure: Structure, out_channels: int, size: int) -> tvm.tirx.PrimFunc:
    data = te.placeholder((1, structure.in_channels, size, size), name="data")
    alpha = te.placeholder(structure.alpha_shape(out_channels), name="alpha")
    pad = structure.kernel_size[0] // 2
    out = ops.structured_conv2d(data, alpha, structure, (1, 1), (pad,) * 4)
    relu = te.compute(out.shape, lambda *i: te.max(out(*i), 0.0), name="relu")
    return te.create_prim_func([data, alpha, relu])


def test_loop_nest_of_a_small_structured_conv():
    """C = 16, c = 8, 3x3 -> 2x2, 32 outputs, 8x8: tiling (1, 32, 1, 2, 4, 8) -> 8 blocks of
    128 threads; one chunk of 8 channels; every pool stage and alpha in shared memory, computed
    by the 128 threads; the 2x2 kernel and the thread's 1x2 outputs unrolled; ReLU in the
    write-back."""
    sch = s_tir.Schedule(conv_with_relu(Structure(16, 3, 8, 2), 32, 8))
    assert cuda.schedule_structured_conv2d_cuda(sch, ops.find_structured_block(sch))
    names = [n for n in re.findall(r'T\.sblock\("(\w+)"\)', sch.mod.script()) if n != "root"]
    assert "relu" not in names  # applied in the write-back
    blocks, threads = (THREAD_BINDING, 8, "blockIdx.x"), (THREAD_BINDING, 128, "threadIdx.x")
    stages = ["pad", "pool_channel_2", "pool_channel_4", "pool_channel_8", "pool_channel"]
    stages += ["pool_width", "pool_height", "alpha_shared"]
    for stage in stages:
        loops = nest(sch, stage)
        assert loops[:3] == [blocks, threads, (tvm.tirx.ForKind.SERIAL, 1, "")], stage
        assert loops[-1] == threads, stage  # the copy spread over the block's threads
    assert nest(sch, "alpha_shared")[3][1] == 32 * 8 * 2 * 2 // 128
    assert nest(sch, "structured_conv2d_update") == [
        blocks,
        threads,
        (tvm.tirx.ForKind.SERIAL, 1, ""),  # chunks of reduced channels
        (tvm.tirx.ForKind.SERIAL, 8, ""),  # channels of the chunk
        (UNROLLED, 2, ""),
        (UNROLLED, 2, ""),
        (UNROLLED, 1, ""),  # output channels per thread
        (UNROLLED, 2, ""),  # columns per thread
    ]
    assert nest(sch, "structured_conv2d_init") == [
        blocks,
        threads,
        (UNROLLED, 1, ""),
        (UNROLLED, 2, ""),
    ]
    script = sch.mod.script()
    for buffer in ("pad", "pool_channel", "pool_width", "pool_height", "alpha"):
        assert re.search(
            rf"{buffer}_shared = T\.sblock_alloc_buffer\([^\n]*scope=\"shared\"", script
        )
    assert 0 < cuda.shared_bytes(sch.mod["main"]) <= cuda.SHARED_BUDGET


def test_the_rule_falls_back_to_dlight_where_the_tiles_do_not_fit():
    """An input tile too large for shared memory (a channel window of 255 of 256 channels for
    each of the 2 reduced channels): dlight's Fallback schedule (no shared buffer), not the
    template; a CPU target or a function without the conv: ``None``."""
    structure = Structure(256, 3, 2, 2)
    func = conv_with_relu(structure, 64, 16)
    sch = s_tir.Schedule(func)
    assert cuda.schedule_structured_conv2d_cuda(sch, ops.find_structured_block(sch))
    assert cuda.shared_bytes(sch.mod["main"]) > cuda.SHARED_BUDGET  # what the rule checks
    with CUDA:
        fallback = cuda.StructuredConv2dCUDA().apply(func, CUDA, False)
    assert fallback is not None and 'scope="shared"' not in fallback.mod.script()
    small = conv_with_relu(Structure(16, 3, 8, 2), 32, 8)
    with CUDA:
        template = cuda.StructuredConv2dCUDA().apply(small, CUDA, False)
    assert template is not None and 'scope="shared"' in template.mod.script()
    assert cuda.StructuredConv2dCUDA().apply(small, HOST, False) is None
    a = te.placeholder((4, 4), name="a")
    elementwise = te.create_prim_func([a, te.compute((4, 4), lambda i, j: a[i, j] + 1)])
    assert cuda.StructuredConv2dCUDA().apply(elementwise, CUDA, False) is None
