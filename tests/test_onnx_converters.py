"""ONNX Clip imports as Relax maximum/minimum: planned in NHWC and fused into the conv before it
(TVM's own converter emits opaque call_tir that ran between two transposes), exact against
onnxruntime in both of Clip's forms (bounds as inputs, opset 13; as attributes, opset 6)."""

import numpy as np
import onnx
import onnxruntime
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_structconv.build import compile_model, prepare_module, scheduled_pipeline
from tvm_structconv.frontend import load_model
from tvm_structconv.schedules.packing import conv_layout

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)


def conv_clip_model(opset: int, low: float, high: float) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype("float32"), "w")
    initializers = [weight]
    if opset >= 11:
        initializers += [
            numpy_helper.from_array(np.array(low, "float32"), "low"),
            numpy_helper.from_array(np.array(high, "float32"), "high"),
        ]
        clip = helper.make_node("Clip", ["y", "low", "high"], ["z"])
    else:
        clip = helper.make_node("Clip", ["y"], ["z"], min=low, max=high)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), clip],
        "conv_clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 12])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 10, 12])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, low, high", [(13, 0.0, 6.0), (6, -1.5, 2.0), (13, -3.0, 3.0)])
def test_clip_fuses_into_the_conv_in_nhwc_and_matches_onnxruntime(tmp_path, opset, low, high):
    path = tmp_path / "conv_clip.onnx"
    onnx.save(conv_clip_model(opset, low, high), path)
    imported = load_model(path)
    calls = []
    relax.analysis.post_order_visit(
        imported.mod["main"].body,
        lambda e: calls.append(e.op.name) if isinstance(e, relax.Call) else None,
    )
    assert "relax.maximum" in calls and "relax.minimum" in calls and "relax.call_tir" not in calls

    prepared = prepare_module(imported, structured=False, layout=conv_layout(HOST))
    main = prepared.mod["main"].script()
    assert main.count("R.permute_dims(") == 2  # the input to NHWC and the output back
    kernels = [gv.name_hint for gv, _ in scheduled_pipeline(HOST)(prepared.mod).functions_items()]
    assert any("structured_conv2d" in k and "maximum" in k and "minimum" in k for k in kernels)
    x = np.random.default_rng(1).standard_normal((1, 8, 10, 12)).astype("float32") * 3
    compiled = compile_model(imported, HOST, structured=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    np.testing.assert_allclose(compiled.run(x)[0], expected, rtol=1e-5, atol=1e-5)
    assert np.isclose(expected.min(), low) and np.isclose(expected.max(), high)
