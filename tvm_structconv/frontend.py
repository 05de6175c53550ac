"""Import models into Relax with their weights bound as named constants and their manifest.

Three sources: an ONNX file, a ``torch.export`` program saved as ``.pt2``, or an in-memory
``nn.Module`` with an example input. Each gives an :class:`ImportedModel`: the ``IRModule``
(weights bound as constants), ``weight_names`` mapping each weight constant to its
``state_dict`` name, and the manifest, taken from (in this order) the argument, the ONNX
metadata, or a sidecar ``<model stem>.manifest.json`` next to the file.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_structconv.export import sidecar_path
from tvm_structconv.manifest import Manifest
from tvm_structconv.messages import last_line
from tvm_structconv.onnx_converters import relax_converters
from tvm_structconv.onnx_static import InputShapeError, make_static
from tvm_structconv.transform.relax_functions import typed_const

__all__ = ["FrontendError", "ImportedModel", "InputSpec", "load_model"]


class FrontendError(ValueError):
    """A model that cannot be found, read or imported; the message says which and why."""


@dataclass(frozen=True)
class InputSpec:
    """Name, static shape and dtype of one model input."""

    name: str
    shape: Tuple[int, ...]
    dtype: str

    def random(self, seed: int = 0) -> np.ndarray:
        """A deterministic random input of this spec (standard normal, or small ints)."""
        rng = np.random.default_rng(seed)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(0, 10, size=self.shape).astype(self.dtype)
        return rng.standard_normal(self.shape).astype(self.dtype)


@dataclass
class ImportedModel:
    """A model imported into Relax.

    Attributes
    ----------
    mod
        ``main`` takes the model inputs; every weight is a bound ``relax`` constant.
    weight_names
        ``{weight constant: state_dict name}`` (constants hash by identity).
    manifest
        The recorded structure, or an empty manifest when none was found.
    manifest_origin
        Where the manifest came from (``"sidecar m.manifest.json"``, ``"ONNX metadata"``,
        ``"argument"``) or ``"none"``.
    inputs
        The model inputs.
    kind
        ``"onnx"``, ``"pt2"`` or ``"torch"``.
    source
        The file, or the module's class name.
    """

    mod: tvm.IRModule
    weight_names: Dict[tvm.ir.Constant, str]
    manifest: Manifest
    manifest_origin: str
    inputs: List[InputSpec]
    kind: str
    source: str
    notes: List[str] = field(default_factory=list)

    def weights(self) -> Dict[str, Tuple[np.ndarray, int]]:
        """``{name: (array, groups)}`` of every named weight (groups 1 unless a grouped conv's)."""
        groups = {}
        for function in self.mod.functions.values():
            if isinstance(function, relax.Function):
                relax.analysis.post_order_visit(function, lambda e: _record_groups(e, groups))
        return {
            name: (constant.value.numpy(), groups.get(constant, 1))
            for constant, name in self.weight_names.items()
        }


def _record_groups(expr: relax.Expr, groups: Dict[tvm.ir.Constant, int]) -> None:
    """Note the groups of a ``conv2d`` whose weight is a constant."""
    if (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == "relax.nn.conv2d"
        and isinstance(expr.args[1], tvm.ir.Constant)
    ):
        groups[expr.args[1]] = int(expr.attrs.groups)


def load_model(
    model: Union[str, os.PathLike, torch.nn.Module, torch.export.ExportedProgram],
    example_input: Optional[torch.Tensor] = None,
    manifest: Union[None, Manifest, str, os.PathLike] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> ImportedModel:
    """Import ``model`` (ONNX path, ``.pt2`` path, ``nn.Module`` or ``ExportedProgram``).

    Parameters
    ----------
    model
        What to import; an ``nn.Module`` needs ``example_input``.
    example_input
        Example input for tracing an ``nn.Module`` with ``torch.export``.
    manifest
        A :class:`Manifest` or the path of a manifest JSON file; when ``None`` the ONNX
        metadata or the sidecar file is used if present.
    input_shapes
        ``{input name: shape}`` for an ONNX model with symbolic dims (tvmc's
        ``--input-shapes``); a symbolic batch without a shape is bound to 1, with a note.
        ONNX only: a ``torch.export`` program's shapes are those it was exported with.

    Raises
    ------
    FrontendError
        If the file is missing, of an unknown kind, or cannot be imported, or an input shape
        is missing or does not fit.
    ManifestError
        If a given or found manifest is malformed.
    """
    explicit = Manifest.load(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
    origin = "argument" if explicit is not None else "none"
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise FrontendError("importing an nn.Module needs an example input")
        program = _export(model, example_input)
        imported = _from_exported_program(program, type(model).__name__, "torch")
    elif isinstance(model, torch.export.ExportedProgram):
        imported = _from_exported_program(model, "ExportedProgram", "torch")
    else:
        path = Path(model)
        if not path.is_file():
            raise FrontendError(f"model file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            imported = _from_onnx(path, input_shapes)
        elif suffix == ".pt2":
            imported = _from_exported_program(_load_pt2(path), str(path), "pt2")
        else:
            raise FrontendError(f"unknown model kind {suffix!r} for {path}: expected .onnx or .pt2")
        if explicit is None and suffix == ".onnx":
            explicit = Manifest.from_onnx(path)
            origin = "ONNX metadata" if explicit is not None else "none"
        sidecar = sidecar_path(path)
        if explicit is None and sidecar.is_file():
            explicit, origin = Manifest.load(sidecar), f"sidecar {sidecar}"
    imported.manifest = explicit if explicit is not None else Manifest({}, "<no manifest>")
    imported.manifest_origin = origin
    return imported


def _load_pt2(path: Path) -> torch.export.ExportedProgram:
    """``torch.export.load(path)``, its failures as one line that says what to do.

    A ``torch.save`` pickle renamed ``.pt2`` and a program written by another torch version are
    named as such (the archive's ``models/*.json`` records the torch that wrote it); torch's
    own multi-line warnings about the failed load are silenced.
    """
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return torch.export.load(str(path))
    except Exception as error:  # torch raises many kinds for a bad archive
        raise FrontendError(_pt2_failure(path, error)) from None
    finally:
        logger.setLevel(level)


def _pt2_failure(path: Path, error: Exception) -> str:
    """Why ``path`` did not load as a torch.export program, and what to do, in one line."""
    pickle = (
        f"{path} is a torch.save pickle, not a torch.export program; export it with "
        "torch.export.export(model, args) and torch.export.save (or tvm_structconv.export.export)"
    )
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            if file.read(1) == b"\x80":  # a pickle's PROTO opcode: torch.save's legacy format
                return pickle
        return (
            f"{path} is not a torch.export archive (not a zip file); save it with torch.export.save"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any(name.endswith("/archive_format") for name in names) and any(
            name.endswith("/data.pkl") for name in names
        ):
            return pickle
        written_by = _pt2_torch_version(archive, names)
    ours = torch.__version__
    if written_by is not None and written_by.split("+")[0] != ours.split("+")[0]:
        return (
            f"{path} was exported with torch {written_by}, and this torch {ours} cannot load it; "
            f"re-export it with torch {ours} (torch.export.export and torch.export.save)"
        )
    return f"cannot load {path} as a torch.export program: {last_line(error)}"


def _pt2_torch_version(archive: zipfile.ZipFile, names: Sequence[str]) -> Optional[str]:
    """The torch version recorded in a ``.pt2`` archive's ``models/*.json``, if any."""
    for name in names:
        if "/models/" in name and name.endswith(".json"):
            try:
                return str(json.loads(archive.read(name))["torch_version"])
            except (KeyError, ValueError, TypeError):
                continue
    return None


def _export(module: torch.nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    module = module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, (example_input,))
    except Exception as error:
        raise FrontendError(f"torch.export failed for {type(module).__name__}: {error}") from None


def _check_float32(program: torch.export.ExportedProgram, source: str) -> None:
    """Refuse a program with floating-point inputs or weights other than float32.

    TVM's torch importer builds every ``conv2d`` and ``linear`` with ``out_dtype="float32"``:
    a float64 (or float16) model would be computed in float32 and come back rounded, or fail
    later on a dtype mismatch. The ONNX importer keeps the model's dtypes.
    """
    dtypes = sorted(
        {
            str(node.meta["val"].dtype).removeprefix("torch.")
            for node in program.graph.nodes
            if node.op == "placeholder"
            and isinstance(node.meta.get("val"), torch.Tensor)
            and node.meta["val"].dtype.is_floating_point
            and node.meta["val"].dtype != torch.float32
        }
    )
    if dtypes:
        raise FrontendError(
            f"{source} has {' and '.join(dtypes)} inputs or weights; TVM's torch importer "
            "computes conv2d and linear in float32 only: cast the model to float32, or export "
            "it to ONNX, whose importer keeps its dtypes"
        )


def _from_exported_program(program, source: str, kind: str) -> ImportedModel:
    from tvm.relax.frontend.torch import from_exported_program

    _check_float32(program, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(program, keep_params_as_input=True)
    except Exception as error:
        raise FrontendError(f"TVM cannot import {source}: {error}") from None
    # parameters become function inputs named after their placeholders (p_layer1_0_conv1_weight)
    names = dict(program.graph_signature.inputs_to_parameters)
    return _bind(mod, lambda var_name: names.get(var_name, var_name), source, kind)


def _from_onnx(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]]) -> ImportedModel:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    try:
        model = onnx.load(str(path))
    except Exception as error:
        raise FrontendError(f"cannot read {path} as ONNX: {error}") from None
    try:
        static = make_static(model, input_shapes)
    except InputShapeError as error:
        raise FrontendError(f"{path}: {error}") from None
    try:
        with warnings.catch_warnings(), relax_converters():
            warnings.simplefilter("ignore")  # the importer warns for every renamed tensor
            mod = from_onnx(static.model, shape_dict=static.input_shapes, keep_params_in_input=True)
    except Exception as error:
        raise FrontendError(f"TVM cannot import {path}: {last_line(error)}") from None
    # parameters keep their initializer names (torch state_dict names when exported without
    # constant folding; the exporter's own names such as onnx::Conv_14 otherwise)
    imported = _bind(mod, lambda var_name: var_name, str(path), "onnx")
    imported.notes.extend(static.notes)
    return imported


def _bind(mod: tvm.IRModule, weight_name, source: str, kind: str) -> ImportedModel:
    """Detach the parameters of ``main`` and bind them back as constants, recording names."""
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    num_inputs = (
        int(main.attrs["num_input"])
        if "num_input" in main.attrs
        else (len(main.params) - len(params.get("main", [])))
    )
    bindings, names = {}, {}
    for var, value in zip(main.params[num_inputs:], params.get("main", [])):
        constant = typed_const(value.numpy())
        bindings[var] = constant
        names[constant] = weight_name(var.name)
    mod = relax.transform.BindParams("main", bindings)(mod)
    inputs = []
    for var in mod["main"].params:
        shape = var.ty.shape
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            raise FrontendError(
                f"{source}: input {var.name!r} has a dynamic shape {shape}; "
                "export the model with a static input shape"
            )
        inputs.append(InputSpec(var.name, tuple(int(d) for d in shape), str(var.ty.dtype)))
    return ImportedModel(mod, names, Manifest({}), "none", inputs, kind, source)
