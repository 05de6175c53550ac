"""Make an ONNX graph static before import: bind its input shapes, fold its shape arithmetic.

Exported models often compute shapes at run time: ShuffleNet's ``chunk`` becomes
``Shape → Gather → Div → Slice``, a symbolic batch makes every ``Reshape`` depend on it. TVM's
ONNX importer turns such a subgraph into ``dynamic_strided_slice`` and tensors of unknown
shape, which no conv rewrite or schedule can read. With every input shape fixed, each of those
values is a constant: :func:`make_static` binds the input shapes (given ones, or a symbolic
batch bound to 1), infers the shapes of every value (``onnx.shape_inference``), and replaces
each node computed from shapes and constants alone by a ``Constant`` node holding its value
(evaluated with ``onnx.reference``). Weights (float initializers) are never folded, so the
names the manifest refers to stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

__all__ = ["InputShapeError", "StaticModel", "graph_inputs", "make_static", "parse_input_shape"]

#: A folded value larger than this is left to the runtime (shape tensors are tiny).
MAX_FOLDED_ELEMENTS = 4096
#: Nodes never folded: their value is not a function of their inputs.
NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}


class InputShapeError(ValueError):
    """An input shape that is missing, malformed or does not fit the model."""


@dataclass
class StaticModel:
    """The static model and what was done to make it so.

    Attributes
    ----------
    model
        The ONNX model with static inputs and folded shape arithmetic.
    input_shapes
        ``{input name: shape}`` as bound.
    notes
        One line per decision the user should know about (a batch bound to 1).
    folded
        How many nodes were replaced by constants.
    """

    model: onnx.ModelProto
    input_shapes: Dict[str, Tuple[int, ...]]
    notes: List[str] = field(default_factory=list)
    folded: int = 0


def parse_input_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """``"NAME:1x3x224x224"`` (tvmc's ``--input-shapes`` form) as ``(name, shape)``.

    The name is everything before the last ``:`` (ONNX names may contain colons).
    """
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise InputShapeError(
            f"input shape {text!r} is not NAME:D1xD2x... with positive dims "
            "(e.g. input:1x3x224x224)"
        )
    return name, shape


def graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    """The model's real inputs: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> List[object]:
    """Each dim of ``value``: an int, or the symbolic name (``"?"`` when unnamed)."""
    dims = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return dims


def _bind_inputs(
    model: onnx.ModelProto, given: Mapping[str, Sequence[int]]
) -> Tuple[Dict[str, Tuple[int, ...]], List[str]]:
    """Fix every input's dims in ``model`` (in place); return the shapes and notes."""
    inputs = graph_inputs(model)
    names = [value.name for value in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputShapeError(
            f"--input-shape names {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not an input of the "
            f"model; its inputs: {', '.join(names)}"
        )
    shapes, notes = {}, []
    for value in inputs:
        dims = _dims(value)
        if value.name in given:
            shape = tuple(int(d) for d in given[value.name])
            if len(shape) != len(dims):
                raise InputShapeError(
                    f"input {value.name!r} has {len(dims)} dims "
                    f"{_show(dims)}, --input-shape gives {len(shape)}"
                )
            clash = [
                i for i, (d, s) in enumerate(zip(dims, shape)) if isinstance(d, int) and d != s
            ]
            if clash:
                raise InputShapeError(
                    f"input {value.name!r} is {_show(dims)}; --input-shape "
                    f"{'x'.join(map(str, shape))} differs at axis {clash[0]}"
                )
        else:
            symbolic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
            if [i for i in symbolic if i != 0]:
                raise InputShapeError(
                    f"input {value.name!r} has symbolic dims {_show(dims)}; give its shape with "
                    f"--input-shape {value.name}:"
                    f"{'x'.join(str(d) if isinstance(d, int) else 'N' for d in dims)}"
                )
            if symbolic:
                notes.append(
                    f"input {value.name!r}: symbolic batch {dims[0]!r} bound to 1 "
                    f"(--input-shape {value.name}:N{'x'.join([''] + [str(d) for d in dims[1:]])} "
                    "for another)"
                )
            shape = tuple(1 if not isinstance(d, int) else d for d in dims)
        tensor_shape = value.type.tensor_type.shape
        del tensor_shape.dim[:]
        for d in shape:
            tensor_shape.dim.add().dim_value = d
        shapes[value.name] = shape
    return shapes, notes


def _show(dims: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _static_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[int, ...]]:
    """Every value's shape that shape inference can fix, by name."""
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = _dims(value)
        if value.type.tensor_type.HasField("shape") and all(isinstance(d, int) for d in dims):
            shapes[value.name] = tuple(dims)
    return shapes


def _evaluate(
    node: onnx.NodeProto, values: Mapping[str, np.ndarray], opset: Sequence[onnx.OperatorSetIdProto]
) -> Optional[List[np.ndarray]]:
    """The outputs of ``node`` on known inputs (``onnx.reference``), or ``None`` if it fails."""
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(values[name].dtype), values[name].shape
            )
            for name in dict.fromkeys(inputs)
        ],
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
            for name in node.output
            if name
        ],
    )
    try:
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=opset))
        return [np.asarray(v) for v in evaluator.run(None, {n: values[n] for n in inputs})]
    except Exception:  # an op the reference runtime lacks: leave it to TVM
        return None


def _fold_shape_arithmetic(model: onnx.ModelProto) -> int:
    """Replace every node computed from shapes and constants by ``Constant`` nodes (in place).

    Known values are ``Constant`` nodes, non-float initializers, ``Shape`` of a value whose
    shape inference fixed, and the outputs of nodes whose inputs are all known. Returns the
    number of nodes replaced.
    """
    graph = model.graph
    shapes = _static_shapes(model)
    known: Dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if not np.issubdtype(helper.tensor_dtype_to_np_dtype(init.data_type), np.floating)
    }
    folded: List[onnx.NodeProto] = []
    for node in graph.node:
        outputs = None
        if node.op_type == "Constant":
            value = [a for a in node.attribute if a.name == "value"]
            outputs = (
                [numpy_helper.to_array(value[0].t)]
                if value  # the common form, directly
                else _evaluate(node, known, model.opset_import)
            )
        elif node.op_type == "Shape" and node.input[0] in shapes:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            shape = shapes[node.input[0]]
            outputs = [
                np.array(
                    shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64
                )
            ]
        elif node.op_type == "Size" and node.input[0] in shapes:
            outputs = [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
        elif (
            node.op_type not in NONDETERMINISTIC
            and node.domain in ("", "ai.onnx")
            and any(node.input)
            and all(not name or name in known for name in node.input)
        ):
            outputs = _evaluate(node, known, model.opset_import)
        if outputs is None or any(o.size > MAX_FOLDED_ELEMENTS for o in outputs):
            continue
        known.update(zip(node.output, outputs))
        if node.op_type != "Constant":
            folded.append(node)
    if not folded:
        return 0
    folded_ids = {id(node) for node in folded}
    remaining = [node for node in graph.node if id(node) not in folded_ids]
    used = {name for node in remaining for name in node.input}
    used |= {value.name for value in graph.output}
    constants = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(known[name], name))
        for node in folded
        for name in node.output
        if name in used
    ]
    del graph.node[:]
    graph.node.extend(constants + remaining)
    return len(folded)


def _integer_initializers_as_constants(model: onnx.ModelProto) -> None:
    """Turn initializers that are not floating point (indices, shapes) into ``Constant`` nodes.

    They are no weights: kept as initializers, TVM's importer makes them function parameters
    whose dtype it may change (the dynamo exporter's int64 ``Gather`` indices then meet an
    int32 tensor); as constants they are what they are.
    """
    graph = model.graph
    integers = [
        init
        for init in graph.initializer
        if not np.issubdtype(helper.tensor_dtype_to_np_dtype(init.data_type), np.floating)
    ]
    if not integers:
        return
    names = {init.name for init in integers}
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in integers]
    kept = [init for init in graph.initializer if init.name not in names]
    inputs = [value for value in graph.input if value.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)


def make_static(
    model: onnx.ModelProto, input_shapes: Optional[Mapping[str, Sequence[int]]] = None
) -> StaticModel:
    """A copy of ``model`` with static input shapes and its shape arithmetic folded.

    Parameters
    ----------
    model
        The ONNX model.
    input_shapes
        ``{input name: shape}``; an input not named keeps its static dims, and a symbolic
        first (batch) dim is bound to 1.

    Raises
    ------
    InputShapeError
        If a given shape names no input or does not fit it, or an input has symbolic dims
        other than the batch and no shape was given.
    """
    static = onnx.ModelProto()
    static.CopyFrom(model)
    shapes, notes = _bind_inputs(static, dict(input_shapes or {}))
    # the exporter's value_info may hold the symbolic dims: shape inference redoes them
    del static.graph.value_info[:]
    _integer_initializers_as_constants(static)
    # a fold can fix shapes (a Reshape whose target was computed): infer again until no change
    folded = 0
    while True:
        count = _fold_shape_arithmetic(static)
        if not count:
            break
        folded += count
    return StaticModel(static, shapes, notes, folded)
