"""The independent oracle a build is checked against: onnxruntime for ONNX, torch for ``.pt2``."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from tvm_structconv.frontend import ImportedModel

__all__ = ["oracle_name", "reference_outputs"]


def oracle_name(imported: ImportedModel) -> str:
    """``"onnxruntime"`` for an ONNX model, ``"torch"`` otherwise."""
    return "onnxruntime" if imported.kind == "onnx" else "torch"


def reference_outputs(imported: ImportedModel, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The model's outputs on ``inputs`` from its own runtime, not from TVM.

    An ONNX file runs in onnxruntime (its symbolic dims, if any, take the inputs' shapes); a
    ``.pt2`` program runs as the module ``torch.export`` recorded.
    """
    if imported.kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(imported.source, providers=["CPUExecutionProvider"])
        feeds = {spec.name: array for spec, array in zip(session.get_inputs(), inputs)}
        return list(session.run(None, feeds))
    import torch

    program = torch.export.load(imported.source)
    with torch.no_grad():
        result = program.module()(*(torch.from_numpy(a) for a in inputs))
    flat = result if isinstance(result, (tuple, list)) else [result]
    return [tensor.numpy() for tensor in flat]
