"""Fused epilogues the register tile cannot hold (SE gates, SiLU), the rule's decline path and
the fallback rule: every function gets a schedule, and each is exact against numpy."""

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import s_tir, te, topi

from tvm_structconv import ops
from tvm_structconv.schedules.cpu.conv import StructuredConv2dRule, split_epilogue
from tvm_structconv.schedules.cpu.fallback import Fallback
from tvm_structconv.structure import Structure

from conv_oracle import HOST


def _conv(data, channels, out_channels, block, kernel=1, padding=0):
    structure = Structure(channels, kernel, channels, kernel)
    alpha = te.placeholder((out_channels // block, kernel, kernel, channels, block), name="alpha")
    return alpha, ops.structured_conv2d_nhwc(data, alpha, structure, padding=(padding,) * 4)


def se_gate(channels, out_channels, height, width, block):
    """SE block's excitation: 1x1 conv on the pooled 1x1 map, bias, hard-sigmoid-like clip,
    broadcast onto the (height, width) feature map — the tail the tile cannot hold."""
    pooled = te.placeholder((1, 1, 1, channels), name="pooled")
    features = te.placeholder((1, height, width, out_channels), name="features")
    bias = te.placeholder((1, 1, 1, out_channels), name="bias")
    alpha, conv = _conv(pooled, channels, out_channels, block)
    gate = topi.clip(topi.add(topi.multiply(topi.add(conv, bias), 1 / 6), 0.5), 0.0, 1.0)
    out = topi.multiply(gate, features)
    return [pooled, alpha, bias, features, out]


def silu(channels, out_channels, size, block):
    """conv -> x * sigmoid(x): two epilogue blocks reading the conv output in place."""
    data = te.placeholder((1, size, size, channels), name="data")
    alpha, conv = _conv(data, channels, out_channels, block, kernel=3, padding=1)
    return [data, alpha, topi.multiply(conv, topi.sigmoid(conv))]


def _random(tensors, rng):
    return [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in tensors]


def _conv_numpy(data, packed, padding):
    blocks, kh, kw, channels, block = packed.shape
    weight = packed.transpose(0, 4, 3, 1, 2).reshape(blocks * block, channels, kh, kw)
    padded = np.pad(data, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    out = np.zeros((data.shape[0], height, width, weight.shape[0]), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum(
                "bhwc,oc->bhwo", padded[:, i : i + height, j : j + width], weight[:, :, i, j]
            )
    return out


def _run(sch_or_func, arrays):
    lib = tvm.compile(sch_or_func, target=HOST)
    buffers = [tvm.runtime.tensor(a) for a in arrays[:-1]] + [
        tvm.runtime.tensor(np.zeros_like(arrays[-1]))
    ]
    lib(*buffers)
    return buffers[-1].numpy()


def _blocks(sch):
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def test_se_gate_splits_into_head_and_tail():
    func = te.create_prim_func(se_gate(16, 24, 5, 7, 8))
    sch = s_tir.Schedule(func)
    conv = ops.find_structured_block(sch)
    head, tail = split_epilogue(sch, conv, ops.stages_around(sch, conv)[1])
    names = [sch.get(b).name_hint for b in head], [sch.get(b).name_hint for b in tail]
    assert names == (["T_add", "T_multiply", "T_add_1", "compute"], ["T_multiply_1"])


def test_silu_is_all_head():
    func = te.create_prim_func(silu(8, 16, 6, 8))
    sch = s_tir.Schedule(func)
    conv = ops.find_structured_block(sch)
    head, tail = split_epilogue(sch, conv, ops.stages_around(sch, conv)[1])
    assert len(head) == 2 and tail == []


@settings(max_examples=6)
@given(
    channels=st.sampled_from([8, 16, 24]),
    out_blocks=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
)
def test_scheduled_se_gate_is_exact(channels, out_blocks, height, width):
    block = 8
    out_channels = out_blocks * block
    tensors = se_gate(channels, out_channels, height, width, block)
    func = te.create_prim_func(tensors)
    sch = StructuredConv2dRule().apply(func, HOST, False)
    assert sch is not None, "the template schedules an SE gate (its tail as its own pass)"
    # on a 1x1 map the gate's multiply is elementwise too, and joins the write-back
    assert (_blocks(sch)[-1] == "T_multiply_1") == ((height, width) != (1, 1))
    arrays = _random(tensors, np.random.default_rng(channels + height))
    pooled, packed, bias, features, _ = arrays
    conv = _conv_numpy(pooled, packed, 0) + bias
    expected = np.clip(conv / 6 + 0.5, 0, 1) * features
    np.testing.assert_allclose(_run(sch.mod, arrays), expected, rtol=1e-5, atol=1e-5)


def test_scheduled_silu_inlines_into_the_write_back():
    tensors = silu(8, 16, 6, 8)
    sch = StructuredConv2dRule().apply(te.create_prim_func(tensors), HOST, False)
    assert sch is not None
    # x * sigmoid(x) is computed in the write-back of the register tile: no block of its own
    names = _blocks(sch)
    assert "structured_conv2d_local" in names and not {"T_multiply", "compute"} & set(names)
    arrays = _random(tensors, np.random.default_rng(1))
    conv = _conv_numpy(arrays[0], arrays[1], 1)
    np.testing.assert_allclose(
        _run(sch.mod, arrays), conv / (1 + np.exp(-conv)), rtol=1e-5, atol=1e-5
    )


def test_rule_declines_a_function_that_is_not_its_kind():
    data = te.placeholder((1, 4, 4, 8), name="data")
    out = topi.nn.pool2d(data, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout="NHWC")
    assert StructuredConv2dRule().apply(te.create_prim_func([data, out]), HOST, False) is None


@pytest.mark.parametrize("make", [lambda: se_gate(16, 24, 3, 5, 8), lambda: silu(8, 16, 6, 8)])
def test_fallback_schedules_any_function_exactly(make):
    tensors = make()
    func = te.create_prim_func(tensors)
    sch = Fallback().apply(func, HOST, False)
    assert sch is not None
    assert Fallback().apply(func, tvm.target.Target("cuda"), False) is None
    arrays = _random(tensors, np.random.default_rng(2))
    expected = _run(func, arrays)  # TVM's unscheduled lowering as the reference
    np.testing.assert_allclose(_run(sch.mod, arrays), expected, rtol=1e-5, atol=1e-5)
