"""The TE computes of ops.py, unscheduled: NCHW and packed NHWC against torch, packing, stages."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.packing import divisor_block
from tvm_structconv.structure import Structure

from strategies import conv_geometries, output_channels, structures

TARGET = tvm.target.Target({"kind": "llvm"})


def oracle(x: np.ndarray, alpha: np.ndarray, structure: Structure, stride, padding, dilation):
    """torch's conv2d with the composed kernel; padding is (top, left, bottom, right)."""
    top, left, bottom, right = padding
    padded = F.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    weight = structure.compose(torch.from_numpy(alpha).double())
    return F.conv2d(
        padded, weight, stride=stride, dilation=dilation, groups=structure.groups
    ).numpy()


def run_te(make, inputs):
    """Build the TE function ``make(*placeholders)`` unscheduled and run it on numpy inputs."""
    placeholders = [
        te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)
    ]
    out = make(*placeholders)
    executable = tvm.compile(te.create_prim_func([*placeholders, out]), target=TARGET).jit()
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    executable(*(tvm.runtime.tensor(a) for a in inputs), result)
    return result.numpy()


def conv_case(structure, out_channels, geometry, seed):
    """A random input and ``alpha`` for ``structure`` and ``geometry``, and torch's result."""
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(structure.alpha_shape(out_channels)).astype("float32")
    size = geometry.input_size(structure.kernel_size)
    x = rng.standard_normal((1, structure.in_channels, *size)).astype("float32")
    expected = oracle(x, alpha, structure, geometry.stride, geometry.padding, geometry.dilation)
    return x, alpha, expected


@st.composite
def conv_cases(draw):
    """A structure, its output channels and a geometry drawn per axis (stride (2, 1) …)."""
    structure = draw(structures(max_channels=4, max_kernel=3))
    return structure, draw(output_channels(structure.groups)), draw(conv_geometries())


@settings(max_examples=30)
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_nchw_compute_equals_conv_with_composed_kernel(case, seed):
    structure, out_channels, geometry = case
    x, alpha, expected = conv_case(structure, out_channels, geometry, seed)
    got = run_te(
        lambda data, a: ops.structured_conv2d(
            data, a, structure, geometry.stride, geometry.padding, geometry.dilation
        ),
        [x, alpha],
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=40)
@given(
    conv_cases(), st.integers(0, 2**31 - 1), st.integers(1, 8), st.sampled_from(["NHWC", "NCHW"])
)
def test_nhwc_compute_with_packed_alpha_equals_conv(case, seed, preferred, data_layout):
    """NHWC output from NHWC data, or from NCHW data read as NHWC by the padding stage."""
    structure, out_channels, geometry = case
    x, alpha, expected = conv_case(structure, out_channels, geometry, seed)
    block = divisor_block(alpha.shape[0], structure.groups, preferred)
    packed = ops.pack_alpha(alpha, block)
    got = run_te(
        lambda data, a: ops.structured_conv2d_nhwc(
            data,
            a,
            structure,
            geometry.stride,
            geometry.padding,
            geometry.dilation,
            data_layout=data_layout,
        ),
        [x.transpose(0, 2, 3, 1).copy() if data_layout == "NHWC" else x, packed],
    )
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "structure, stride",
    [
        (Structure(8, 1, 4, 1), (2, 1)),
        (Structure(8, 1, 4, 1), (1, 3)),
        (Structure(6, 1, 2, 1, groups=2), (3, 2)),
    ],
)
def test_strided_1x1_nhwc_subsamples_each_axis_by_its_own_stride(structure, stride):
    """The strided 1x1 path pools only the strided grid: rows by ``sh``, columns by ``sw``."""
    rng = np.random.default_rng(3)
    alpha = rng.standard_normal(structure.alpha_shape(4)).astype("float32")
    x = rng.standard_normal((1, structure.in_channels, 7, 8)).astype("float32")
    got = run_te(
        lambda data, a: ops.structured_conv2d_nhwc(data, a, structure, stride),
        [x.transpose(0, 2, 3, 1).copy(), ops.pack_alpha(alpha, 2)],
    )
    expected = oracle(x, alpha, structure, stride, (0, 0, 0, 0), (1, 1))
    assert got.shape == expected.transpose(0, 2, 3, 1).shape
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "structure",
    [
        Structure(64, 1, 32, 1),
        Structure(48, 1, 6, 1, groups=3),
        Structure(6, (1, 9), 6, (1, 2), groups=2),
    ],
)
def test_long_windows_are_summed_by_doubling(structure):
    """Channel windows of 33 and 15 (in groups), a width window of 8 dilated by 2."""
    rng = np.random.default_rng(5)
    alpha = rng.standard_normal(structure.alpha_shape(structure.groups * 2)).astype("float32")
    x = rng.standard_normal((1, structure.in_channels, 3, 20)).astype("float32")
    got = run_te(
        lambda data, a: ops.structured_conv2d(data, a, structure, dilation=(1, 2)), [x, alpha]
    )
    np.testing.assert_allclose(
        got, oracle(x, alpha, structure, 1, (0, 0, 0, 0), (1, 2)), rtol=1e-4, atol=1e-4
    )


def test_pack_alpha_puts_a_block_of_output_channels_innermost():
    alpha = np.arange(8 * 3 * 2 * 2, dtype="float32").reshape(8, 3, 2, 2)
    packed = ops.pack_alpha(alpha, 4)
    assert packed.shape == (2, 2, 2, 3, 4)
    for o, i, h, w in np.ndindex(alpha.shape):
        assert packed[o // 4, h, w, i, o % 4] == alpha[o, i, h, w]
    with pytest.raises(ValueError, match="block 3 does not divide 8"):
        ops.pack_alpha(alpha, 3)


def block_names(func: tvm.tirx.PrimFunc) -> list:
    sch = s_tir.Schedule(func)
    return [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stages_vanish_with_the_trivial_structure_and_the_rule_is_on_the_conv(layout):
    data_shape = (1, 8, 9, 9) if layout == "NCHW" else (1, 9, 9, 8)
    data = te.placeholder(data_shape, name="data")

    def make(structure):
        if layout == "NCHW":
            alpha = te.placeholder(structure.alpha_shape(8), name="alpha")
            return alpha, ops.structured_conv2d(data, alpha, structure, padding=(1, 1, 1, 1))
        c, (nh, nw) = structure.group_reduced_channels, structure.reduced_kernel_size
        alpha = te.placeholder((1, nh, nw, c, 8), name="alpha")
        return alpha, ops.structured_conv2d_nhwc(data, alpha, structure, padding=(1, 1, 1, 1))

    alpha, out = make(Structure(8, 3, 8, 3))
    func = te.create_prim_func([data, alpha, out])
    assert block_names(func) == ["pad", "structured_conv2d"]
    alpha, out = make(Structure(8, 3, 4, 2))
    assert block_names(te.create_prim_func([data, alpha, out])) == [  # D = 5 = 4 + 1, M = 2
        "pad",
        "pool_channel_2",
        "pool_channel_4",
        "pool_channel",
        "pool_width",
        "pool_height",
        "structured_conv2d",
    ]
    assert out.op.attrs["schedule_rule"] == ops.SCHEDULE_RULE


def test_sum_pool_rejects_an_unknown_layout():
    with pytest.raises(ValueError, match="layout must be one of"):
        ops.sum_pool(te.placeholder((1, 4, 4, 4)), Structure(4, 3, 2, 2), layout="NCWH")


def test_structured_dense_equals_linear_with_composed_weight():
    structure = Structure(12, 1, 5, 1)
    rng = np.random.default_rng(0)
    alpha = rng.standard_normal((7, 5)).astype("float32")
    x = rng.standard_normal((3, 12)).astype("float32")
    got = run_te(lambda data, a: ops.structured_dense(data, a, structure), [x, alpha])
    expected = x.astype(np.float64) @ structure.compose(alpha.astype(np.float64)).T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_structured_dense_over_a_batch_of_tokens_is_named_and_tagged():
    """A 3-D input (batch, tokens, features): the leading axes pass through unchanged."""
    structure = Structure(10, 1, 4, 1)
    rng = np.random.default_rng(1)
    alpha = rng.standard_normal((6, 4)).astype("float32")
    x = rng.standard_normal((2, 3, 10)).astype("float32")
    got = run_te(lambda data, a: ops.structured_dense(data, a, structure), [x, alpha])
    expected = x.astype(np.float64) @ structure.compose(alpha.astype(np.float64)).T
    assert got.shape == (2, 3, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    out = ops.structured_dense(te.placeholder((2, 3, 10)), te.placeholder((6, 4)), structure)
    assert (out.op.name, out.op.tag) == ("structured_dense", "structured_dense")
    assert out.op.input_tensors[0].op.name == "pool_channel"


def test_nhwc_block_across_groups_of_one_output_with_several_reduced_channels():
    """Two groups of one output each, packed in one block of 2: each output reads its own
    group's two reduced channels (the general channel map of ``_pooled_channel``)."""
    structure = Structure(8, 3, 4, 2, groups=2)
    rng = np.random.default_rng(7)
    alpha = rng.standard_normal(structure.alpha_shape(2)).astype("float32")
    x = rng.standard_normal((1, 8, 6, 6)).astype("float32")
    got = run_te(
        lambda data, a: ops.structured_conv2d_nhwc(data, a, structure, padding=(1, 1, 1, 1)),
        [x.transpose(0, 2, 3, 1).copy(), ops.pack_alpha(alpha, 2)],
    )
    expected = oracle(x, alpha, structure, 1, (1, 1, 1, 1), 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
