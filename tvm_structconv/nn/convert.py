"""Decomposition (training step 2): make a model's planned layers exactly structured.

:func:`structurize` projects every planned kernel onto its structured subspace
(``W ← A A⁺ W``) and records the structure in a :class:`~tvm_structconv.manifest.Manifest`;
optionally it swaps the layers for :class:`StructuredConv2d` / :class:`StructuredLinear`.
:func:`to_ordinary` is the way back: structured layers become ordinary ones with the composed
kernel, and the manifest that describes them.
"""

from __future__ import annotations

import copy
from typing import Dict, Tuple

import torch
import torch.nn as nn

from tvm_structconv.manifest import Manifest
from tvm_structconv.nn.layers import StructuredConv2d, StructuredLinear
from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure

__all__ = ["structurize", "to_ordinary"]


def structurize(
    model: nn.Module, plan: Plan, *, replace: bool = False
) -> Tuple[nn.Module, Manifest]:
    """Project every layer ``plan`` structures onto its structure; return a copy and its manifest.

    The input model is left untouched: the result is a deep copy whose planned weights are
    replaced by their orthogonal projection ``A A⁺ W`` (so their residual is zero and the
    decomposition ``alpha = A⁺ W`` is exact). A model whose planned weights are already
    structured computes the same function afterwards.

    Parameters
    ----------
    model
        The trained (ideally structurally regularized) model.
    plan
        Which layers get which structure.
    replace
        If True, the planned ``nn.Conv2d`` / ``nn.Linear`` modules are swapped for
        :class:`StructuredConv2d` / :class:`StructuredLinear` holding ``alpha`` (for further
        training of ``alpha``, or to run the pool + small conv path in torch). Their parameters
        are then ``<module>.alpha``, not ``<module>.weight``.

    Returns
    -------
    model : nn.Module
        The structured copy.
    manifest : Manifest
        ``{"<module>.weight": spec}`` for every structured layer. It always describes the
        ordinary form of the model (``nn.Conv2d`` / ``nn.Linear`` holding the composed
        kernel), which is what is exported and compiled; with ``replace=True`` that form is
        ``to_ordinary(model)[0]``.

    Raises
    ------
    ValueError
        With ``replace=True``, if a planned conv pads with a mode other than zeros.
    """
    structured = copy.deepcopy(model)
    structures = plan.apply(structured)
    for name, structure in structures.items():
        layer = structured.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(structure.project(layer.weight))
        if replace:
            structured = _replace(structured, name, _structured_layer(layer, structure))
    return structured, _manifest(structures)


def to_ordinary(model: nn.Module) -> Tuple[nn.Module, Manifest]:
    """A copy of ``model`` with every structured layer turned back into an ordinary one.

    Each :class:`StructuredConv2d` becomes an ``nn.Conv2d`` and each :class:`StructuredLinear`
    an ``nn.Linear`` holding the composed kernel ``A · alpha``; the model computes the same
    function. The input model is left untouched.

    Returns
    -------
    model : nn.Module
        The ordinary copy, ready for export.
    manifest : Manifest
        ``{"<module>.weight": spec}`` for every layer that was structured.
    """
    ordinary = copy.deepcopy(model)
    structures: Dict[str, Structure] = {}
    for name, layer in list(ordinary.named_modules()):
        if isinstance(layer, StructuredConv2d):
            replacement: nn.Module = layer.to_conv()
        elif isinstance(layer, StructuredLinear):
            replacement = layer.to_linear()
        else:
            continue
        structures[name] = layer.structure
        ordinary = _replace(ordinary, name, replacement)
    return ordinary, _manifest(structures)


def _structured_layer(layer: nn.Module, structure: Structure) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        return StructuredConv2d.from_conv(
            layer, structure.reduced_channels, structure.reduced_kernel_size
        )
    return StructuredLinear.from_linear(layer, structure.reduced_channels)


def _manifest(structures: Dict[str, Structure]) -> Manifest:
    return Manifest.from_structures(
        {f"{name}.weight" if name else "weight": s for name, s in structures.items()}
    )


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` in ``model``; return the model (``module`` itself for ``""``)."""
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)
    return model
