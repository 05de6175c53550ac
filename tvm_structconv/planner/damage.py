"""What a candidate structure costs in accuracy: the damage of each (layer, candidate).

* **Residual** (always): the relative projection error ``‖W − A A⁺ W‖ / ‖W‖`` of the layer's
  weight under the candidate (:meth:`~tvm_structconv.structure.Structure.residual`), 0 for
  "leave it". Summed over layers it is the paper's structural regularizer, Eq. 3.
* **Sensitivity** (with calibration data): the relative change of the model's output on that
  data, ``‖f_l(X) − f(X)‖ / ‖f(X)‖``, when only layer ``l`` is projected onto the candidate —
  the per-layer evaluation tables of AIMET and NNCF. Summing over layers assumes the layers'
  effects add up, as those tools do.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from tvm_structconv.frontend import FrontendError
from tvm_structconv.planner.layers import Candidate, Layer
from tvm_structconv.planner.source import ModelSource

__all__ = ["load_calibration", "residual_damage", "sensitivity_damage"]


def residual_damage(
    source: ModelSource, layers: List[Layer], candidates: Dict[str, List[Candidate]]
) -> Dict[str, List[float]]:
    """``{weight name: residual per candidate}``."""
    weights = source.weights()
    return {
        layer.name: [
            0.0 if candidate.is_leave else float(candidate.structure.residual(weights[layer.name]))
            for candidate in candidates[layer.name]
        ]
        for layer in layers
    }


def load_calibration(path: Union[str, os.PathLike], input_shape) -> torch.Tensor:
    """Calibration inputs from a ``.npy`` file: a batch ``(B, *input_shape[1:])`` or one input.

    Raises
    ------
    FrontendError
        If the file cannot be read or its shape does not fit the model's input.
    """
    try:
        data = np.load(path)
    except (OSError, ValueError) as error:
        raise FrontendError(f"cannot read calibration data {os.fspath(path)}: {error}") from None
    expected = tuple(input_shape[1:])
    if data.shape == expected:
        data = data[None]
    if data.ndim != len(input_shape) or tuple(data.shape[1:]) != expected:
        raise FrontendError(
            f"calibration data {os.fspath(path)} has shape {data.shape}; the model takes "
            f"(B, {', '.join(map(str, expected))})"
        )
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def sensitivity_damage(
    source: ModelSource,
    layers: List[Layer],
    candidates: Dict[str, List[Candidate]],
    inputs: torch.Tensor,
    available: Optional[Dict[str, List[bool]]] = None,
) -> Dict[str, List[float]]:
    """``{weight name: output change per candidate}`` on ``inputs`` (0 for "leave it").

    ``available`` skips candidates that are no choice anyway (their damage is ``inf``).
    """
    weights = source.weights()
    reference = source.run(inputs, {}).double()
    scale = float(torch.linalg.vector_norm(reference)) or 1.0
    damage = {}
    for layer in layers:
        row = []
        for index, candidate in enumerate(candidates[layer.name]):
            if candidate.is_leave:
                row.append(0.0)
            elif available is not None and not available[layer.name][index]:
                row.append(float("inf"))
            else:
                projected = np.asarray(candidate.structure.project(weights[layer.name]))
                output = source.run(inputs, {layer.name: projected}).double()
                row.append(float(torch.linalg.vector_norm(output - reference)) / scale)
        damage[layer.name] = row
    return damage
