"""Rewrite an ONNX model so its structured layers run as plain ONNX ops: AveragePool + small Conv.

This is how a peer runtime (onnxruntime) runs a structured model without our compiler: the
sum-pool as ``AveragePool`` times the window size (unfused), then the reduced ``Conv`` /
``Gemm`` with ``alpha``. Benchmarks use it to show what fusion buys over running the same math
as separate ops.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from tvm_structconv.manifest import Manifest
from tvm_structconv.structure import Structure

__all__ = ["rewrite_structured_onnx"]


def _attributes(node: onnx.NodeProto) -> Dict[str, object]:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


class _Rewriter:
    """Builds the replacement nodes; names every new tensor after the layer it belongs to."""

    def __init__(self, model: onnx.ModelProto, manifest: Manifest) -> None:
        self.model = model
        self.manifest = manifest
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        inferred = shape_inference.infer_shapes(model)
        self.shapes = {
            value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*inferred.graph.value_info, *inferred.graph.input)
        }
        self.new_initializers: List[onnx.TensorProto] = []
        self.rewritten: List[str] = []
        self.dilated = False

    def alpha(self, name: str, weight: np.ndarray, structure: Structure) -> str:
        """Decompose ``weight``, refusing one off its structure; return the alpha initializer."""
        exact = weight.astype(np.float64)
        residual = structure.residual(exact)
        tolerance = 100 * float(np.finfo(weight.dtype).eps)
        if residual > tolerance:
            raise ValueError(
                f"layer {name!r}: weights do not satisfy the recorded {structure}: "
                f"residual {residual:.3e} > tolerance {tolerance:.1e}"
            )
        return self.constant(f"{name}/alpha", structure.decompose(exact).astype(weight.dtype))

    def constant(self, name: str, array: np.ndarray) -> str:
        self.new_initializers.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, node: onnx.NodeProto) -> Optional[List[onnx.NodeProto]]:
        weight_name = node.input[1]
        if weight_name not in self.manifest.layers or weight_name not in self.initializers:
            return None
        weight = numpy_helper.to_array(self.initializers[weight_name])
        attributes = _attributes(node)
        groups = int(attributes.get("group", 1))
        structure = self.manifest.layers[weight_name].structure(weight.shape, groups)
        if structure.is_trivial or attributes.get("auto_pad", b"NOTSET") not in (
            b"NOTSET",
            "NOTSET",
        ):
            return None
        depth, window_h, window_w = structure.pool_window
        dilation = [int(d) for d in attributes.get("dilations", [1, 1])]
        pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]  # top, left, bottom, right
        prefix = node.name or weight_name
        nodes: List[onnx.NodeProto] = []
        current = node.input[0]
        if any(pads):
            pad_values = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
            padded = f"{prefix}/padded"
            nodes.append(
                helper.make_node(
                    "Pad",
                    [current, self.constant(f"{prefix}/pads", np.array(pad_values, np.int64))],
                    [padded],
                )
            )
            current = padded
        pooled = f"{prefix}/pooled_mean"
        if depth == 1:
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    [current],
                    [pooled],
                    kernel_shape=[window_h, window_w],
                    dilations=dilation,
                )
            )
        else:
            batch, channels, height, width = self.shapes[node.input[0]]
            height, width = height + pads[0] + pads[2], width + pads[1] + pads[3]
            grouped = f"{prefix}/grouped"
            nodes.append(
                helper.make_node(
                    "Reshape",
                    [
                        current,
                        self.constant(
                            f"{prefix}/grouped_shape",
                            np.array(
                                [batch * groups, 1, channels // groups, height, width], np.int64
                            ),
                        ),
                    ],
                    [grouped],
                )
            )
            pooled5 = f"{prefix}/pooled5"
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    [grouped],
                    [pooled5],
                    kernel_shape=[depth, window_h, window_w],
                    dilations=[1, *dilation],
                )
            )
            out_h = height - dilation[0] * (window_h - 1)
            out_w = width - dilation[1] * (window_w - 1)
            nodes.append(
                helper.make_node(
                    "Reshape",
                    [
                        pooled5,
                        self.constant(
                            f"{prefix}/pooled_shape",
                            np.array([batch, structure.reduced_channels, out_h, out_w], np.int64),
                        ),
                    ],
                    [pooled],
                )
            )
        summed = f"{prefix}/pooled"
        count = np.array(depth * window_h * window_w, dtype=weight.dtype)
        nodes.append(
            helper.make_node("Mul", [pooled, self.constant(f"{prefix}/window", count)], [summed])
        )
        self.dilated |= dilation != [1, 1]
        inputs = [summed, self.alpha(weight_name, weight, structure), *node.input[2:]]
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                list(node.output),
                name=f"{prefix}/reduced",
                strides=attributes.get("strides", [1, 1]),
                dilations=dilation,
                group=groups,
            )
        )
        self.rewritten.append(weight_name)
        return nodes

    def gemm(self, node: onnx.NodeProto) -> Optional[List[onnx.NodeProto]]:
        attributes = _attributes(node)
        weight_name = node.input[1]
        if (
            weight_name not in self.manifest.layers
            or weight_name not in self.initializers
            or attributes.get("transB", 0) != 1
            or attributes.get("transA", 0) != 0
        ):
            return None
        weight = numpy_helper.to_array(self.initializers[weight_name])
        structure = self.manifest.layers[weight_name].structure(weight.shape)
        if structure.is_trivial:
            return None
        prefix = node.name or weight_name
        depth = structure.pool_window[0]
        names = [
            f"{prefix}/{suffix}" for suffix in ("expanded", "pooled3", "pooled_mean", "pooled")
        ]
        axis = self.constant(f"{prefix}/axis", np.array([1], np.int64))
        alpha = self.alpha(weight_name, weight, structure)
        nodes = [
            helper.make_node("Unsqueeze", [node.input[0], axis], [names[0]]),
            helper.make_node("AveragePool", [names[0]], [names[1]], kernel_shape=[depth]),
            helper.make_node("Squeeze", [names[1], axis], [names[2]]),
            helper.make_node(
                "Mul",
                [names[2], self.constant(f"{prefix}/window", np.array(depth, dtype=weight.dtype))],
                [names[3]],
            ),
            helper.make_node(
                "Gemm",
                [names[3], alpha, *node.input[2:]],
                list(node.output),
                name=f"{prefix}/reduced",
                transB=1,
                alpha=float(attributes.get("alpha", 1.0)),
                beta=float(attributes.get("beta", 1.0)),
            ),
        ]
        self.rewritten.append(weight_name)
        return nodes


def rewrite_structured_onnx(
    model: onnx.ModelProto, manifest: Manifest
) -> tuple[onnx.ModelProto, List[str]]:
    """A copy of ``model`` whose structured ``Conv`` / ``Gemm`` layers run as pool + small op.

    Layers are found by their weight initializer's name in ``manifest``; a weight that does not
    fit its recorded structure raises ``ValueError`` (as in the compiler). Needs static input
    shapes for grouped convs with a channel window.

    Returns
    -------
    (model, rewritten)
        The new model (opset raised to 19 only for dilated pools) and the weight names
        of the rewritten layers.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    rewriter = _Rewriter(model, manifest)
    nodes: List[onnx.NodeProto] = []
    for node in model.graph.node:
        replacement = None
        if node.op_type == "Conv" and len(node.input) >= 2:
            replacement = rewriter.conv(node)
        elif node.op_type == "Gemm" and len(node.input) >= 2:
            replacement = rewriter.gemm(node)
        nodes.extend(replacement if replacement is not None else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + rewriter.new_initializers)
    for opset in model.opset_import:
        if rewriter.dilated and opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19  # AveragePool has dilations from opset 19 on
    onnx.checker.check_model(model)
    return model, rewriter.rewritten
