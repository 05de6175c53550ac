"""What the structured-conv rewrite reports: names of unnamed weights, where each structure came
from (manifest, matched by value, or why none), manifest entries that matched nothing, and the
printed table (transform mutation survivors)."""

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.structure import Structure
from tvm_structconv.transform import RewriteStructuredConv, rewrite_structured_conv

from relax_modules import chain_module


def two_conv_module(first: np.ndarray, second: np.ndarray):
    """``main(x) = conv2d(conv2d(x, first, padding=1), second, padding=1)`` on 1x4x6x6."""
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    constants = relax.const(first), relax.const(second)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, constants[0], padding=1))
            out = builder.emit_output(builder.emit(relax.op.nn.conv2d(y, constants[1], padding=1)))
        builder.emit_func_output(out)
    return builder.get(), constants


def structured_weight(seed: int) -> np.ndarray:
    """A 4x4x3x3 weight with the structure ``Structure(4, 3, 2, 2)``."""
    alpha = np.random.default_rng(seed).standard_normal((4, 2, 2, 2))
    return Structure(4, 3, 2, 2).compose(alpha).astype("float32")


def random_weight(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 4, 3, 3)).astype("float32")


def test_unnamed_weights_are_numbered_with_their_shape_and_unmatched_entries_listed():
    mod, (first, _) = two_conv_module(structured_weight(0), random_weight(1))
    manifest = Manifest({"a": LayerSpec(2, (2, 2)), "ghost": LayerSpec(1, (1, 1))})
    _, report = rewrite_structured_conv(mod, manifest, {first: "a"})
    assert [(layer.name, layer.rewritten, layer.reason) for layer in report.layers] == [
        ("a", True, "manifest"),
        ("conv2d #1 (4x4x3x3)", False, "no recorded structure"),
    ]
    assert report.unmatched == ["ghost"]


def test_structures_found_by_value_only_when_asked():
    mod, _ = two_conv_module(structured_weight(2), random_weight(3))
    _, report = rewrite_structured_conv(mod, Manifest({}), match_by_value=True)
    found, other = report.layers
    assert (found.rewritten, found.reason, found.structure) == (
        True,
        "matched by value",
        Structure(4, 3, 2, 2),
    )
    assert (other.rewritten, other.reason) == (False, "no recorded structure and none detected")
    after, report = rewrite_structured_conv(mod, Manifest({}))
    assert after.same_as(mod) and not report.rewritten
    assert RewriteStructuredConv(Manifest({}))(mod).same_as(mod)  # the pass: not by value


def test_a_recorded_structure_that_reduces_nothing_is_skipped():
    mod, (first, second) = two_conv_module(random_weight(4), random_weight(5))
    manifest = Manifest({"a": LayerSpec(4, (3, 3))})
    after, report = rewrite_structured_conv(mod, manifest, {first: "a", second: "b"})
    assert after.same_as(mod)
    assert report.layers[0].reason == "recorded structure reduces nothing (c = C, n = N)"
    assert report.layers[0].structure is None and report.layers[0].residual is None


def test_report_totals_and_table():
    mod, (first, second) = two_conv_module(structured_weight(6), random_weight(7))
    manifest = Manifest({"a": LayerSpec(2, (2, 2)), "ghost": LayerSpec(1, (1, 1))})
    _, report = rewrite_structured_conv(mod, manifest, {first: "a", second: "b"})
    pixels = 6 * 6
    before = (4 * 4 * 9 * pixels, 4 * 4 * 9 * pixels)
    after = (4 * 2 * 4 * pixels, before[1])
    assert [(layer.macs_before, layer.macs_after) for layer in report.layers] == list(
        zip(before, after)
    )
    assert (report.macs_before, report.macs_after) == (sum(before), sum(after))
    assert (report.params_before, report.params_after) == (2 * 144, 32 + 144)
    lines = report.format().splitlines()
    assert len(lines) == 1 + 2 + 1 + 1  # header, two layers, the unmatched entry, totals
    assert lines[0].split() == ["layer", "kind", "C/N", "->", "c/n", "MACs", "before"] + [
        "MACs",
        "after",
        "status",
    ]
    assert lines[1].split() == ["a", "conv2d", "4/3x3", "->", "2/2x2"] + [
        f"{before[0]:,}",
        f"{after[0]:,}",
        "rewritten",
        "(manifest)",
    ]
    assert lines[2].split() == ["b", "conv2d", "-", f"{before[1]:,}", f"{after[1]:,}"] + [
        "skipped:",
        "no",
        "recorded",
        "structure",
    ]
    assert lines[3].split()[0] == "ghost" and "matched no weight of the model" in lines[3]
    ratio = sum(before) / sum(after)
    assert lines[4] == (
        f"1 of 2 layers rewritten; conv/linear MACs {sum(before):,} -> {sum(after):,} "
        f"({ratio:.2f}x)"
    )
    # the columns line up: each field starts where its header does
    assert lines[1].index("4/3x3") == lines[0].index("C/N") == lines[2].index("-  ")


def test_an_empty_report_has_no_ratio():
    mod = chain_module((1, 4), relax.op.nn.relu)
    after, report = rewrite_structured_conv(mod, Manifest({}))
    assert after.same_as(mod) and report.layers == [] and report.unmatched == []
    assert (
        report.format().splitlines()[-1]
        == "0 of 0 layers rewritten; conv/linear MACs 0 -> 0 (nanx)"
    )


def test_a_linear_layer_of_symbolic_shape_is_skipped_with_the_reason():
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, 8), "float32"))
    weight = Structure(8, 1, 4, 1).compose(np.ones((3, 4, 1, 1)))[:, :, 0, 0].astype("float32")
    constant = relax.const(weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            rhs = builder.emit(relax.op.permute_dims(constant, [1, 0]))
            out = builder.emit_output(builder.emit(relax.op.matmul(x, rhs)))
        builder.emit_func_output(out)
    mod = builder.get()
    after, report = rewrite_structured_conv(
        mod, Manifest({"fc": LayerSpec(4, (1, 1))}), {constant: "fc"}
    )
    assert after.same_as(mod)
    (layer,) = report.layers
    assert (layer.name, layer.kind, layer.rewritten, layer.reason) == (
        "fc",
        "linear",
        False,
        "input or output shape is not static",
    )


def test_unnamed_weights_are_numbered_in_order_and_a_named_odd_constant_keeps_its_name():
    mod, _ = two_conv_module(random_weight(8), random_weight(9))
    _, report = rewrite_structured_conv(mod, Manifest({}))
    assert [layer.name for layer in report.layers] == [
        "conv2d #1 (4x4x3x3)",
        "conv2d #2 (4x4x3x3)",
    ]
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    named, unnamed = (relax.const(np.ones((2, 3, 4), "float32")) for _ in range(2))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            a = builder.emit(relax.op.matmul(x, named))
            b = builder.emit(relax.op.matmul(x, unnamed))
            out = builder.emit_output(builder.emit(relax.op.add(a, b)))
        builder.emit_func_output(out)
    _, report = rewrite_structured_conv(builder.get(), Manifest({}), {named: "odd.weight"})
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("odd.weight", "linear"),
        ("matmul #1 (2x3x4)", "linear"),
    ]
