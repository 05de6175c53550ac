"""The constants a pass makes keep the dtype of the values they are made from: a float64
model's folded BatchNorm, the ``alpha`` of a structured conv (NCHW, packed NHWC) and Linear
(dense, as a 1x1 conv), an ordinary conv's packed kernel. ``relax.const(array)`` without a
dtype made each of them float32 (ExpandClip and SinkTransposes: their ``*_dtypes`` tests).

The float64 model through the whole compile is ``tests/integration/test_float64_models.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_structconv import ops
from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.structure import Structure
from tvm_structconv.transform import fold_batchnorm, rewrite_ordinary_conv, rewrite_structured_conv
from tvm_structconv.transform.relax_functions import typed_const

from relax_modules import bn_params, chain_module, conv2d_module

NHWC = {"relax.nn.conv2d": ["NHWC", "OHWI"]}
CONV = Structure(8, 3, 4, 2)
LINEAR = Structure(16, 1, 8, 1)


def constants(mod: tvm.IRModule) -> list[np.ndarray]:
    """The values of the constants of ``main``, in post order."""
    found = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: found.append(e.value.numpy()) if isinstance(e, tvm.ir.GenericConst) else None,
    )
    return found


def assert_float64(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Each constant float64 and equal to its float64 reference (float32 rounding: ~1e-8)."""
    assert [a.dtype for a in actual] == [np.dtype("float64")] * len(expected)
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(0, 1, 7),
        np.array(1 / 3),
        np.arange(6, dtype="int64").reshape(2, 3) + 2**40,
        np.ones((2, 2), "float16"),
        np.ones(3, "float32"),
        np.arange(4, dtype="int32"),
        np.array([True, False]),
    ],
    ids=["float64", "float64-0d", "int64", "float16", "float32", "int32", "bool"],
)
def test_typed_const_keeps_the_dtype_and_the_values(values):
    constant = typed_const(values)
    assert constant.value.numpy().dtype == values.dtype
    np.testing.assert_array_equal(constant.value.numpy(), values)


def test_folded_batchnorm_constants_stay_float64():
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    gamma, beta, mean, var = (p.astype("float64") for p in bn_params(4, 1))
    params = [relax.const(p, "float64") for p in (gamma, beta, mean, var)]
    mod = chain_module(
        (1, 3, 8, 8),
        lambda x: relax.op.nn.conv2d(x, relax.const(weight, "float64")),
        lambda y: relax.op.nn.batch_norm(y, *params, axis=1, epsilon=1e-5, training=False),
        lambda bn: relax.TupleGetItem(bn, 0),
        dtype="float64",
    )
    folded, report = fold_batchnorm(mod)
    assert len(report.folded) == 1
    scale = gamma / np.sqrt(var + 1e-5)
    assert_float64(
        constants(folded),
        [weight * scale[:, None, None, None], (beta - mean * scale).reshape(1, -1, 1, 1)],
    )


def structured_conv(layout: str) -> tuple[tvm.IRModule, relax.Expr, np.ndarray]:
    """A float64 conv with the structure ``CONV``, in ``layout``; its constant and alpha."""
    alpha = np.random.default_rng(2).standard_normal(CONV.alpha_shape(8))
    weight = CONV.compose(alpha)
    constant = relax.const(weight, "float64")
    mod = conv2d_module((1, 8, 9, 9), constant, dtype="float64", padding=1)
    if layout == "NHWC":
        mod = relax.transform.ConvertLayout(NHWC)(mod)
    return mod, constant, CONV.decompose(weight)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_structured_conv_alpha_stays_float64(layout):
    mod, constant, alpha = structured_conv(layout)
    manifest = Manifest({"w": LayerSpec(4, (2, 2))})
    after, report = rewrite_structured_conv(mod, manifest, {constant: "w"}, block_size=lambda *_: 4)
    assert [layer.name for layer in report.rewritten] == ["w"]
    assert_float64(constants(after), [alpha if layout == "NCHW" else ops.pack_alpha(alpha, 4)])


@pytest.mark.parametrize("as_conv", [False, True])
def test_structured_linear_alpha_stays_float64(as_conv):
    """``x @ Wᵀ`` with ``Wᵀ`` stored: ``structured_dense``, or the packed 1x1 conv."""
    weight = LINEAR.compose(np.random.default_rng(3).standard_normal((8, 8, 1, 1)))[:, :, 0, 0]
    constant = relax.const(np.ascontiguousarray(weight.T), "float64")
    mod = chain_module((1, 1, 6, 16), lambda x: relax.op.matmul(x, constant), dtype="float64")
    manifest = Manifest({"fc.weight": LayerSpec(8, (1, 1))})
    after, report = rewrite_structured_conv(
        mod, manifest, {constant: "fc.weight"}, block_size=lambda *_: 4, linear_as_conv=as_conv
    )
    assert [layer.name for layer in report.rewritten] == ["fc.weight"]
    alpha = LINEAR.decompose(weight[:, :, None, None])
    assert_float64(constants(after), [ops.pack_alpha(alpha, 4) if as_conv else alpha[:, :, 0, 0]])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_ordinary_conv_kernel_stays_float64(layout):
    weight = np.random.default_rng(4).standard_normal((8, 6, 3, 3))
    mod = conv2d_module((1, 6, 9, 9), relax.const(weight, "float64"), dtype="float64")
    if layout == "NHWC":
        mod = relax.transform.ConvertLayout(NHWC)(mod)
    after, report = rewrite_ordinary_conv(mod, lambda *_: 4)
    assert report.rewritten == [(8, 6, 3, 3)]
    assert_float64(constants(after), [weight if layout == "NCHW" else ops.pack_alpha(weight, 4)])
