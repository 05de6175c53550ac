"""A register tile never puts more pixels on one L1 set than its ways: the bound checked by
simulating the set of each pixel's row, and its wiring into the tile choice and the tunable
space. (The scheduled conv of 1024 channels against torch: tests/schedules/test_x86.py.)"""

import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.cpu import conv, tiling
from tvm_structconv.structure import Structure

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
LINE = 64


def lines_per_set(pixels: int, stride: int) -> int:
    """Most distinct lines on one L1 set among ``pixels`` rows ``stride`` bytes apart.

    The first byte of each row, from a line-aligned start; a line holding several rows counts
    once.
    """
    lines = {index * stride // LINE for index in range(pixels)}
    sets = [line % (tiling.L1_ALIAS_PERIOD // LINE) for line in lines]
    return max(sets.count(s) for s in set(sets))


@given(channels=st.integers(1, 256).map(lambda k: 16 * k))
def test_the_bound_is_the_most_pixels_the_sets_hold(channels):
    """Channels in whole lines (multiples of 16 floats), as every packed NHWC tensor here."""
    stride = channels * 4
    bound = tiling.alias_bound([stride])
    assert lines_per_set(bound, stride) == tiling.MAX_LINES_PER_SET
    assert lines_per_set(bound + 1, stride) == tiling.MAX_LINES_PER_SET + 1


@given(st.lists(st.integers(1, 4096).map(lambda k: 4 * k), min_size=1, max_size=3))
def test_the_tightest_tensor_bounds_the_tile(strides):
    """Any float stride, for the tiles a register file can hold (up to 64 pixels)."""
    bound = tiling.alias_bound(strides)
    assert bound == min(tiling.alias_bound([stride]) for stride in strides)
    pixels = min(bound, tiling.MAX_TILE_PIXELS)
    assert all(lines_per_set(pixels, stride) <= tiling.MAX_LINES_PER_SET for stride in strides)
    assert tiling.alias_bound([]) is None


def test_a_row_of_1024_channels_gets_half_a_row_per_tile():
    """ResNet-50's 1×1 convs at 14×14: 14 pixels fit the AVX-512 registers, 8 the L1 sets."""
    free = tiling.choose_tiling(1, 14, 14, 256, 32, AVX512)
    bounded = tiling.choose_tiling(1, 14, 14, 256, 32, AVX512, pixel_strides=(4096, 1024))
    assert (free.pixels, bounded.pixels) == (14, 7)
    assert tiling.choose_tiling(1, 14, 14, 256, 32, AVX512, pixel_strides=(1024,)).pixels == 14


@given(width=st.integers(1, 64), channels=st.sampled_from([256, 512, 1024, 2048]))
def test_a_width_without_a_fitting_divisor_keeps_its_register_tile(width, channels):
    """SqueezeNet's classifier: 13 pixels of 1024 channels. Within the 8 pixels the sets hold the
    only divisor is 1 (no FMA latency hidden, 1.5x slower): the tile stays 13 wide. A width with
    a divisor of at least half the bound takes it."""
    strides = (channels * 4,)
    lanes, registers = 16, 32
    budget = tiling.pixel_budget(32, lanes, registers)
    aliasing = tiling.alias_bound(strides)
    pixels = tiling.pixel_tile(width, 32, lanes, registers, pixel_strides=strides)
    free = tiling.pixel_tile(width, 32, lanes, registers)
    assert width % pixels == 0
    assert pixels >= min(free, aliasing // 2)  # never collapses below half of what the sets hold
    fitting = [d for d in range(aliasing // 2, min(aliasing, budget) + 1) if width % d == 0]
    if fitting:
        assert pixels <= aliasing  # a useful tile within the sets exists: the tile keeps to them


def test_squeezenets_13_wide_row_keeps_13_pixels_where_14_takes_7():
    assert tiling.pixel_tile(13, 32, 16, 32, pixel_strides=(4096,)) == 13
    assert tiling.pixel_tile(14, 32, 16, 32, pixel_strides=(4096,)) == 7


def test_the_tunable_space_keeps_to_the_bound():
    """MetaSchedule samples the pixels of a tile up to the bound, not up to the registers."""
    structure = Structure(1024, 1, 1024, 1)
    data = te.placeholder((1, 14, 14, 1024), name="data")
    weight = te.placeholder((2, 1, 1, 1024, 32), name="alpha")
    func = te.create_prim_func([data, weight, ops.structured_conv2d_nhwc(data, weight, structure)])
    sch = s_tir.Schedule(func, seed=1)
    assert conv.schedule_structured_conv2d(
        sch, ops.find_structured_block(sch), AVX512, tunable=True
    )
    chunks, rows, pixels = [
        inst for inst in sch.trace.insts if inst.kind.name == "SamplePerfectTile"
    ]
    assert int(pixels.attrs[1]) == 8  # max_innermost_factor; the registers allow 14
    assert int(rows.attrs[1]) == tiling.MAX_ROWS
