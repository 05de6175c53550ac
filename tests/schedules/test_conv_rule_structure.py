"""The loop nest of the CPU conv template, read off the scheduled function for a fixed AVX-512
target, and each scheduled conv exact against torch (schedules mutation survivors of
``schedules/cpu/conv.py``).

What the module docstring of ``cpu/conv.py`` promises, checked block by block: one parallel loop
of tasks (batch, rows, output-channel chunks) outermost in every block; the window-sum stages
computed per task, vectorized over channels in whole registers, the padding inlined into the
first of them; the conv's loops output-channel block → row → pixel tile → kernel row → kernel
column → input channel → pixels (unrolled) → output channels (vectorized), the channel loop
unrolled when it is at most 4 long; the accumulator's init and write-back with the same
unrolled pixels and vector; on AArch64-style unrolling, the pixel's input channels loaded as
one vector.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest
import tvm
from loop_nests import AVX512, PARALLEL, SERIAL, UNROLLED, VECTORIZED, block_names, nest
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.cpu import conv
from tvm_structconv.structure import Structure

from conv_oracle import oracle, random_case


def conv_func(
    structure: Structure,
    out_channels: int,
    size: Tuple[int, int],
    block: int,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
) -> Tuple[tvm.tirx.PrimFunc, List[int]]:
    """The NHWC structured conv's PrimFunc with ``alpha`` packed in blocks of ``block``."""
    data = te.placeholder((1, *size, structure.in_channels), name="data")
    alpha = te.placeholder(
        (
            out_channels // block,
            *structure.reduced_kernel_size,
            structure.reduced_channels // structure.groups,
            block,
        ),
        name="alpha",
    )
    out = ops.structured_conv2d_nhwc(data, alpha, structure, stride, padding)
    return te.create_prim_func([data, alpha, out]), [int(d) for d in out.shape]


def schedule(func: tvm.tirx.PrimFunc, unroll: Optional[int] = None) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    assert conv.schedule_structured_conv2d(
        sch, ops.find_structured_block(sch), AVX512, unroll=unroll
    )
    return sch


def check_exact(sch, structure, out_channels, size, block, out_shape, stride, padding, seed=0):
    """Run the scheduled conv on the host and compare with torch's conv of the composed kernel."""
    x, alpha = random_case(structure, out_channels, size, seed)
    result = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    host = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    tvm.compile(sch.mod, target=host)(
        tvm.runtime.tensor(x.transpose(0, 2, 3, 1).copy()),
        tvm.runtime.tensor(ops.pack_alpha(alpha, block)),
        result,
    )
    expected = oracle(x, alpha, structure, stride, padding, 1)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_structured_3x3_conv_loop_nest_on_avx512():
    """C = 32, c = 16, 3x3 -> 2x2, 32 outputs in one 32-lane block, 14x14, padding 1: two
    tasks of 7 rows (the parallel loop of every block); the four window sums per task, the
    padding inlined into the first; the conv row → tile of 14 pixels → 2x2 kernel → 16
    channels → 14 pixels unrolled → 32 lanes vectorized."""
    structure = Structure(32, 3, 16, 2)
    func, out_shape = conv_func(structure, 32, (14, 14), 32, padding=(1, 1, 1, 1))
    sch = schedule(func)
    names = block_names(sch)
    assert not [name for name in names if name.startswith("pad")]  # inlined into S
    task = (PARALLEL, 2)
    for stage in ("pool_channel_16", "pool_channel", "pool_width", "pool_height"):
        loops = nest(sch, stage)
        assert loops[0] == task and loops[-1] == (VECTORIZED, 16), (stage, loops)
    # the first stage, 31 channels, in one vector of 16 and a scalar rest of 15 (read padded)
    assert nest(sch, "pool_channel_2_ax30") == [(VECTORIZED, 16)]
    assert nest(sch, "pool_channel_2_ax31") == [(SERIAL, 14)]
    assert nest(sch, "structured_conv2d_update") == [
        task,
        (SERIAL, 1),  # chunks of output-channel blocks in the task
        (SERIAL, 7),  # rows
        (SERIAL, 1),  # pixel tiles
        (SERIAL, 2),  # kernel rows
        (SERIAL, 2),  # kernel columns
        (SERIAL, 16),  # reduced channels: more than 4, not unrolled
        (UNROLLED, 14),  # pixels of the tile
        (VECTORIZED, 32),  # output channels of the block
    ]
    tile = [(UNROLLED, 14), (VECTORIZED, 32)]
    assert (
        nest(sch, "structured_conv2d_init") == [task, (SERIAL, 1), (SERIAL, 7), (SERIAL, 1)] + tile
    )
    assert (
        nest(sch, "structured_conv2d_local")
        == [task, (SERIAL, 1), (SERIAL, 7), (SERIAL, 1)] + [(SERIAL, 1)] * 2 + tile
    )
    check_exact(sch, structure, 32, (14, 14), 32, out_shape, 1, (1, 1, 1, 1))


def test_unrolled_input_channels_are_one_vector_load_per_pixel():
    """The same conv with 4 input channels unrolled inside the pixel loop (AArch64's form): the
    channel loop split 4 × 4, the 4 unrolled innermost but the lanes, and the pixel's 4
    channels of S read into registers by a vector load under the pixel loop."""
    structure = Structure(32, 3, 16, 2)
    func, out_shape = conv_func(structure, 32, (14, 14), 32, padding=(1, 1, 1, 1))
    sch = schedule(func, unroll=4)
    assert nest(sch, "structured_conv2d_update")[-6:] == [
        (SERIAL, 2),
        (SERIAL, 2),
        (UNROLLED, 4),  # 16 channels / 4: at most 4, unrolled too
        (UNROLLED, 7),
        (UNROLLED, 4),
        (VECTORIZED, 32),
    ]
    load = nest(sch, "pool_height_local")
    assert load[:8] == nest(sch, "structured_conv2d_update")[:8]  # under the pixel loop
    assert load[-1] == (VECTORIZED, 4)
    check_exact(sch, structure, 32, (14, 14), 32, out_shape, 1, (1, 1, 1, 1))


def test_channels_the_unroll_does_not_divide_keep_the_channel_loop_outside():
    """12 reduced channels with an unroll of 8: no split, no vector load of S; exact."""
    structure = Structure(24, 1, 12, 1)
    func, out_shape = conv_func(structure, 16, (6, 6), 16)
    sch = schedule(func, unroll=8)
    assert not [name for name in block_names(sch) if name.endswith("_local") and "conv" not in name]
    assert nest(sch, "structured_conv2d_update")[-3:] == [
        (SERIAL, 12),
        (UNROLLED, 6),
        (VECTORIZED, 16),
    ]
    check_exact(sch, structure, 16, (6, 6), 16, out_shape, 1, (0, 0, 0, 0))


def test_a_single_input_channel_is_not_split_by_the_unroll():
    """One reduced channel per group (a depthwise conv) with an unroll of 4: the loop of one
    channel is neither split nor given a vector load (it is unrolled: at most 4 long)."""
    structure = Structure(8, 3, 8, 2, groups=8)
    func, out_shape = conv_func(structure, 8, (9, 9), 8, padding=(1, 1, 1, 1))
    sch = schedule(func, unroll=4)
    assert not [name for name in block_names(sch) if name.endswith("_local") and "conv" not in name]
    update = nest(sch, "structured_conv2d_update")
    assert update[-3:] == [(UNROLLED, 1), (UNROLLED, 9), (VECTORIZED, 8)]
    check_exact(sch, structure, 8, (9, 9), 8, out_shape, 1, (1, 1, 1, 1))


def test_few_input_channels_are_unrolled_and_a_strided_1x1_subsamples_inside_the_pool():
    """c = 4 of C = 8, 1x1, stride 2: the subsampling inlined into the first window sum (no
    stage of its own), the 4-channel loop unrolled; exact."""
    structure = Structure(8, 1, 4, 1)
    func, out_shape = conv_func(structure, 16, (9, 9), 16, stride=(2, 2))
    sch = schedule(func)
    assert not [name for name in block_names(sch) if name.startswith(("subsample", "pad"))]
    assert nest(sch, "structured_conv2d_update")[-3:] == [
        (UNROLLED, 4),
        (UNROLLED, 5),
        (VECTORIZED, 16),
    ]
    check_exact(sch, structure, 16, (9, 9), 16, out_shape, (2, 2), (0, 0, 0, 0))


def test_a_block_of_one_output_channel_is_not_vectorized():
    """Packed in blocks of one output channel (3 outputs): the lane loops stay scalar, in the
    conv, its init and its write-back; exact."""
    structure = Structure(8, 1, 8, 1)
    func, out_shape = conv_func(structure, 3, (4, 4), 1)
    sch = schedule(func)
    for block in ("structured_conv2d_update", "structured_conv2d_init", "structured_conv2d_local"):
        assert nest(sch, block)[-1] == (SERIAL, 1), block
        assert VECTORIZED not in [kind for kind, _ in nest(sch, block)]
    check_exact(sch, structure, 3, (4, 4), 1, out_shape, 1, (0, 0, 0, 0))


@pytest.mark.parametrize("layout_is_nhwc", [True, False])
def test_the_template_takes_the_nhwc_conv_only(layout_is_nhwc):
    """``schedule_structured_conv2d`` answers ``False`` and leaves an NCHW conv untouched."""
    structure = Structure(8, 3, 4, 2)
    if layout_is_nhwc:
        func, _ = conv_func(structure, 8, (6, 6), 8)
    else:
        data = te.placeholder((1, 8, 6, 6), name="data")
        alpha = te.placeholder(structure.alpha_shape(8), name="alpha")
        func = te.create_prim_func([data, alpha, ops.structured_conv2d(data, alpha, structure)])
    sch = s_tir.Schedule(func)
    before = sch.mod.script()
    done = conv.schedule_structured_conv2d(sch, ops.find_structured_block(sch), AVX512)
    assert done == layout_is_nhwc
    assert (sch.mod.script() == before) == (not layout_is_nhwc)


def test_an_unroll_of_two_input_channels_is_split_and_loaded_as_one_vector():
    """12 reduced channels with an unroll of 2: the channel loop split 6 × 2, the pair of S
    values of a pixel one 2-lane vector load; exact."""
    structure = Structure(24, 1, 12, 1)
    func, out_shape = conv_func(structure, 16, (6, 6), 16)
    sch = schedule(func, unroll=2)
    loads = [name for name in block_names(sch) if name.endswith("_local") and "conv" not in name]
    assert len(loads) == 1 and nest(sch, loads[0])[-1] == (VECTORIZED, 2)
    assert nest(sch, "structured_conv2d_update")[-4:] == [
        (SERIAL, 6),
        (UNROLLED, 6),
        (UNROLLED, 2),
        (VECTORIZED, 16),
    ]
    check_exact(sch, structure, 16, (6, 6), 16, out_shape, 1, (0, 0, 0, 0))
