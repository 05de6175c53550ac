"""Export a structured model with its manifest: ONNX (manifest inside) or ``.pt2`` (sidecar).

* ``.onnx``: TorchScript-based ``torch.onnx.export(..., dynamo=False,
  do_constant_folding=False)``. Without constant folding the initializers keep their
  ``state_dict`` names (folding merges BatchNorm into the conv and renames its weight). The
  manifest is stored in the model's ``metadata_props`` under ``structconv``
  (:meth:`Manifest.embed_onnx <tvm_structconv.manifest.Manifest.embed_onnx>`).
* ``.pt2``: ``torch.export.export`` then ``torch.export.save``; the manifest is written next
  to it as ``<stem>.manifest.json`` (``model.pt2`` → ``model.manifest.json``,
  :func:`sidecar_path`).

The model is exported in eval mode (its previous mode is restored afterwards) and must be in
its ordinary form (``nn.Conv2d`` / ``nn.Linear`` holding the composed kernels; see
:func:`tvm_structconv.nn.to_ordinary`), which is what the manifest describes.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn

from tvm_structconv.manifest import Manifest, ManifestError
from tvm_structconv.structure import Structure, default_tolerance

__all__ = ["export", "sidecar_path"]

PathLike = Union[str, "os.PathLike[str]"]
ExampleInput = Union[torch.Tensor, Sequence[torch.Tensor]]

# torch 2.13 warns on every TorchScript-based ONNX export that it is deprecated; it is chosen
# here on purpose (it keeps the state_dict names with constant folding off), so say it once.
_LEGACY_ONNX_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export.*",
    r"The feature will be removed.*",
)


def sidecar_path(path: PathLike) -> pathlib.Path:
    """Where :func:`export` writes the manifest of a ``.pt2`` file: ``<stem>.manifest.json``."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.stem}.manifest.json")


def export(
    model: nn.Module, path: PathLike, example_input: ExampleInput, manifest: Manifest
) -> None:
    """Export ``model`` to ``path`` (``.onnx`` or ``.pt2``) together with ``manifest``.

    Parameters
    ----------
    model
        The model in ordinary form; every manifest entry must name the weight of one of its
        ``nn.Conv2d`` / ``nn.Linear`` layers.
    path
        Output file; its suffix picks the format.
    example_input
        A tensor, or a sequence of tensors for a model with several inputs; the exported graph
        has these static shapes.
    manifest
        The model's recorded structure, e.g. from :func:`tvm_structconv.nn.structurize`.

    Raises
    ------
    ValueError
        If the suffix is neither ``.onnx`` nor ``.pt2``.
    tvm_structconv.manifest.ManifestError
        If the manifest does not fit ``model``, or a recorded weight is off its structure (it
        was never projected: call :func:`tvm_structconv.nn.structurize` first).

    Warns
    -----
    UserWarning
        If the ONNX file does not keep a manifest weight's name as an initializer. (The
        TorchScript exporter deduplicates initializers of equal value, e.g. two layers still at
        the same initialization; the compiler then has to match those weights by value.)
    """
    path = pathlib.Path(path)
    if path.suffix not in (".onnx", ".pt2"):
        raise ValueError(f"cannot export to {path}: the suffix must be .onnx or .pt2")
    _check_projected(model, manifest.structures(model), manifest.source)
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    was_training = model.training
    model.eval()
    try:
        if path.suffix == ".onnx":
            _export_onnx(model, path, inputs, manifest)
        else:
            torch.export.save(torch.export.export(model, inputs), path)
            manifest.save(sidecar_path(path))
    finally:
        model.train(was_training)


def _check_projected(model: nn.Module, structures: Dict[str, Structure], source: str) -> None:
    """Refuse weights off their recorded structure: the compiler would refuse them later.

    The tolerance is the compiler's default (100 × the weight dtype's machine epsilon, relative
    residual), so what exports here also compiles.
    """
    parameters = dict(model.named_parameters())
    for name, structure in structures.items():
        weight = parameters[name].detach()
        residual = float(structure.residual(weight.double().numpy()))
        tolerance = default_tolerance(weight.dtype)
        if residual > tolerance:
            raise ManifestError(
                f"{source}: {name!r} is {residual:.1e} off its recorded {structure} (relative "
                f"residual, tolerance {tolerance:.1e}); project the weights with "
                "tvm_structconv.nn.structurize(model, plan) and export the model it returns"
            )


def _export_onnx(model: nn.Module, path: pathlib.Path, inputs: tuple, manifest: Manifest) -> None:
    import onnx

    with warnings.catch_warnings():
        for message in _LEGACY_ONNX_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        torch.onnx.export(model, inputs, path, dynamo=False, do_constant_folding=False)
    proto = onnx.load(path)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    lost = sorted(set(manifest.layers) - initializers)
    if lost:
        warnings.warn(
            f"{path}: the ONNX initializers lost the names of {', '.join(lost)}; "
            "the manifest still names them",
            stacklevel=3,
        )
    manifest.embed_onnx(proto)
    onnx.save(proto, path)
