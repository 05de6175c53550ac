"""The x86 register tile where the register budget decides: accumulators, the block's weight
vectors, one broadcast and one spare register fit the target's vector registers.

Through :func:`tvm_structconv.schedules.cpu.tiling.choose_tiling` (the hand choice) and
:func:`~tvm_structconv.schedules.cpu.tiling.channel_block`.
"""

import pytest
import tvm

from tvm_structconv.schedules.cpu import tiling


@pytest.mark.parametrize(
    "mcpu, width, block, pixels",
    [
        # AVX2, 16 registers, block 8 = 1 ymm: 16 - 1 weight - 1 broadcast - 1 spare = 13
        # accumulators at most; 14 (no spare) would fit the width exactly, 7 is taken
        ("haswell", 14, 8, 7),
        ("haswell", 13, 8, 13),  # 13 fits: the budget is exactly 13
        # AVX2, block 16 = 2 ymm: (16 - 2 - 2) // 2 = 6 pixels; a width of 12 takes 6, not 7
        ("haswell", 12, 16, 6),
        ("haswell", 7, 16, 1),  # neither 7 (14 registers + 4) fits: one pixel
        # AVX-512, 32 registers, block 16 = 1 zmm: 29 pixels at most; width 30 takes 15
        ("skylake-avx512", 30, 16, 15),
        ("skylake-avx512", 29, 16, 29),
    ],
)
def test_pixels_per_tile_leave_a_spare_register(mcpu, width, block, pixels):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    chosen = tiling.choose_tiling(1, width, width, 64, block, target)
    assert chosen.pixels == pixels
    assert chosen.block == block


def test_avx2_block_8_width_14_is_one_register_of_channels_by_7_pixels():
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    assert tiling.channel_block(target, 8, 1, 14) == 8
    assert tiling.choose_tiling(1, 14, 14, 8, 8, target).pixels == 7
