"""The structured-conv rewrite: IR against an expected module (NCHW, NHWC after ConvertLayout,
Linear), what it reports and leaves alone, and its errors.

The rewritten models compiled and run against torch and onnxruntime are in
``tests/integration/test_structured_models.py``.
"""

import functools

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_structconv import ops
from tvm_structconv.manifest import LayerSpec, Manifest, ManifestError
from tvm_structconv.structure import Structure, default_tolerance
from tvm_structconv.transform.structured_conv import (
    RewriteStructuredConv,
    StructureMismatchError,
    rewrite_structured_conv,
)

from relax_modules import conv2d_module, fused_conv_module


def conv_module(weight: np.ndarray, **attrs) -> tuple[tvm.IRModule, tvm.ir.Constant]:
    x = relax.Var(
        "x", relax.TensorType((1, weight.shape[1] * attrs.get("groups", 1), 9, 9), "float32")
    )
    constant = relax.const(weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(x, constant, **attrs))
        builder.emit_func_output(out)
    return builder.get(), constant


def test_ir_matches_expected_module():
    structure = Structure(8, 3, 4, 2, groups=2)
    alpha = np.random.default_rng(0).standard_normal(structure.alpha_shape(6)).astype("float32")
    weight = structure.compose(alpha.astype(np.float64)).astype("float32")
    mod, constant = conv_module(weight, strides=2, padding=(1, 0, 2, 1), dilation=1, groups=2)
    manifest = Manifest({"w": LayerSpec(4, (2, 2))})
    actual, report = rewrite_structured_conv(mod, manifest, {constant: "w"})

    compute = functools.partial(
        ops.structured_conv2d,
        structure=structure,
        strides=[2, 2],
        padding=[1, 0, 2, 1],
        dilation=[1, 1],
        out_dtype="float32",
    )
    found = structure.decompose(weight.astype(np.float64)).astype("float32")
    expected = fused_conv_module((1, 8, 9, 9), compute, found)
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    tvm.ir.assert_structural_equal(
        RewriteStructuredConv(manifest, {constant: "w"})(mod), expected, map_free_vars=True
    )  # the pass form
    assert [layer.name for layer in report.rewritten] == ["w"]
    layer = report.layers[0]
    assert (layer.macs_before, layer.macs_after) == (
        6 * 4 * 9 * 5 * 4,
        6 * 2 * 4 * 5 * 4,
    )  # 5x4 output


def test_nhwc_conv_after_convert_layout_matches_expected_module():
    """ConvertLayout leaves permute_dims around the conv and on its weight; the NHWC op takes
    alpha packed in blocks of output channels (here 4, from ``block_size``) and reads the
    4-channel input in its NCHW layout (no transpose before it)."""
    structure = Structure(4, 3, 2, 2)
    alpha = np.random.default_rng(2).standard_normal(structure.alpha_shape(8))
    weight = structure.compose(alpha).astype("float32")
    constant = relax.const(weight)
    before = conv2d_module((1, 4, 9, 7), constant, strides=2, padding=(1, 0, 2, 1))
    before = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(before)
    manifest = Manifest({"w": LayerSpec(2, (2, 2))})
    blocks = []

    def block_size(out_channels, groups, out_width):
        blocks.append((out_channels, groups, out_width))
        return 4

    actual, report = rewrite_structured_conv(
        before, manifest, {constant: "w"}, block_size=block_size
    )

    packed = ops.pack_alpha(structure.decompose(weight.astype(np.float64)).astype("float32"), 4)
    compute = functools.partial(
        ops.structured_conv2d_nhwc,
        structure=structure,
        strides=[2, 2],
        padding=[1, 0, 2, 1],
        dilation=[1, 1],
        out_dtype="float32",
        data_layout="NCHW",
    )
    expected = fused_conv_module(
        (1, 4, 9, 7), compute, packed, layout_transposes=True, nchw_input=True
    )
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    tvm.ir.assert_structural_equal(
        RewriteStructuredConv(manifest, {constant: "w"}, block_size=lambda *_: 4)(before),
        expected,
        map_free_vars=True,
    )  # the pass form
    assert blocks == [(8, 1, 3)]  # output 1x5x3x8
    (layer,) = report.layers
    assert (layer.name, layer.rewritten, layer.structure) == ("w", True, structure)
    assert (layer.macs_before, layer.macs_after) == (8 * 4 * 9 * 5 * 3, 8 * 2 * 4 * 5 * 3)


@pytest.mark.parametrize("form", ["permute_dims", "transposed constant"])
def test_linear_layer_matches_expected_module(form):
    """``x @ permute_dims(W)`` (torch and ONNX frontends) and ``x @ Wᵀ`` stored transposed
    (torch's dynamo ONNX exporter) both become ``structured_dense(x, alpha)``."""
    structure = Structure(16, 1, 8, 1)
    alpha = np.random.default_rng(3).standard_normal((7, 8))
    weight = structure.compose(alpha).astype("float32")  # (out, in) = (7, 16)
    x = relax.Var("x", relax.TensorType((2, 16), "float32"))
    constant = relax.const(weight if form == "permute_dims" else np.ascontiguousarray(weight.T))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            transposed = (
                builder.emit(relax.op.permute_dims(constant, [1, 0]))
                if form == "permute_dims"
                else constant
            )
            out = builder.emit_output(builder.emit(relax.op.matmul(x, transposed)))
        builder.emit_func_output(out)
    before = builder.get()
    manifest = Manifest({"fc.weight": LayerSpec(8, (1, 1))})
    actual, report = rewrite_structured_conv(before, manifest, {constant: "fc.weight"})

    x = relax.Var("x", relax.TensorType((2, 16), "float32"))
    small = structure.decompose(weight.astype(np.float64)).astype("float32")
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            compute = functools.partial(
                ops.structured_dense, structure=structure, out_dtype="float32"
            )
            out = builder.emit_output(
                builder.call_te(
                    compute, x, relax.const(small), primfunc_name_hint="structured_dense"
                )
            )
        builder.emit_func_output(out)
    expected = builder.get()
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    tvm.ir.assert_structural_equal(
        RewriteStructuredConv(manifest, {constant: "fc.weight"})(before),
        expected,
        map_free_vars=True,
    )  # the pass form
    (layer,) = report.layers
    assert (layer.name, layer.kind, layer.rewritten) == ("fc.weight", "linear", True)
    assert (layer.macs_before, layer.macs_after) == (7 * 16 * 2, 7 * 8 * 2)
    assert (layer.params_before, layer.params_after) == (7 * 16, 7 * 8)


def test_unrecorded_and_unsupported_convs_are_reported_and_left_alone():
    weight = np.random.default_rng(1).standard_normal((4, 4, 3, 3)).astype("float32")
    mod, constant = conv_module(weight, padding=1)
    after, report = rewrite_structured_conv(mod, Manifest({}), {constant: "layer.weight"})
    assert after.same_as(mod)
    (layer,) = report.layers
    assert (layer.name, layer.rewritten, layer.reason) == (
        "layer.weight",
        False,
        "no recorded structure",
    )

    mixed_weight = Structure(4, 3, 2, 2).compose(np.ones((4, 2, 2, 2))).astype("float32")
    x = relax.Var("x", relax.TensorType((1, 4, 9, 9), "float32"))
    constant = relax.const(mixed_weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(x, constant, out_layout="NHWC"))
        builder.emit_func_output(out)
    mixed = builder.get()
    after, report = rewrite_structured_conv(
        mixed, Manifest({"w": LayerSpec(2, (2, 2))}), {constant: "w"}
    )
    assert after.same_as(mixed)
    assert "layout NCHW/OIHW/NHWC is not NCHW/OIHW/NCHW or NHWC/*/NHWC" in report.layers[0].reason


def test_weight_off_its_structure_is_refused_with_name_and_residual():
    structure = Structure(4, 3, 2, 2)
    weight = structure.compose(np.ones((4, 2, 2, 2)))
    weight[0, 0, 0, 0] += 0.01
    mod, constant = conv_module(weight.astype("float32"), padding=1)
    rewrite = RewriteStructuredConv(
        Manifest({"blocks.3.conv.weight": LayerSpec(2, (2, 2))}), {constant: "blocks.3.conv.weight"}
    )  # raises as a pass too
    with pytest.raises(
        StructureMismatchError,
        match=r"layer 'blocks.3.conv.weight'.*residual \d\.\d+e-0\d > tolerance 1.2e-05",
    ):
        rewrite(mod)


def test_manifest_that_does_not_fit_the_conv_is_an_error():
    weight = np.ones((4, 4, 3, 3), "float32")
    mod, constant = conv_module(weight)
    rewrite = RewriteStructuredConv(
        Manifest({"w": LayerSpec(8, (2, 2))}, "m.json"), {constant: "w"}
    )
    with pytest.raises(
        ManifestError, match=r"m.json: 'w' does not fit its weight of shape \(4, 4, 3, 3\)"
    ):
        rewrite(mod)


def test_default_tolerance_scales_with_dtype():
    assert default_tolerance("float32") == pytest.approx(1.1920929e-05)
    assert default_tolerance("float64") < 1e-13
    assert default_tolerance(torch.float32) == default_tolerance("float32")
