"""The one owner of the conv layout and packing block per target, and the rules per family."""

import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import te

from tvm_structconv.schedules import rules_for
from tvm_structconv.schedules.base import TargetRule, target_family
from tvm_structconv.schedules.cpu import tiling
from tvm_structconv.schedules.cpu.fallback import Fallback
from tvm_structconv.schedules.gpu.conv import StructuredConv2dCUDA
from tvm_structconv.schedules.packing import (
    MAX_PADDING,
    conv_layout,
    cpu_block_size,
    divisor_block,
    padded_channels,
    portable_block_size,
)
from tvm_structconv.schedules.target_info import vector_lanes
from tvm_structconv.targets import make_target

from conv_oracle import HOST

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"})
CUDA = tvm.target.Target("cuda")


@pytest.mark.parametrize(
    "out_channels, groups, preferred, lanes, expected",
    [
        (64, 1, 16, 8, 16),  # two AVX2 registers
        (24, 1, 16, 8, 8),  # 12 would divide but fills no whole register
        (12, 3, 16, 8, 4),  # a block must stay inside one group of 4 outputs
        (32, 32, 16, 8, 16),  # depthwise: any divisor of the channels
        (7, 1, 16, 8, 7),
        (12, 2, 16, 8, 6),  # two groups of 6: 12 has more factors of two, but spans both
        (17, 1, 16, 8, 1),  # a prime above the preference: one channel, never 17
    ],
)
def test_divisor_block(out_channels, groups, preferred, lanes, expected):
    assert divisor_block(out_channels, groups, preferred, lanes) == expected


def test_divisor_block_without_lanes_is_the_largest_divisor_within_the_preference():
    assert divisor_block(18, 1, 9) == 9  # not 6, which 2 lanes would prefer
    assert divisor_block(18, 1, 8) == 6


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([HOST, AVX2, make_target("aarch64")]),
    st.integers(1, 96),
    st.sampled_from([1, 2, 3, 4]),
    st.integers(1, 60),
)
def test_cpu_targets_pack_nhwc_with_the_conv_rules_block(target, per_group, groups, width):
    out_channels = per_group * groups
    layout = conv_layout(target)
    block = layout.block_size(out_channels, groups, width)
    assert layout.layout == "NHWC"
    if groups > 1:  # never padded: the conv rule's divisor of the outputs (per group)
        assert block == tiling.channel_block(target, out_channels, groups, width)
        assert out_channels % block == 0
        if per_group > 1:
            assert per_group % block == 0  # one block reads one group's channels


def test_other_targets_and_unscheduled_builds_keep_nchw():
    assert conv_layout(CUDA).layout == "NCHW"
    assert conv_layout(HOST, scheduled=False).layout == "NCHW"
    assert conv_layout().layout == "NCHW"
    assert conv_layout().block_size is portable_block_size


def test_rules_per_target_family():
    assert target_family(HOST) == "cpu" and target_family(CUDA) == "gpu"
    assert target_family(tvm.target.Target("c")) is None
    cpu_rules = rules_for(HOST)
    assert [type(r).__name__ for r in cpu_rules] == [
        "StructuredConv2dRule",
        "WinogradRule",
        "ChannelReduction",
        "Injective",
        "Fallback",
    ]
    assert [type(r) for r in rules_for(CUDA)] == [StructuredConv2dCUDA]
    assert rules_for(tvm.target.Target("c")) == []


def test_a_rule_declines_other_families_and_schedule_failures():
    data = te.placeholder((4, 64), name="data")
    out = te.compute((4, 64), lambda i, j: data[i, j] * 2.0, name="double")
    func = te.create_prim_func([data, out])
    assert Fallback().apply(func, CUDA, False) is None
    assert StructuredConv2dCUDA().apply(func, HOST, False) is None

    class Failing(TargetRule):
        def schedule(self, func, target, tunable):
            sch = tvm.s_tir.Schedule(func)
            sch.compute_inline(sch.get_sblock("double"))  # the output block: refused
            return sch

    assert Failing().apply(func, HOST, False) is None


AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


@pytest.mark.parametrize(
    "target, out_channels, groups, width, block",
    [
        (AVX512, 1000, 1, 13, 32),  # 1008 outputs: two whole zmm registers, not 8 lanes
        (AVX512, 200, 1, 14, 16),  # 208 outputs
        (AVX512, 24, 1, 56, 8),  # 32 would add a third of zero filters: the divisor
        (AVX512, 120, 2, 14, 4),  # grouped: always a divisor of the outputs per group
        (AVX2, 1000, 1, 13, 8),  # 8 lanes divide 1000: nothing to pad
    ],
)
def test_cpu_block_pads_to_whole_registers_within_the_limit(
    target, out_channels, groups, width, block
):
    assert cpu_block_size(target, out_channels, groups, width) == block
    assert conv_layout(target).block_size(out_channels, groups, width) == block


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([HOST, AVX2, AVX512, make_target("aarch64")]),
    st.integers(1, 1100),
    st.integers(1, 60),
)
def test_a_padded_block_is_whole_registers_and_pads_at_most_an_eighth(target, outputs, width):
    block = cpu_block_size(target, outputs, 1, width)
    padding = -(-outputs // block) * block - outputs
    assert padding <= outputs * MAX_PADDING
    if padding:
        assert block % vector_lanes(target) == 0
        assert block == max(block, tiling.channel_block(target, outputs, 1, width))


@given(st.integers(1, 4096), st.integers(1, 64))
def test_padded_channels_is_the_next_multiple_of_the_block(out_channels, block):
    padded = padded_channels(out_channels, block)
    assert padded % block == 0
    assert out_channels <= padded < out_channels + block
