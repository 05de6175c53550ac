"""The model a plan is made for: its weights, and imports of it with some layers projected.

A :class:`ModelSource` wraps what ``structconv plan`` takes (a built-in model name, a ``.pt2``
or ONNX file, or in Python an ``nn.Module`` with an example input) and gives

* its conv / linear weights by name (``layer1.0.conv1.weight``) with their conv groups;
* :meth:`ModelSource.imported`: the model imported into Relax with the given layers' weights
  projected onto their structures (``W ← A A⁺ W``) and a manifest recording them — what the
  compiler rewrites, so both the latency table and the planned build compile exactly what a
  user's ``structconv compile`` would;
* for torch models, :meth:`ModelSource.run` with some weights replaced (the calibration
  sensitivity of :mod:`tvm_structconv.planner.damage`).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from tvm_structconv.frontend import FrontendError, ImportedModel, _load_pt2, load_model
from tvm_structconv.manifest import Manifest
from tvm_structconv.plan import Plan, PlanError
from tvm_structconv.structure import Structure

__all__ = ["ModelSource"]


class ModelSource:
    """A model to plan: built-in name, ``.pt2`` / ONNX path, or ``nn.Module``.

    Parameters
    ----------
    model
        A built-in model name (:func:`~tvm_structconv.models.list_models`: built with
        :func:`~tvm_structconv.models.create_structured` and an empty plan, i.e. its own
        initialization with calibrated BatchNorm statistics), a ``.pt2`` / ``.onnx`` path, or
        an ``nn.Module``.
    example_input
        The input an ``nn.Module`` is exported with (ignored otherwise).
    image_size
        Input size of a built-in model.
    seed
        Seed of a built-in model's weights.
    input_shapes
        Shapes of an ONNX model's inputs with symbolic dims (``{name: shape}``).

    Raises
    ------
    FrontendError
        If the name is no built-in model and no file, or a file cannot be read.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, torch.nn.Module],
        example_input: Optional[torch.Tensor] = None,
        image_size: int = 224,
        seed: int = 0,
        input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    ) -> None:
        from tvm_structconv.models import create_structured, list_models

        self.onnx_model = None
        self.input_shapes = input_shapes
        self._groups: Optional[Dict[str, int]] = None
        self.program: Optional[torch.export.ExportedProgram] = None
        self.module: Optional[torch.nn.Module] = None
        if isinstance(model, torch.nn.Module):
            if example_input is None:
                raise FrontendError("planning an nn.Module needs an example input")
            self.module, self.example_input = model.eval(), example_input
            self.name = type(model).__name__
        elif str(model) in list_models():
            built = create_structured(str(model), plan=Plan(), seed=seed, image_size=image_size)
            self.module, self.example_input, self.name = built.model, built.example_input, model
        else:
            path = Path(model)
            if not path.is_file():
                raise FrontendError(
                    f"{model}: neither a built-in model ({', '.join(list_models())}) nor a file"
                )
            self.name = path.stem
            self.example_input = None
            if path.suffix.lower() == ".onnx":
                import onnx

                self.onnx_model = onnx.load(str(path))
            elif path.suffix.lower() == ".pt2":
                self.program = _load_pt2(path)
            else:
                raise FrontendError(
                    f"unknown model kind {path.suffix!r} for {path}: expected .onnx or .pt2"
                )
        self.path = None if self.module is not None else Path(model)

    @property
    def kind(self) -> str:
        """``"torch"`` (a module), ``"pt2"`` or ``"onnx"``."""
        if self.module is not None:
            return "torch"
        return "onnx" if self.onnx_model is not None else "pt2"

    def weights(self) -> Dict[str, np.ndarray]:
        """Every weight of the model by name, as float64 arrays."""
        if self.onnx_model is not None:
            from onnx import numpy_helper

            return {
                init.name: numpy_helper.to_array(init).astype(np.float64)
                for init in self.onnx_model.graph.initializer
            }
        state = self.module.state_dict() if self.module is not None else self.program.state_dict
        return {
            name: tensor.detach().double().numpy()
            for name, tensor in state.items()
            if tensor.is_floating_point()
        }

    def imported(self, structures: Mapping[str, Structure]) -> ImportedModel:
        """The model in Relax with each weight of ``structures`` projected, and their manifest.

        ``structures`` maps weight names to structures; a trivial structure leaves a weight
        alone (and out of the manifest).
        """
        planned = {name: s for name, s in structures.items() if not s.is_trivial}
        manifest = Manifest.from_structures(planned)
        weights = self.weights()
        projected = {
            name: _projected(structure, weights[name]) for name, structure in planned.items()
        }
        if self.module is not None:
            module = copy.deepcopy(self.module)
            _assign(module.state_dict(), projected)
            return load_model(module, self.example_input, manifest=manifest)
        if self.program is not None:
            program = copy.deepcopy(self.program)
            _assign(program.state_dict, projected)
            return load_model(program, manifest=manifest)
        from onnx import numpy_helper

        model = copy.deepcopy(self.onnx_model)
        for init in model.graph.initializer:
            if init.name in projected:
                dtype = numpy_helper.to_array(init).dtype
                init.CopyFrom(
                    numpy_helper.from_array(projected[init.name].astype(dtype), init.name)
                )
        with tempfile.TemporaryDirectory(prefix="structconv-plan-") as folder:
            path = Path(folder) / f"{self.name}.onnx"
            import onnx

            onnx.save(model, str(path))
            return load_model(path, manifest=manifest, input_shapes=self.input_shapes)

    def groups(self) -> Dict[str, int]:
        """``{weight name: conv groups}`` of every named weight of the import."""
        if self._groups is None:
            weights = self.imported({}).weights()
            self._groups = {name: groups for name, (_, groups) in weights.items()}
        return self._groups

    def plan_structures(self, plan: Plan) -> Dict[str, Structure]:
        """``{weight name: structure}`` of the layers ``plan`` structures.

        A torch module's layers are matched as :meth:`Plan.apply` does; for a file, every conv
        weight (4-D) and Linear weight (2-D) is matched as a layer of its shape, named after
        the weight without ``.weight`` (or as the weight itself, for renamed ONNX weights).

        Raises
        ------
        PlanError
            If the plan names layers the model does not have, or does not fit a layer.
        """
        if self.module is not None:
            planned = plan.apply(self.module)
            return {f"{name}.weight" if name else "weight": s for name, s in planned.items()}
        weights = self.weights()
        groups = self.groups()
        layers = {}
        for name, weight in weights.items():
            if name in groups and weight.ndim in (2, 4):
                layer_name = name[: -len(".weight")] if name.endswith(".weight") else name
                layers[layer_name] = (name, stand_in(weight.shape, groups[name]))
        unknown = sorted(set(plan.layers) - set(layers))
        if unknown:
            raise PlanError(f"plan names layers the model does not have: {', '.join(unknown)}")
        structures = {}
        for layer_name, (name, module) in layers.items():
            structure = plan.structure_for(layer_name, module)
            if structure is not None and not structure.is_trivial:
                structures[name] = structure
        return structures

    def torch_module(self) -> Optional[torch.nn.Module]:
        """The model as a torch module (``None`` for ONNX)."""
        if self.module is not None:
            return self.module
        return self.program.module() if self.program is not None else None

    def run(self, inputs: torch.Tensor, weights: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The model's output on ``inputs`` with ``weights`` replaced (torch models only).

        Raises
        ------
        FrontendError
            For an ONNX model (calibration runs torch models).
        """
        module = self.torch_module()
        if module is None:
            raise FrontendError(
                "--calibration needs a torch model (a built-in name, a .pt2 file or an nn.Module)"
            )
        state = dict(module.state_dict())
        for name, value in weights.items():
            state[name] = torch.as_tensor(value, dtype=state[name].dtype)
        with torch.no_grad():
            if self.program is None:
                return torch.func.functional_call(module, state, (inputs,))
            # a torch.export program keeps the batch size it was exported with
            return torch.cat(
                [
                    torch.func.functional_call(module, state, (inputs[index : index + 1],))
                    for index in range(len(inputs))
                ]
            )


def stand_in(shape: Sequence[int], groups: int) -> torch.nn.Module:
    """A weightless ``nn.Conv2d`` (4-D weight) or ``nn.Linear`` (2-D) for plan rules to match."""
    if len(shape) == 2:
        return torch.nn.Linear(shape[1], shape[0], device="meta")
    return torch.nn.Conv2d(
        shape[1] * groups, shape[0], tuple(shape[2:4]), groups=groups, device="meta"
    )


def _projected(structure: Structure, weight: np.ndarray) -> np.ndarray:
    """``A A⁺ W`` of a conv weight, or of a Linear weight (``Cout × C``)."""
    return np.asarray(structure.project(weight))


def _assign(state: Mapping[str, torch.Tensor], values: Mapping[str, np.ndarray]) -> None:
    """Copy ``values`` into the tensors of ``state`` (in place, keeping their dtypes)."""
    with torch.no_grad():
        for name, value in values.items():
            state[name].copy_(torch.from_numpy(value))
