"""The design space the conv template gives MetaSchedule (``tunable=True``): every sampled
tiling is a perfect tiling within the template's bounds — at most ``MAX_ROWS`` rows per task,
at most the pixels whose accumulators fit the registers, no bound on the output-channel blocks
per task (mutation survivors of ``schedules/cpu/conv.py``); and the hand choice is the default.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.cpu import conv
from tvm_structconv.schedules.cpu.tiling import MAX_ROWS, choose_tiling, pixel_budget
from tvm_structconv.schedules.target_info import vector_lanes, vector_registers
from tvm_structconv.structure import Structure

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
BLOCK = 8


def conv_func(size: int = 16, blocks: int = 4) -> tvm.tirx.PrimFunc:
    structure = Structure(16, 3, 8, 2)
    data = te.placeholder((1, size, size, 16), name="data")
    alpha = te.placeholder((blocks, 2, 2, 8, BLOCK), name="alpha")
    out = ops.structured_conv2d_nhwc(data, alpha, structure, padding=(1, 1, 1, 1))
    return te.create_prim_func([data, alpha, out])


def test_sampled_tilings_stay_within_rows_registers_and_divide_the_loops():
    """16x16 output, 4 blocks of 8 channels, AVX2 (16 registers): over 40 seeds each of the
    three sampled splits is perfect, rows ≤ 8, pixels ≤ the register budget (and up to it),
    and tasks of
    several output-channel blocks are sampled (no bound on them: with these seeds TVM's
    sampler drew all 4 blocks per task every time)."""
    budget = pixel_budget(BLOCK, vector_lanes(AVX2), vector_registers(AVX2))
    inner_blocks, sampled_pixels = set(), set()
    for seed in range(1, 41):
        sch = s_tir.Schedule(conv_func(), seed=seed)
        assert conv.schedule_structured_conv2d(
            sch, ops.find_structured_block(sch), AVX2, tunable=True
        )
        chunks, rows, pixels = [[int(x) for x in d] for d in sch.trace.decisions.values()]
        assert chunks[0] * chunks[1] == 4 and rows[0] * rows[1] == 16
        assert pixels[0] * pixels[1] == 16
        assert rows[1] <= MAX_ROWS, (seed, rows)
        assert pixels[1] <= budget, (seed, pixels, budget)
        inner_blocks.add(chunks[1])
        sampled_pixels.add(pixels[1])
    assert max(inner_blocks) > 1, inner_blocks
    # the budget is reached: the widest tile the registers hold is among those drawn
    assert max(sampled_pixels) == max(d for d in (1, 2, 4, 8, 16) if d <= budget), sampled_pixels


def test_the_hand_schedule_is_the_default_and_samples_nothing():
    """Called without ``tunable``: no sampled decision; the tiles are ``choose_tiling``'s."""
    sch = s_tir.Schedule(conv_func())
    assert conv.schedule_structured_conv2d(sch, ops.find_structured_block(sch), AVX2)
    assert len(sch.trace.decisions) == 0
    tiling = choose_tiling(1, 16, 16, 32, BLOCK, AVX2)
    update = sch.get_loops(sch.get_sblock("structured_conv2d_update"))
    extents = [int(sch.get(loop).extent) for loop in update]
    # task, output-channel blocks of the task, rows, pixel tiles, 2x2 kernel, 8 channels,
    # pixels, lanes
    assert extents[2] == tiling.rows and extents[-2] == tiling.pixels
