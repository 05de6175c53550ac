"""Structural regularization: the paper's Eq. 3, ``λ · Σ_layers ‖W − A A⁺ W‖_F / ‖W‖_F``.

Added to the task loss, it pulls every planned layer's kernel toward its structured subspace
(training step 1 of 3: regularize, decompose, optionally train ``alpha`` directly), whether the
model is trained from scratch or fine-tuned. Each term is
:meth:`Structure.residual <tvm_structconv.structure.Structure.residual>`, computed here through
the per-axis projectors ``P = B B⁺`` (the projector of ``A = B_C ⊗ B_Nh ⊗ B_Nw`` is
``P_C ⊗ P_Nh ⊗ P_Nw``), never through a dense ``C·N² × C·N²`` one: the two spatial projectors
as one ``N² × N²`` matrix; the channel projector through window sums and a ``c × c`` product,
and only when the channel window is wider than one (with ``c = C`` it is the identity, skipped).
The factors are cached per device and dtype, the layers of equal shape and structure share one
autograd node (each kernel multiplied on its own: stacking them copied every weight), and the
gradient is formed in closed form (:class:`_Residuals`). Its cost does not depend on the batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from tvm_structconv.nn.functional import window_sum, window_sum_adjoint
from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure, banded_ones

__all__ = ["StructuralRegularizer"]


def _projector(full: int, reduced: int) -> Optional[np.ndarray]:
    """``B B⁺`` of the ``full × reduced`` banded factor; None when it is the identity."""
    if full == reduced:
        return None
    band = banded_ones(full, reduced)
    return band @ np.linalg.pinv(band)


@dataclass
class _Projectors:
    """The projectors of one structure, on one device and dtype; None for an identity.

    ``spatial`` is ``(P_Nh ⊗ P_Nw)ᵀ``, applied on the right of the ``(…, C, Nh·Nw)`` kernel.
    ``channel_gram_inverse`` is ``(B_Cᵀ B_C)⁻¹`` (``c × c``): the channel projector is applied
    as ``P_C x = B_C (B_Cᵀ B_C)⁻¹ B_Cᵀ x``, where ``B_Cᵀ`` is a window sum over the channels and
    ``B_C`` its adjoint, so it costs ``c²`` multiplies per column instead of ``C²``.
    """

    channel_window: int
    channel_gram_inverse: Optional[torch.Tensor]
    spatial: Optional[torch.Tensor]

    @functools.cached_property
    def spatial_complement(self) -> torch.Tensor:
        """``I − spatial``: applied on the right, it leaves the spatial residual."""
        assert self.spatial is not None
        return (
            torch.eye(len(self.spatial), dtype=self.spatial.dtype, device=self.spatial.device)
            - self.spatial
        )

    def project_channels(self, kernel: torch.Tensor) -> torch.Tensor:
        """``P_C`` applied along axis 1 of a ``(rows, C, columns)`` tensor."""
        if self.channel_gram_inverse is None:
            return kernel
        rows, channels, columns = kernel.shape
        # channels first: the window sums add whole contiguous rows, and the c × c product
        # is one large matrix product
        flat = kernel.transpose(0, 1).reshape(channels, rows * columns)
        summed = window_sum(flat, 0, self.channel_window)  # B_Cᵀ x
        solved = window_sum_adjoint(self.channel_gram_inverse @ summed, 0, self.channel_window)
        return solved.reshape(channels, rows, columns).transpose(0, 1)

    def complement(self, kernel: torch.Tensor) -> torch.Tensor:
        """``(I − P) W`` of a ``(rows, C, Nh·Nw)`` kernel (not differentiated)."""
        if self.channel_gram_inverse is None:
            # c = C: W − W·Pᵀ = W·(I − P)ᵀ, one product and no subtraction
            return kernel @ self.spatial_complement
        projected = kernel if self.spatial is None else kernel @ self.spatial
        return kernel - self.project_channels(projected)

    @classmethod
    def of(cls, structure: Structure, like: torch.Tensor) -> _Projectors:
        (height, width), (reduced_h, reduced_w) = (
            structure.kernel_size,
            structure.reduced_kernel_size,
        )
        rows, columns = _projector(height, reduced_h), _projector(width, reduced_w)
        spatial = None
        if rows is not None or columns is not None:
            spatial = np.kron(
                np.eye(height) if rows is None else rows,
                np.eye(width) if columns is None else columns,
            ).T
        window = structure.pool_window[0]
        gram_inverse = None
        if window > 1:
            band = banded_ones(structure.group_channels, structure.group_reduced_channels)
            gram_inverse = like.new_tensor(np.linalg.inv(band.T @ band))
        return cls(window, gram_inverse, None if spatial is None else like.new_tensor(spatial))


class _Residuals(torch.autograd.Function):
    """``r(W) = ‖(I − P) W‖ / ‖W‖`` of kernels of one shape and structure (one autograd node),
    with the closed-form gradient ``∇r = a·(I − P) W − b·W``, ``a = 1 / (‖W‖·‖(I − P) W‖)``,
    ``b = r / ‖W‖²``.

    The kernels are not stacked (a copy of every weight, measured at a fifth of the
    regularizer's time on ResNet-18); each is multiplied in place of its own. With ``c = C``
    the complement is one product ``W·(I − P_S)``, and the gradient another,
    ``W·(a·(I − P_S) − b·I)``, with nothing kept between the two but the scalars; otherwise
    the forward keeps ``(I − P) W`` and the backward is two scaled adds. Either way the
    projectors run once per step. Where ``(I − P) W = 0`` (a structured kernel) the first term
    is taken as zero, a subgradient.
    """

    @staticmethod
    def forward(ctx, projectors: _Projectors, *weights: torch.Tensor):  # type: ignore[override]
        spatial_only = projectors.channel_gram_inverse is None
        differences, distances, norms = [], [], []
        for weight in weights:
            flat = weight.reshape(weight.shape[0], weight.shape[1], -1)  # (Cout, C, Nh·Nw)
            difference = projectors.complement(flat)
            distances.append(torch.linalg.vector_norm(difference))
            norms.append(torch.linalg.vector_norm(weight))
            differences.append(None if spatial_only else difference)
        distance, norm = torch.stack(distances), torch.stack(norms)
        norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        residuals = distance / norm
        ctx.projectors, ctx.differences = projectors, differences
        ctx.save_for_backward(distance, norm, residuals, *weights)
        return residuals

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        distance, norm, residuals, *weights = ctx.saved_tensors
        along = torch.where(distance > 0, grad / (norm * distance), 0.0).tolist()
        back = (grad * residuals / norm.square()).tolist()
        projectors: _Projectors = ctx.projectors
        gradients = []
        for weight, difference, a, b in zip(weights, ctx.differences, along, back):
            if difference is None:  # c = C: W·(a·(I − P_S) − b·I) in one product
                matrix = a * projectors.spatial_complement
                matrix.diagonal().sub_(b)
                flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
                gradients.append((flat @ matrix).reshape(weight.shape))
            else:
                gradients.append((a * difference).reshape(weight.shape).add_(weight, alpha=-b))
        return (None, *gradients)


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
        batches: Dict[Tuple[Structure, Tuple[int, ...]], List[Tuple[str, nn.Module]]] = {}
        for name, module, structure in self._layers:
            key = (structure, tuple(module.weight.shape))
            batches.setdefault(key, []).append((name, module))
        self._batches = [(structure, layers) for (structure, _), layers in batches.items()]
        self._projectors: Dict[Tuple[Structure, torch.device, torch.dtype], _Projectors] = {}

    @property
    def structures(self) -> Dict[str, Structure]:
        """``{module name: Structure}`` of the regularized layers."""
        return {name: structure for name, _, structure in self._layers}

    def residuals(self) -> Dict[str, torch.Tensor]:
        """``{module name: r(W)}``, each a differentiable 0-d tensor (not scaled by ``λ``)."""
        values: Dict[str, torch.Tensor] = {}
        for structure, layers in self._batches:
            weights = [module.weight for _, module in layers]
            for (name, _), value in zip(layers, self._batch_residuals(structure, weights)):
                values[name] = value
        return {name: values[name] for name, _, _ in self._layers}

    def __call__(self) -> torch.Tensor:
        """``λ · Σ r(W)``: a differentiable 0-d tensor on the weights' device."""
        total = torch.stack(list(self.residuals().values())).sum()
        return self.strength * total

    def _batch_residuals(self, structure: Structure, weights: List[torch.Tensor]) -> torch.Tensor:
        """``r(W)`` of each kernel of ``weights`` (all of one shape), differentiable."""
        return _Residuals.apply(self._projectors_for(structure, weights[0]), *weights)

    def _projectors_for(self, structure: Structure, like: torch.Tensor) -> _Projectors:
        key = (structure, like.device, like.dtype)
        if key not in self._projectors:
            self._projectors[key] = _Projectors.of(structure, like)
        return self._projectors[key]

    def __repr__(self) -> str:
        return f"StructuralRegularizer({len(self._layers)} layers, strength={self.strength})"
