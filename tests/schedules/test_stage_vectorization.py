"""The window-sum stages of S are vectorized in whole registers even at odd lengths, and exact."""

import re

import numpy as np
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.cpu import conv
from tvm_structconv.schedules.target_info import vector_partition
from tvm_structconv.structure import Structure

from conv_oracle import HOST, oracle, random_case

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def pointwise_func(channels: int, reduced: int, out_channels: int, size: int):
    structure = Structure(channels, 1, reduced, 1)
    data = te.placeholder((1, size, size, channels), name="data")
    alpha = te.placeholder((out_channels // 8, 1, 1, reduced, 8), name="alpha")
    out = ops.structured_conv2d_nhwc(data, alpha, structure, (1, 1), (0,) * 4)
    return structure, te.create_prim_func([data, alpha, out])


def test_odd_length_stages_get_whole_16_lane_vectors():
    # 100 channels, c = 50: a window of 51 channels, stages of 99, 97, 93, 85, 69 and 50
    _, func = pointwise_func(100, 50, 16, 4)
    sch = s_tir.Schedule(func)
    assert conv.schedule_structured_conv2d(sch, ops.find_structured_block(sch), AVX512)
    script = sch.mod.script()
    for stage in ("pool_channel_2", "pool_channel_4", "pool_channel_16", "pool_channel_32"):
        # a loop of 16 lanes right above a block of the stage (its whole-register part)
        widths = re.findall(
            r"T\.vectorized\((\d+)\):\s*\n\s*with T\.sblock\(\"" + stage + r"[_\"]", script
        )
        assert widths == ["16"], (stage, widths)
    assert "T.vectorized(1)" not in script


def test_vector_partition_leaves_whole_registers_and_a_scalar_rest():
    data = te.placeholder((37,), name="data")
    out = te.compute((37,), lambda i: data[i] * 2.0, name="double")
    sch = s_tir.Schedule(te.create_prim_func([data, out]))
    vector_partition(sch, sch.get_loops(sch.get_sblock("double"))[0], 16)
    script = sch.mod.script()
    assert "T.vectorized(16)" in script  # 32 of the 37 in two whole registers
    result = tvm.runtime.tensor(np.zeros(37, "float32"))
    values = np.arange(37, dtype="float32")
    tvm.compile(sch.mod, target=HOST)(tvm.runtime.tensor(values), result)
    np.testing.assert_array_equal(result.numpy(), 2 * values)


@settings(max_examples=15, deadline=None)
@given(st.integers(9, 70), st.data())
def test_pointwise_structured_conv_with_partitioned_stages_is_exact(channels, data):
    reduced = data.draw(st.integers(1, channels - 1), label="reduced")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    structure, func = pointwise_func(channels, reduced, 16, 5)
    sch = s_tir.Schedule(func)
    assert conv.schedule_structured_conv2d(sch, ops.find_structured_block(sch), HOST)
    x, alpha = random_case(structure, 16, (5, 5), seed)
    result = tvm.runtime.tensor(np.zeros((1, 5, 5, 16), "float32"))
    tvm.compile(sch.mod, target=HOST)(
        tvm.runtime.tensor(x.transpose(0, 2, 3, 1).copy()),
        tvm.runtime.tensor(ops.pack_alpha(alpha, 8)),
        result,
    )
    np.testing.assert_allclose(
        result.numpy(), oracle(x, alpha, structure, 1, (0,) * 4, 1), rtol=1e-4, atol=1e-4
    )
