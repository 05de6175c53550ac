"""The Winograd structured conv: transform matrices, the TE compute and its x86 hand schedule
against torch over odd shapes and epilogues, the tile choice and the rule's answers."""

import math

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import te, topi

from tvm_structconv import ops, winograd
from tvm_structconv.schedules.cpu.winograd import (
    MIN_TILES,
    WinogradRule,
    WinogradTiling,
    choose_winograd_tile,
    choose_winograd_tiling,
)
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.structure import Structure

from conv_oracle import HOST, oracle


@pytest.mark.parametrize("tile", [2, 3, 4, 6])
def test_matrices_compute_the_two_tap_correlation(tile):
    a, b, g = winograd.winograd_matrices(tile)
    assert (a.shape, b.shape, g.shape) == ((tile + 1, tile), (tile + 1, tile + 1), (tile + 1, 2))
    rng = np.random.default_rng(tile)
    d, taps = rng.standard_normal(tile + 1), rng.standard_normal(2)
    expected = d[:-1] * taps[0] + d[1:] * taps[1]
    np.testing.assert_allclose(a.T @ ((g @ taps) * (b.T @ d)), expected, atol=1e-12)


def test_transform_alpha_pads_output_channels_to_the_block():
    alpha = np.arange(5 * 3 * 4, dtype="float32").reshape(5, 3, 2, 2)
    u = winograd.transform_alpha(alpha, 2, 4)
    assert u.shape == (3, 3, 2, 3, 4) and u.dtype == np.float32
    assert not u[:, :, 1, :, 1:].any()  # filters 5..7 are zeros
    _, _, g = winograd.winograd_matrices(2)
    expected = g @ alpha[4, 2].astype(np.float64) @ g.T
    np.testing.assert_allclose(u[:, :, 1, 2, 0], expected, rtol=1e-6)


def test_only_a_2x2_alpha_is_transformed():
    with pytest.raises(ValueError, match="2x2"):
        winograd.transform_alpha(np.zeros((4, 4, 3, 3), "float32"), 2, 4)
    with pytest.raises(ValueError, match="tile"):
        winograd.winograd_matrices(1)


def _epilogue(conv, bias, residual, relu):
    out = conv
    if bias is not None:
        out = topi.add(out, bias)
    if residual is not None:
        out = topi.add(out, residual)
    return topi.nn.relu(out) if relu else out


def run_winograd(x, alpha, tile, padding, bias=None, residual=None, relu=False, scheduled=True):
    """The Winograd op (hand-scheduled for the host, or not) on NHWC ``x`` and OIHW ``alpha``."""
    batch, height, width, channels = x.shape
    out_channels = alpha.shape[0]
    top, left, bottom, right = padding
    out_w = width + left + right - 2
    block = conv_layout(HOST).block_size(out_channels, 1, out_w)
    transformed = winograd.transform_alpha(alpha, tile, block)
    data = te.placeholder(x.shape, name="data")
    u = te.placeholder(transformed.shape, name="u")
    inputs, values = [data, u], [x, transformed]
    bias_tensor = residual_tensor = None
    if bias is not None:
        bias_tensor = te.placeholder(bias.shape, name="bias")
        inputs.append(bias_tensor)
        values.append(bias)
    if residual is not None:
        residual_tensor = te.placeholder(residual.shape, name="residual")
        inputs.append(residual_tensor)
        values.append(residual)
    conv = winograd.winograd_structured_conv2d_nhwc(data, u, out_channels, padding)
    out = _epilogue(conv, bias_tensor, residual_tensor, relu)
    func = te.create_prim_func([*inputs, out])
    if scheduled:
        sch = WinogradRule().apply(func, HOST, False)
        assert sch is not None
        func = sch.mod["main"]
    executable = tvm.compile(func, target=HOST)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    executable(*(tvm.runtime.tensor(v) for v in values), result)
    return result.numpy()


def reference(x, alpha, padding, bias=None, residual=None, relu=False):
    """torch's dense 3×3 conv with the composed kernel, then the epilogue, NHWC float64."""
    channels = x.shape[3]
    out = oracle(
        x.transpose(0, 3, 1, 2),
        alpha,
        Structure(channels, 3, channels, 2),
        (1, 1),
        padding,
        (1, 1),
        bias,
    )
    if residual is not None:
        out = out + residual
    return np.maximum(out, 0) if relu else out


@st.composite
def winograd_cases(draw):
    """A layer Winograd computes: odd sizes and channel counts, any padding, an epilogue."""
    padding = draw(st.tuples(*[st.integers(0, 2)] * 4))
    top, left, bottom, right = padding
    height = draw(st.integers(max(1, 3 - top - bottom), 17))
    width = draw(st.integers(max(1, 3 - left - right), 17))
    return dict(
        batch=draw(st.integers(1, 2)),
        height=height,
        width=width,
        channels=draw(st.integers(1, 21)),
        out_channels=draw(st.integers(1, 37)),
        padding=padding,
        tile=draw(st.sampled_from([2, 3, 4, 6])),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        relu=draw(st.booleans()),
    )


@settings(max_examples=40, deadline=None)
@given(winograd_cases(), st.integers(0, 2**31 - 1))
def test_scheduled_winograd_equals_torch(case, seed):
    rng = np.random.default_rng(seed)
    top, left, bottom, right = case["padding"]
    x = rng.standard_normal(
        (case["batch"], case["height"], case["width"], case["channels"])
    ).astype("float32")
    alpha = rng.standard_normal((case["out_channels"], case["channels"], 2, 2)).astype("float32")
    out_shape = (
        case["batch"],
        case["height"] + top + bottom - 2,
        case["width"] + left + right - 2,
        case["out_channels"],
    )
    bias = rng.standard_normal(case["out_channels"]).astype("float32") if case["bias"] else None
    residual = rng.standard_normal(out_shape).astype("float32") if case["residual"] else None
    expected = reference(x, alpha, case["padding"], bias, residual, case["relu"])
    got = run_winograd(x, alpha, case["tile"], case["padding"], bias, residual, case["relu"])
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_unscheduled_compute_equals_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 7, 9, 5)).astype("float32")
    alpha = rng.standard_normal((6, 5, 2, 2)).astype("float32")
    got = run_winograd(x, alpha, 4, (1, 1, 1, 1), scheduled=False)
    np.testing.assert_allclose(got, reference(x, alpha, (1, 1, 1, 1)), rtol=1e-4, atol=1e-4)


def test_resnet_shape_f4_error_is_far_inside_the_model_tolerance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 28, 28, 128)).astype("float32")
    alpha = (rng.standard_normal((128, 128, 2, 2)) / 20).astype("float32")
    expected = reference(x, alpha, (1, 1, 1, 1))
    got = run_winograd(x, alpha, 4, (1, 1, 1, 1))
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-5


def test_tile_choice_needs_enough_tiles():
    assert choose_winograd_tile(1, 56, 56) == 4
    assert choose_winograd_tile(1, 28, 28) == 4
    assert choose_winograd_tile(1, 14, 14) == 2  # F(4, 2) would have 16 tiles
    assert choose_winograd_tile(1, 7, 7) is None
    assert choose_winograd_tile(2, 7, 7) == 2  # the batch's tiles count
    assert all(
        choose_winograd_tile(1, size, size) is None
        for size in range(1, 20)
        if math.ceil(size / 2) ** 2 < MIN_TILES
    )


def test_chunks_and_register_tiles_are_whole_rows_or_parts_of_one():
    for tiles_h, tiles_w in [(14, 14), (7, 7), (4, 4), (19, 19), (3, 5), (1, 1)]:
        tiling = choose_winograd_tiling(tiles_h, tiles_w, 32, HOST)
        assert tiles_h % tiling.rows == 0
        assert tiling.tiles <= tiling.rows * tiles_w
        assert tiles_w % tiling.tiles == 0 or tiling.tiles % tiles_w == 0


def test_rule_declines_the_direct_conv():
    data = te.placeholder((1, 8, 8, 4), name="data")
    packed = te.placeholder((1, 2, 2, 4, 4), name="alpha")
    out = ops.structured_conv2d_nhwc(data, packed, Structure(4, 3, 4, 2), (1, 1), (1, 1, 1, 1))
    assert WinogradRule().apply(te.create_prim_func([data, packed, out]), HOST, False) is None


def test_meta_schedule_rule_is_registered():
    assert tvm.get_global_func("s_tir.meta_schedule.cpu.structured_winograd", True) is not None


def test_reference_is_the_composed_kernel():
    """The oracle's composed kernel is ``alpha`` summed over the four 2×2 shifts."""
    alpha = np.random.default_rng(2).standard_normal((3, 2, 2, 2))
    composed = Structure(2, 3, 2, 2).compose(torch.from_numpy(alpha)).numpy()
    expected = np.zeros((3, 2, 3, 3))
    for dy in (0, 1):
        for dx in (0, 1):
            expected[:, :, dy : dy + 2, dx : dx + 2] += alpha
    np.testing.assert_allclose(composed, expected)


def test_two_cores_split_output_channels_where_tile_rows_cannot_balance_them():
    """7 tile rows on 2 cores: one chunk of rows, the output channels in two parallel chunks
    (each recomputes the input transform); one core keeps one chunk of everything."""
    one_core = tvm.target.Target({"kind": "llvm", "mcpu": "znver5", "num-cores": 1})
    two_cores = tvm.target.Target({"kind": "llvm", "mcpu": "znver5", "num-cores": 2})
    assert choose_winograd_tiling(7, 7, 32, one_core, out_channels=128).channel_chunks == 1
    assert choose_winograd_tiling(7, 7, 32, two_cores, out_channels=128) == WinogradTiling(7, 7, 2)
    assert choose_winograd_tiling(14, 14, 32, two_cores, out_channels=64).channel_chunks == 1
    assert choose_winograd_tiling(7, 7, 32, two_cores, out_channels=40).channel_chunks == 1
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 14, 14, 8)).astype("float32")
    alpha = rng.standard_normal((64, 8, 2, 2)).astype("float32")
    bias = rng.standard_normal(64).astype("float32")
    got = run_winograd(x, alpha, 2, (1, 1, 1, 1), bias=bias, relu=True)
    expected = reference(x, alpha, (1, 1, 1, 1), bias=bias, relu=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
