"""Structural regularization: the paper's Eq. 3, ``λ · Σ_layers ‖W − A A⁺ W‖_F / ‖W‖_F``.

Added to the task loss, it pulls every planned layer's kernel toward its structured subspace
(training step 1 of 3: regularize, decompose, optionally train ``alpha`` directly), whether the
model is trained from scratch or fine-tuned. Each term is
:meth:`Structure.residual <tvm_structconv.structure.Structure.residual>`, computed through the
small Kronecker factors one kernel axis at a time, never through a dense ``C·N² × C·N²``
projector, so its cost does not depend on the batch and is small beside a training step.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure

__all__ = ["StructuralRegularizer"]


class StructuralRegularizer:
    """``λ · Σ r(W)`` over the layers of ``model`` that ``plan`` structures.

    The layers are resolved once, when the regularizer is built; the weights are read at every
    call, so the regularizer follows the model through optimizer steps, ``load_state_dict`` and
    ``model.to(device)``. It holds no parameters and no reference to the model itself.

    Parameters
    ----------
    model
        The model whose ``nn.Conv2d`` / ``nn.Linear`` weights are regularized.
    plan
        Which layers get which structure (:meth:`Plan.apply <tvm_structconv.plan.Plan.apply>`).
    strength
        ``λ``, the weight of the term in the loss.

    Raises
    ------
    ValueError
        If ``strength`` is negative or the plan structures no layer of ``model``.

    Examples
    --------
    >>> regularizer = StructuralRegularizer(model, Plan.parse("3x3:c=C,n=2"), strength=0.1)
    >>> loss = F.cross_entropy(model(x), y) + regularizer()
    """

    def __init__(self, model: nn.Module, plan: Plan, strength: float = 1.0) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        structures = plan.apply(model)
        if not structures:
            raise ValueError("the plan structures no layer of the model")
        modules = dict(model.named_modules())
        self.strength = float(strength)
        self._layers: List[Tuple[str, nn.Module, Structure]] = [
            (name, modules[name], structure) for name, structure in structures.items()
        ]

    @property
    def structures(self) -> Dict[str, Structure]:
        """``{module name: Structure}`` of the regularized layers."""
        return {name: structure for name, _, structure in self._layers}

    def residuals(self) -> Dict[str, torch.Tensor]:
        """``{module name: r(W)}``, each a differentiable 0-d tensor (not scaled by ``λ``)."""
        return {name: structure.residual(module.weight) for name, module, structure in self._layers}

    def __call__(self) -> torch.Tensor:
        """``λ · Σ r(W)``: a differentiable 0-d tensor on the weights' device."""
        total = torch.stack(list(self.residuals().values())).sum()
        return self.strength * total

    def __repr__(self) -> str:
        return f"StructuralRegularizer({len(self._layers)} layers, strength={self.strength})"
