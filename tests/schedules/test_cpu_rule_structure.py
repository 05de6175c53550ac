"""The loop nests the generic CPU rules build (pools, global pooling, dense, elementwise ops,
concatenations and the fallback), read off the scheduled function for a fixed AVX-512 target,
and each scheduled function exact against numpy or torch (schedules mutation survivors).

The CPU rules' design, as each test checks it: work below ``PARALLEL_MIN_WORK`` runs on one
thread, above it the outer spatial loops are fused into one parallel loop; the innermost loop of
every block is a vector of the longest width :func:`vector_widths` allows (up to
``VECTOR_REGISTERS`` registers; in the reduction rule a power-of-two number of registers);
producers and epilogues are inlined, a pool's padding too (into its window reads), and a 2-D
pool runs in parallel over (batch, output row).
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from loop_nests import AVX512, PARALLEL, SERIAL, VECTORIZED, block_names, nest
from tvm import s_tir, te, topi

from tvm_structconv.schedules.cpu.blocks import (
    PARALLEL_MIN_WORK,
    VECTOR_REGISTERS,
    parallelize,
    work,
)
from tvm_structconv.schedules.cpu.fallback import Fallback
from tvm_structconv.schedules.cpu.injective import Injective
from tvm_structconv.schedules.cpu.reduction import ChannelReduction
from tvm_structconv.schedules.target_info import vector_widths


def kinds(loops: Sequence[Tuple[tvm.tirx.ForKind, int]]) -> List[tvm.tirx.ForKind]:
    return [kind for kind, _ in loops]


def run(sch_or_func, arrays: Sequence[np.ndarray], out_shape: Sequence[int]) -> np.ndarray:
    """Compile for the host (the schedule's loop nest is the same) and run on ``arrays``."""
    module = sch_or_func.mod if isinstance(sch_or_func, s_tir.Schedule) else sch_or_func
    host = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    result = tvm.runtime.tensor(np.zeros(tuple(out_shape), "float32"))
    tvm.compile(module, target=host)(*(tvm.runtime.tensor(a) for a in arrays), result)
    return result.numpy()


#: AVX512's float lanes.
LANES = 16


def widest(total: int) -> int:
    """The channel vector the rules choose for ``total`` channels on :data:`AVX512`."""
    return max(vector_widths(total, LANES, VECTOR_REGISTERS))


def widest_reduction(total: int) -> int:
    """The channel vector of the reduction rule: 1, 2 or 4 whole registers, or less than one."""
    return max(
        w for w in vector_widths(total, LANES, VECTOR_REGISTERS) if w // LANES in (0, 1, 2, 4)
    )


# --- ChannelReduction -------------------------------------------------------------------------


def pool(size: int, channels: int, kernel: int, stride: int, padding: int, kind: str = "max"):
    x = te.placeholder((1, size, size, channels), name="x")
    y = topi.nn.pool2d(x, (kernel,) * 2, (stride,) * 2, (1, 1), (padding,) * 4, kind, False, "NHWC")
    return x, y


def torch_pool(data: np.ndarray, kernel: int, stride: int, padding: int, kind: str) -> np.ndarray:
    nchw = torch.from_numpy(data).permute(0, 3, 1, 2).double()
    if kind == "max":
        out = torch.nn.functional.max_pool2d(nchw, kernel, stride, padding)
    else:
        out = torch.nn.functional.avg_pool2d(nchw, kernel, stride, padding)
    return out.permute(0, 2, 3, 1).numpy()


def test_padded_pool_reads_its_input_in_place_in_parallel_over_output_rows():
    """3x3/2 max-pool, padding 1, 14x14x64: no padded copy of the input (the padding test is
    in the window reads); parallel over the 7 output rows, then per pixel the 3x3 window over a
    64-lane vector accumulated in registers and written back."""
    x, y = pool(14, 64, 3, 2, 1)
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["pool_max_init", "pool_max_update", "pool_max_local"]
    update = sch.get(sch.get_sblock("pool_max_update"))
    assert [region.source.name for region in update.reads][-1] == "x"
    assert "if_then_else" in str(update.body)
    row = (PARALLEL, 7)
    assert nest(sch, "pool_max_update") == [
        row,
        (SERIAL, 7),
        (SERIAL, 1),
        (SERIAL, 3),
        (SERIAL, 3),
        (VECTORIZED, 64),
    ]
    assert nest(sch, "pool_max_init") == [row, (SERIAL, 7), (SERIAL, 1), (VECTORIZED, 64)]
    assert nest(sch, "pool_max_local") == [row, (SERIAL, 7), (SERIAL, 1)] + [(SERIAL, 1)] * 3 + [
        (VECTORIZED, 64)
    ]
    data = np.random.default_rng(0).standard_normal((1, 14, 14, 64)).astype("float32")
    np.testing.assert_array_equal(run(sch, [data], (1, 7, 7, 64)), torch_pool(data, 3, 2, 1, "max"))


def test_unpadded_pool_runs_its_output_rows_in_parallel():
    """2x2/2 max-pool of 32x32x128: parallel over the 16 output rows; per row the 16 columns
    and 2 channel vectors, the 2x2 window next, a vector of 64 channels innermost."""
    x, y = pool(32, 128, 2, 2, 0)
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["pool_max_init", "pool_max_update", "pool_max_local"]
    assert nest(sch, "pool_max_update") == [
        (PARALLEL, 16),
        (SERIAL, 16),
        (SERIAL, 2),
        (SERIAL, 2),
        (SERIAL, 2),
        (VECTORIZED, 64),
    ]
    assert nest(sch, "pool_max_init") == [
        (PARALLEL, 16),
        (SERIAL, 16),
        (SERIAL, 2),
        (VECTORIZED, 64),
    ]
    data = np.random.default_rng(1).standard_normal((1, 32, 32, 128)).astype("float32")
    np.testing.assert_array_equal(
        run(sch, [data], (1, 16, 16, 128)), torch_pool(data, 2, 2, 0, "max")
    )


@settings(max_examples=12, deadline=None)
@given(
    channels=st.integers(1, 70) | st.sampled_from([48, 96, 128, 192, 480]),
    size=st.integers(3, 12),
    kernel=st.sampled_from([2, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    kind=st.sampled_from(["max", "avg"]),
)
def test_pools_vector_their_channels_and_parallelize_above_the_minimum_work(
    channels, size, kernel, stride, padding, kind
):
    """Whatever the shape: the window's loops right above a vector of the widest channel width
    of 1, 2 or 4 registers, the same vector in the init and the write-back; one parallel loop
    over the output rows, outermost, exactly when the pool's work reaches
    ``PARALLEL_MIN_WORK``; padding and an average's divide inlined; exact."""
    x, y = pool(size, channels, kernel, stride, padding, kind)
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), AVX512, False)
    assert sch is not None
    reduction = f"pool_{'max' if kind == 'max' else 'sum'}"
    assert block_names(sch) == [
        f"{reduction}_init",
        f"{reduction}_update",
        f"{reduction}_local",
    ]
    width = widest_reduction(channels)
    vector = [(VECTORIZED, width)] if width > 1 else [(SERIAL, 1)]
    update = nest(sch, f"{reduction}_update")
    assert update[-3:] == [(SERIAL, kernel), (SERIAL, kernel)] + vector
    assert nest(sch, f"{reduction}_init")[-1:] == vector
    assert nest(sch, f"{reduction}_local")[-1:] == vector
    out_size = (size + 2 * padding - kernel) // stride + 1
    pool_work = out_size * out_size * channels * kernel * kernel
    parallel = [kind for kind in kinds(update) if kind == PARALLEL]
    assert parallel == ([PARALLEL] if pool_work >= PARALLEL_MIN_WORK else [])
    if parallel:
        assert update[0] == (PARALLEL, out_size)
    data = np.random.default_rng(channels).standard_normal((1, size, size, channels))
    data = data.astype("float32")
    got = run(sch, [data], (1, out_size, out_size, channels))
    expected = torch_pool(data, kernel, stride, padding, kind)
    if kind == "avg":  # topi counts the padding in the divisor; so does torch by default
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, expected)


def test_a_one_dimensional_padded_pool_reads_its_input_in_place():
    """NWC 1-D pool (three outer loops): the padding inlined into the window reads, 48
    channels as three 16-lane vectors (not one of 48: three registers read under a condition
    is slow code)."""
    x = te.placeholder((1, 20, 48), name="x")
    y = topi.nn.pool1d(x, (3,), (1,), (1,), (1, 1), "max", False, "NWC")
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["pool_max_init", "pool_max_update", "pool_max_local"]
    assert nest(sch, "pool_max_update") == [
        (SERIAL, 1),
        (SERIAL, 20),
        (SERIAL, 3),
        (SERIAL, 3),
        (VECTORIZED, 16),
    ]
    data = np.random.default_rng(2).standard_normal((1, 20, 48)).astype("float32")
    padded = np.pad(data, ((0, 0), (1, 1), (0, 0)), constant_values=-np.inf)
    expected = np.max([padded[:, i : i + 20] for i in range(3)], axis=0)
    np.testing.assert_array_equal(run(sch, [data], (1, 20, 48)), expected)


def dense_parts(outputs: int, inputs: int = 72):
    data = te.placeholder((1, inputs), name="data")
    weight = te.placeholder((inputs, outputs), name="weight")
    bias = te.placeholder((outputs,), name="bias")
    k = te.reduce_axis((0, inputs), name="k")
    product = te.compute(
        (1, outputs), lambda i, j: te.sum(data[i, k] * weight[k, j], axis=k), name="product"
    )
    return data, weight, bias, product


def test_dense_with_bias_and_relu_inlines_both_into_the_write_back():
    """``relu(x @ W + b)``, 40 outputs: two epilogue blocks, both computed in the write-back of
    the accumulator (8 lanes: the widest vector dividing 40), nothing left of them."""
    data, weight, bias, product = dense_parts(40)
    biased = te.compute((1, 40), lambda i, j: product[i, j] + bias[j], name="biased")
    relu = te.compute((1, 40), lambda i, j: te.max(biased[i, j], 0.0), name="relu")
    sch = ChannelReduction().apply(te.create_prim_func([data, weight, bias, relu]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["product_init", "product_update", "product_local"]
    assert nest(sch, "product_update") == [(SERIAL, 1), (SERIAL, 5), (SERIAL, 72), (VECTORIZED, 8)]
    assert nest(sch, "product_local") == [(SERIAL, 1), (SERIAL, 5), (SERIAL, 1), (VECTORIZED, 8)]
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(shape).astype("float32") for shape in [(1, 72), (72, 40), (40,)]]
    expected = np.maximum(arrays[0].astype(np.float64) @ arrays[1] + arrays[2], 0)
    np.testing.assert_allclose(run(sch, arrays, (1, 40)), expected, rtol=1e-5, atol=1e-5)


def test_a_reduction_the_rule_cannot_vectorize_along_the_channels_is_declined():
    """``x @ Wᵀ`` with ``W`` read as ``W[j, k]`` (a gather along the output axis), a read
    indexed by the output axis in an outer axis as well as the last, a total (no axis kept) and
    two reductions: not this rule's kind."""
    data = te.placeholder((1, 72), name="data")
    k = te.reduce_axis((0, 72), name="k")
    transposed = te.placeholder((40, 72), name="transposed")
    gather = te.compute((1, 40), lambda i, j: te.sum(data[i, k] * transposed[j, k], axis=k))
    assert (
        ChannelReduction().apply(te.create_prim_func([data, transposed, gather]), AVX512, False)
        is None
    )
    # reads cube[j, k, j]: the output index in an outer axis of a read as well as the last
    cube = te.placeholder((40, 72, 40), name="cube")
    mixed = te.compute((1, 40), lambda i, j: te.sum(data[i, k] * cube[j, k, j], axis=k))
    assert ChannelReduction().apply(te.create_prim_func([data, cube, mixed]), AVX512, False) is None
    # a total: no spatial axis kept at all
    square = te.placeholder((8, 8), name="square")
    r, c = te.reduce_axis((0, 8), name="r"), te.reduce_axis((0, 8), name="c")
    total = te.compute((), lambda: te.sum(square[r, c], axis=[r, c]), name="total")
    assert ChannelReduction().apply(te.create_prim_func([square, total]), AVX512, False) is None
    # two reductions in one function
    first = te.compute((8,), lambda i: te.sum(square[r, i], axis=r), name="first")
    s = te.reduce_axis((0, 8), name="s")
    second = te.compute((8,), lambda i: te.sum(first[s] * square[s, i], axis=s), name="second")
    assert ChannelReduction().apply(te.create_prim_func([square, second]), AVX512, False) is None


# --- Injective --------------------------------------------------------------------------------


def test_an_elementwise_chain_is_one_parallel_block_of_four_register_vectors():
    """x·2 + 1, then ReLU, over 1x8x16x128 (16384 elements): both producers inlined; one block,
    its outer loops fused parallel (8·16·2), a vector of 4 registers (64 lanes) innermost."""
    x = te.placeholder((1, 8, 16, 128), name="x")
    doubled = te.compute(x.shape, lambda *i: x(*i) * 2.0, name="doubled")
    shifted = te.compute(x.shape, lambda *i: doubled(*i) + 1.0, name="shifted")
    relu = te.compute(x.shape, lambda *i: te.max(shifted(*i), 0.0), name="relu")
    sch = Injective().apply(te.create_prim_func([x, relu]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["relu"]
    assert nest(sch, "relu") == [(PARALLEL, 256), (VECTORIZED, 64)]
    data = np.random.default_rng(4).standard_normal((1, 8, 16, 128)).astype("float32")
    np.testing.assert_array_equal(run(sch, [data], data.shape), np.maximum(data * 2 + 1, 0))


@pytest.mark.parametrize(
    "shape, loops",
    [
        # exactly the minimum work: parallel over the vectors
        ((PARALLEL_MIN_WORK,), [(PARALLEL, PARALLEL_MIN_WORK // 64), (VECTORIZED, 64)]),
        # 16 fewer elements: one thread, vectors of 48 (3 registers divide 16368, 4 do not)
        ((PARALLEL_MIN_WORK - 16,), [(SERIAL, (PARALLEL_MIN_WORK - 16) // 48), (VECTORIZED, 48)]),
        # a 0-d tensor: no loop at all
        ((), []),
    ],
)
def test_elementwise_ops_go_parallel_from_the_minimum_work(shape, loops):
    x = te.placeholder(shape, name="x")
    double = te.compute(shape, lambda *i: x(*i) * 2.0, name="double")
    sch = Injective().apply(te.create_prim_func([x, double]), AVX512, False)
    assert sch is not None
    assert nest(sch, "double") == loops
    data = np.asarray(np.random.default_rng(5).standard_normal(shape), dtype="float32")
    np.testing.assert_array_equal(run(sch, [data], shape), 2 * data)


def test_a_concatenation_is_partitioned_at_its_inputs_in_vectors_of_their_common_width():
    """Channels 32 + 64 + 16 (then ReLU): the vector is 16 lanes (the widest dividing every
    boundary and the total), the loop of vectors partitioned into 2, 4 and 1 vectors, one per
    input; exact."""
    channels = [32, 64, 16]
    inputs = [te.placeholder((1, 3, 4, c), name=f"x{i}") for i, c in enumerate(channels)]
    joined = topi.concatenate(inputs, axis=3)
    relu = te.compute(joined.shape, lambda *i: te.max(joined(*i), 0.0), name="relu")
    sch = Injective().apply(te.create_prim_func([*inputs, relu]), AVX512, False)
    assert sch is not None
    script = sch.mod.script()
    ranges = re.findall(
        r"for i3_0\d in range\(([\d, ]+)\):\s*\n\s*for i3_1 in T\.vectorized\((\d+)\)", script
    )
    assert ranges == [("2", "16"), ("2, 6", "16"), ("6, 7", "16")]
    rng = np.random.default_rng(6)
    data = [rng.standard_normal((1, 3, 4, c)).astype("float32") for c in channels]
    expected = np.maximum(np.concatenate(data, axis=3), 0)
    np.testing.assert_array_equal(run(sch, data, expected.shape), expected)


def test_a_concatenation_with_a_scalar_operand_is_still_partitioned():
    """A 0-d operand (a scale) read before the concatenated inputs has no last axis: it is
    skipped, and the inputs after it still give the boundaries."""
    scale = te.placeholder((), name="scale")
    inputs = [te.placeholder((1, 2, 2, c), name=f"x{i}") for i, c in enumerate([16, 32])]
    joined = topi.concatenate(inputs, axis=3)
    scaled = te.compute(joined.shape, lambda *i: scale[()] * joined(*i), name="scaled")
    sch = Injective().apply(te.create_prim_func([scale, *inputs, scaled]), AVX512, False)
    assert sch is not None
    assert sch.mod.script().count("_partition") == 2
    rng = np.random.default_rng(7)
    data = [np.float32(1.5)] + [
        rng.standard_normal((1, 2, 2, c)).astype("float32") for c in (16, 32)
    ]
    expected = 1.5 * np.concatenate(data[1:], axis=3)
    np.testing.assert_array_equal(
        run(sch, [np.asarray(d, dtype="float32") for d in data], expected.shape), expected
    )


# --- Fallback and the shared helpers -----------------------------------------------------------


def row_sums(rows: int, columns: int):
    a = te.placeholder((rows, columns), name="a")
    k = te.reduce_axis((0, columns), name="k")
    summed = te.compute((rows,), lambda i: te.sum(a[i, k], axis=k), name="summed")
    scaled = te.compute((rows,), lambda i: summed[i] * 3.0, name="scaled")
    return a, summed, scaled


def test_fallback_parallelizes_the_spatial_loops_above_a_reduction_only():
    """Row sums of 256x128 then ×3: the reduction (work 32768) parallel over its rows, never
    over the reduced axis; the scaling (work 256) on one thread; exact."""
    a, _, scaled = row_sums(256, 128)
    sch = Fallback().apply(te.create_prim_func([a, scaled]), AVX512, False)
    assert sch is not None
    assert nest(sch, "summed") == [(PARALLEL, 256), (SERIAL, 128)]
    assert nest(sch, "scaled") == [(SERIAL, 256)]
    data = np.random.default_rng(8).standard_normal((256, 128)).astype("float32")
    expected = 3 * data.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(run(sch, [data], (256,)), expected, rtol=1e-5, atol=1e-4)


def test_fallback_leaves_a_block_already_split_and_schedules_the_blocks_after_it():
    """A block whose loops no longer match its iteration variables (split before) is left as it
    is; the blocks after it are still parallelized."""
    a, _, scaled = row_sums(PARALLEL_MIN_WORK, 2)
    pre = s_tir.Schedule(te.create_prim_func([a, scaled]))
    pre.split(pre.get_loops(pre.get_sblock("summed"))[0], [None, 64])
    sch = Fallback().apply(pre.mod["main"], AVX512, False)
    assert sch is not None
    assert nest(sch, "summed") == [(SERIAL, PARALLEL_MIN_WORK // 64), (SERIAL, 64), (SERIAL, 2)]
    assert nest(sch, "scaled") == [(PARALLEL, PARALLEL_MIN_WORK)]
    data = np.random.default_rng(9).standard_normal((PARALLEL_MIN_WORK, 2)).astype("float32")
    expected = 3 * data.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(run(sch, [data], (PARALLEL_MIN_WORK,)), expected, rtol=1e-5)


@pytest.mark.parametrize("columns, parallel", [(128, True), (127, False)])
def test_work_counts_the_reduction_too(columns, parallel):
    """128 rows of 128 (16384: the minimum) go parallel, 128 of 127 do not."""
    a, summed, _ = row_sums(128, columns)
    sch = s_tir.Schedule(te.create_prim_func([a, summed]))
    block = sch.get_sblock("summed")
    assert work(sch, block) == 128 * columns
    parallelize(sch, sch.get_loops(block)[:1], work(sch, block))
    assert (nest(sch, "summed")[0][0] == PARALLEL) == parallel


def test_parallelize_fuses_every_loop_given_and_skips_none():
    """Three loops given (one of them ``None``): the two others fused into one parallel loop."""
    x = te.placeholder((4, 8, 16), name="x")
    y = te.compute((4, 8, 16), lambda *i: x(*i) + 1.0, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    first, second, last = sch.get_loops(sch.get_sblock("y"))
    parallelize(sch, [first, None, second], PARALLEL_MIN_WORK)
    assert nest(sch, "y") == [(PARALLEL, 32), (SERIAL, 16)]
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    first, second, last = sch.get_loops(sch.get_sblock("y"))
    parallelize(sch, [first], PARALLEL_MIN_WORK)
    assert nest(sch, "y") == [(PARALLEL, 4), (SERIAL, 8), (SERIAL, 16)]
    parallelize(sch, [None], PARALLEL_MIN_WORK)  # nothing to do
    assert nest(sch, "y") == [(PARALLEL, 4), (SERIAL, 8), (SERIAL, 16)]


# --- survivors of the first mutation run of these rules (mutation-triage.md, third pass) -----


def test_injective_declines_a_function_with_a_reduction_before_an_elementwise_block():
    """Row sums then ×3: a reduction block, so not the injective rule's kind (the fallback's)."""
    a, _, scaled = row_sums(256, 128)
    assert Injective().apply(te.create_prim_func([a, scaled]), AVX512, False) is None


def test_a_wide_concatenation_is_parallel_over_its_pixels_in_four_register_vectors():
    """Channels 64 + 64 over 16x16 (32768 elements): vectors of 4 registers (64 lanes, the gcd
    of the boundary and the total), one part per input, the 16·16 pixels in parallel."""
    inputs = [te.placeholder((1, 16, 16, 64), name=f"x{i}") for i in range(2)]
    joined = topi.concatenate(inputs, axis=3)
    relu = te.compute(joined.shape, lambda *i: te.max(joined(*i), 0.0), name="relu")
    sch = Injective().apply(te.create_prim_func([*inputs, relu]), AVX512, False)
    assert sch is not None
    script = sch.mod.script()
    ranges = re.findall(
        r"for i3_0\d in range\(([\d, ]+)\):\s*\n\s*for i3_1 in T\.vectorized\((\d+)\)", script
    )
    assert ranges == [("1", "64"), ("1, 2", "64")]
    assert re.findall(r"in T\.parallel\((\d+)\)", script) == ["256"]
    rng = np.random.default_rng(10)
    data = [rng.standard_normal((1, 16, 16, 64)).astype("float32") for _ in range(2)]
    expected = np.maximum(np.concatenate(data, axis=3), 0)
    np.testing.assert_array_equal(run(sch, data, expected.shape), expected)


def test_a_concatenation_whose_channel_loop_was_split_is_vectorized_along_the_inner_loop():
    """Loops that no longer match the iteration variables (the channel loop split in 6 × 16
    before): the boundaries, along the whole axis, are not looked for; the inner 16 lanes are
    the vector; exact."""
    inputs = [te.placeholder((1, 3, 4, c), name=f"x{i}") for i, c in enumerate([32, 64])]
    joined = topi.concatenate(inputs, axis=3)
    relu = te.compute(joined.shape, lambda *i: te.max(joined(*i), 0.0), name="relu")
    pre = s_tir.Schedule(te.create_prim_func([*inputs, relu]))
    pre.compute_inline(pre.get_sblock("T_concat"))
    pre.split(pre.get_loops(pre.get_sblock("relu"))[-1], [None, 16])
    sch = Injective().apply(pre.mod["main"], AVX512, False)
    assert sch is not None
    assert "_partition" not in sch.mod.script()
    assert nest(sch, "relu")[-2:] == [(SERIAL, 6), (VECTORIZED, 16)]
    rng = np.random.default_rng(11)
    data = [rng.standard_normal((1, 3, 4, c)).astype("float32") for c in (32, 64)]
    expected = np.maximum(np.concatenate(data, axis=3), 0)
    np.testing.assert_array_equal(run(sch, data, expected.shape), expected)


def test_fallback_inlines_every_block_but_the_last_that_tvm_allows():
    """Row sums, then +1, then ×3: the +1 (second of three) is inlined into the ×3, the
    reduction (which TVM cannot inline) stays; exact."""
    a = te.placeholder((256, 128), name="a")
    k = te.reduce_axis((0, 128), name="k")
    summed = te.compute((256,), lambda i: te.sum(a[i, k], axis=k), name="summed")
    shifted = te.compute((256,), lambda i: summed[i] + 1.0, name="shifted")
    scaled = te.compute((256,), lambda i: shifted[i] * 3.0, name="scaled")
    sch = Fallback().apply(te.create_prim_func([a, scaled]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["summed", "scaled"]
    data = np.random.default_rng(12).standard_normal((256, 128)).astype("float32")
    expected = 3 * (data.astype(np.float64).sum(axis=1) + 1)
    np.testing.assert_allclose(run(sch, [data], (256,)), expected, rtol=1e-5, atol=1e-4)


def test_a_three_dimensional_pool_runs_batch_depth_and_rows_in_parallel():
    """NDHWC 2x2x2/2 max-pool of 8x16x16x32: the outer loops but the columns and the channel
    vectors (batch · 4 depths · 8 rows) fused parallel; a 32-lane vector innermost; exact."""
    x = te.placeholder((1, 8, 16, 16, 32), name="x")
    y = topi.nn.pool3d(x, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0,) * 6, "max", False, "NDHWC")
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), AVX512, False)
    assert sch is not None
    update = nest(sch, "pool_max_update")
    assert update[0] == (PARALLEL, 32) and [k for k, _ in update].count(PARALLEL) == 1
    assert update[-4:] == [(SERIAL, 2)] * 3 + [(VECTORIZED, 32)]
    data = np.random.default_rng(13).standard_normal((1, 8, 16, 16, 32)).astype("float32")
    expected = data.reshape(1, 4, 2, 8, 2, 8, 2, 32).max(axis=(2, 4, 6))
    np.testing.assert_array_equal(run(sch, [data], expected.shape), expected)


def test_a_batched_dense_runs_its_rows_and_output_vectors_in_parallel():
    """8 rows of 512 @ 512x256 (work over the minimum): both outer loops (8 rows · 4 vectors of
    64 outputs) fused parallel, the 512 reduction inside, 64 lanes innermost; exact."""
    data = te.placeholder((8, 512), name="data")
    weight = te.placeholder((512, 256), name="weight")
    k = te.reduce_axis((0, 512), name="k")
    product = te.compute(
        (8, 256), lambda i, j: te.sum(data[i, k] * weight[k, j], axis=k), name="product"
    )
    sch = ChannelReduction().apply(te.create_prim_func([data, weight, product]), AVX512, False)
    assert sch is not None
    assert nest(sch, "product_update") == [(PARALLEL, 32), (SERIAL, 512), (VECTORIZED, 64)]
    rng = np.random.default_rng(14)
    arrays = [rng.standard_normal(shape).astype("float32") for shape in [(8, 512), (512, 256)]]
    expected = arrays[0].astype(np.float64) @ arrays[1]
    np.testing.assert_allclose(run(sch, arrays, (8, 256)), expected, rtol=1e-4, atol=1e-4)


def test_dense_with_three_epilogue_blocks_inlines_them_all():
    """``(relu(x @ W + b)) · 0.5``: the bias and the ReLU inlined, the scaling reverse-inlined
    into the write-back; only the reduction's three blocks remain; exact."""
    data, weight, bias, product = dense_parts(40)
    biased = te.compute((1, 40), lambda i, j: product[i, j] + bias[j], name="biased")
    relu = te.compute((1, 40), lambda i, j: te.max(biased[i, j], 0.0), name="relu")
    half = te.compute((1, 40), lambda i, j: relu[i, j] * 0.5, name="half")
    sch = ChannelReduction().apply(te.create_prim_func([data, weight, bias, half]), AVX512, False)
    assert sch is not None
    assert block_names(sch) == ["product_init", "product_update", "product_local"]
    rng = np.random.default_rng(15)
    arrays = [rng.standard_normal(shape).astype("float32") for shape in [(1, 72), (72, 40), (40,)]]
    expected = 0.5 * np.maximum(arrays[0].astype(np.float64) @ arrays[1] + arrays[2], 0)
    np.testing.assert_allclose(run(sch, arrays, (1, 40)), expected, rtol=1e-5, atol=1e-5)


def test_a_read_indexed_by_the_output_axis_in_a_middle_axis_is_declined():
    """``cube[k, j, j]``: the output index ``j`` in the second axis of a read as well as the
    last (a gather along the vector): not this rule's kind."""
    data = te.placeholder((1, 72), name="data")
    k = te.reduce_axis((0, 72), name="k")
    cube = te.placeholder((72, 40, 40), name="cube")
    gather = te.compute((1, 40), lambda i, j: te.sum(data[i, k] * cube[k, j, j], axis=k))
    assert (
        ChannelReduction().apply(te.create_prim_func([data, cube, gather]), AVX512, False) is None
    )
