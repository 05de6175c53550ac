"""What the CPU schedules read off a target and the loop helpers they share, on small cases
worked out by hand (schedules mutation survivors): cores, the vector split of a loop, the
partition into whole registers, the packing block of a prime number of outputs, and the pixel
tile when AArch64 unrolls input channels."""

import re

import pytest
import tvm
from tvm import s_tir, te

from tvm_structconv.schedules.cpu import tiling
from tvm_structconv.schedules.packing import cpu_block_size
from tvm_structconv.schedules.target_info import (
    target_cores,
    vector_lanes,
    vector_partition,
    vector_registers,
    vector_split,
)
from tvm_structconv.targets import make_target

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"})


def test_cores_are_the_targets_num_cores_and_one_when_unset():
    assert target_cores(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) == 1
    for cores in (1, 3):
        target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": cores})
        assert target_cores(target) == cores


def loop_of(extent: int):
    data = te.placeholder((extent,), name="data")
    out = te.compute((extent,), lambda i: data[i] * 2.0, name="double")
    sch = s_tir.Schedule(te.create_prim_func([data, out]))
    return sch, sch.get_loops(sch.get_sblock("double"))[0]


@pytest.mark.parametrize("extent, vectorized", [(1, None), (2, "2"), (8, "8")])
def test_a_loop_one_vector_long_is_vectorized_whole(extent, vectorized):
    sch, loop = loop_of(extent)
    assert vector_split(sch, loop, 8) is None  # nothing left outside the vector
    found = re.findall(r"T\.vectorized\((\d+)\)", sch.mod.script())
    assert found == ([] if vectorized is None else [vectorized])


@pytest.mark.parametrize("extent", [5, 16, 32])
def test_a_loop_the_lanes_divide_or_shorter_than_them_is_only_split(extent):
    """vector_partition partitions only where whole registers leave a scalar rest."""
    split_sch, loop = loop_of(extent)
    vector_split(split_sch, loop, 16)
    partition_sch, loop = loop_of(extent)
    vector_partition(partition_sch, loop, 16)
    tvm.ir.assert_structural_equal(partition_sch.mod, split_sch.mod)


def test_a_prime_number_of_outputs_is_padded_to_whole_registers():
    """127 outputs: no vector width divides them (the divisor block is 1); padding one zero
    filter gives whole AVX2 registers."""
    assert tiling.channel_block(AVX2, 127, 1, 14) == 1
    block = cpu_block_size(AVX2, 127, 1, 14)
    assert block % vector_lanes(AVX2) == 0 and -(-127 // block) * block - 127 <= 127 / 8


def test_the_pixel_tile_leaves_registers_for_the_unrolled_channels_weights():
    """AArch64 (4 lanes, 32 registers), 8 outputs (2 vectors), 4 input channels unrolled:
    14 pixels would need 28 accumulators + 8 weight vectors + 2 = 38 registers; 7 need 24."""
    aarch64 = make_target("aarch64")
    assert (vector_lanes(aarch64), vector_registers(aarch64)) == (4, 32)
    unrolled = tiling.choose_tiling(1, 14, 14, 8, 8, aarch64, channel_unroll=4)
    assert unrolled.pixels == 7
    assert tiling.choose_tiling(1, 14, 14, 8, 8, aarch64, channel_unroll=1).pixels == 14


def test_a_block_too_wide_for_the_registers_still_gets_one_pixel():
    # 64 outputs on AVX2 = 8 ymm of weights: (16 - 8 - 2) // 8 = 0 pixels fit; one is taken
    assert tiling.pixel_budget(64, 8, 16) == 1


@pytest.mark.parametrize("width", [7, 14, 56])
def test_channel_blocks_are_at_most_two_registers_and_depthwise_ones_whole(width):
    for outputs in (24, 48, 96):  # 3, 6 and 12 AVX2 registers of outputs
        assert tiling.channel_block(AVX2, outputs, 1, width) <= 2 * 8
    depthwise = tiling.channel_block(AVX2, 32, 32, width)  # one output per group
    assert depthwise % 8 == 0 and 32 % depthwise == 0
