"""Which fused epilogue blocks the conv template's register tile applies (the head) and which run
after it (the tail), and the tail's own pass (mutation survivors of ``schedules/cpu/conv.py``:
``split_epilogue``, ``_elementwise_over``, ``schedule_tail``).

A head block maps the conv output's shape onto itself, element by element, reading the conv
output and earlier head blocks only at its own indices; anything else starts the tail: a
reduction, a read of another pixel or channel of the conv output, a write of another shape.
"""

from __future__ import annotations

import re
from typing import List, Tuple

import numpy as np
import tvm
from tvm import s_tir, te, topi

from tvm_structconv import ops
from tvm_structconv.schedules.cpu.conv import StructuredConv2dRule, split_epilogue
from tvm_structconv.structure import Structure

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
BLOCK = 16


def conv(channels: int, out_channels: int, size: int):
    """A 1x1 NHWC structured conv (c = C/2) of a ``size``×``size`` input, and its inputs."""
    structure = Structure(channels, 1, channels // 2, 1)
    data = te.placeholder((1, size, size, channels), name="data")
    alpha = te.placeholder((out_channels // BLOCK, 1, 1, channels // 2, BLOCK), name="alpha")
    return structure, data, alpha, ops.structured_conv2d_nhwc(data, alpha, structure)


def split_names(tensors) -> Tuple[List[str], List[str]]:
    """The head and tail block names of the fused function of ``tensors``."""
    sch = s_tir.Schedule(te.create_prim_func(tensors))
    block = ops.find_structured_block(sch)
    head, tail = split_epilogue(sch, block, ops.stages_around(sch, block)[1])
    return [sch.get(b).name_hint for b in head], [sch.get(b).name_hint for b in tail]


def test_a_reduction_after_the_conv_starts_the_tail():
    """A block of the conv output's shape that sums over a reduction axis is no head block."""
    _, data, alpha, out = conv(16, 16, 4)
    k = te.reduce_axis((0, 2), name="k")
    summed = te.compute(out.shape, lambda n, h, w, o: te.sum(out[n, h, w, o] * k, axis=k), name="s")
    assert split_names([data, alpha, summed]) == ([], ["s"])


def test_a_read_of_another_channel_of_the_conv_output_starts_the_tail():
    """``relu(conv)`` then ``relu · conv[…, 0]``: the first is head; the second reads channel 0
    of the conv output at every channel (a broadcast, not in place): tail."""
    _, data, alpha, out = conv(16, 16, 4)
    relu = te.compute(out.shape, lambda *i: te.max(out(*i), 0.0), name="relu")
    scaled = te.compute(
        out.shape, lambda n, h, w, o: relu[n, h, w, o] * out[n, h, w, 0], name="scaled"
    )
    assert split_names([data, alpha, scaled]) == (["relu"], ["scaled"])
    by_head = te.compute(
        out.shape, lambda n, h, w, o: out[n, h, w, o] * relu[n, h, w, 0], name="by_head"
    )
    assert split_names([data, alpha, by_head]) == (["relu"], ["by_head"])


def test_a_slice_of_the_conv_output_starts_the_tail():
    """A block writing the first half of the channels (another shape) at its own indices."""
    _, data, alpha, out = conv(16, 32, 4)
    half = te.compute((1, 4, 4, 16), lambda n, h, w, o: out[n, h, w, o] + 1.0, name="half")
    assert split_names([data, alpha, half]) == ([], ["half"])


def test_a_tail_of_three_blocks_is_one_parallel_vector_pass():
    """An SE-like gate broadcast onto a 16x16x64 map, plus the map, then ReLU: three tail
    blocks, the first two inlined into the ReLU, which runs parallel over the pixels in
    4-register vectors; exact against numpy."""
    channels, out_channels, size = 16, 64, 16
    structure, pooled, alpha, gate = conv(channels, out_channels, 1)
    features = te.placeholder((1, size, size, out_channels), name="features")
    gated = topi.multiply(gate, features)
    added = topi.add(gated, features)
    relu = te.compute(added.shape, lambda *i: te.max(added(*i), 0.0), name="relu")
    tensors = [pooled, alpha, features, relu]
    assert split_names(tensors)[1] == ["T_multiply", "T_add", "relu"]
    sch = StructuredConv2dRule().apply(te.create_prim_func(tensors), AVX512, False)
    assert sch is not None
    names = [n for n in re.findall(r'T\.sblock\("(\w+)"\)', sch.mod.script()) if n != "root"]
    assert names[-1] == "relu" and "T_multiply" not in names and "T_add" not in names
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("relu"))]
    kinds = [(loop.kind, int(loop.extent)) for loop in loops]
    assert kinds == [(tvm.tirx.ForKind.PARALLEL, size * size), (tvm.tirx.ForKind.VECTORIZED, 64)]

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 1, channels)).astype("float32")
    packed = rng.standard_normal((out_channels // BLOCK, 1, 1, channels // 2, BLOCK))
    packed = packed.astype("float32")
    maps = rng.standard_normal((1, size, size, out_channels)).astype("float32")
    weight = packed.transpose(0, 4, 3, 1, 2).reshape(out_channels, channels // 2)
    composed = structure.compose(weight.reshape(out_channels, channels // 2, 1, 1))
    gate_value = x.reshape(1, channels).astype(np.float64) @ composed.reshape(out_channels, -1).T
    expected = np.maximum(gate_value.reshape(1, 1, 1, -1) * maps + maps, 0)
    result = tvm.runtime.tensor(np.zeros_like(maps))
    host = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    tvm.compile(sch.mod, target=host)(*(tvm.runtime.tensor(a) for a in (x, packed, maps)), result)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-4)
