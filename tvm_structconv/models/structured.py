"""Structured variants of the built-in models: exactly structured weights, deterministic.

:func:`create_structured` builds an ordinary model (same architecture and module names as
:func:`~tvm_structconv.models.create_model` gives) whose planned conv and linear weights are
``W = structure.compose(alpha)`` for random ``alpha``, with non-trivial BatchNorm parameters
and running statistics, all drawn from one seed. It is what the compiler's tests, the demo and
the benchmarks compile: a stand-in for a model trained with structure, no checkpoint needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import torch
import torch.nn as nn

from tvm_structconv.manifest import Manifest
from tvm_structconv.models.cost import ModelCost, model_cost
from tvm_structconv.models.registry import create_model
from tvm_structconv.plan import Plan
from tvm_structconv.structure import IntPair, Structure, as_pair

__all__ = ["DEFAULT_PLAN", "CALIBRATION_PIXELS", "StructuredModel", "create_structured"]

DEFAULT_PLAN = "3x3:n=2,c=C,min_channels=16;1x1:c=C/2,min_channels=160,min_expansion=4"
"""What the compiled kernels turn into speed: per layer, a realized speedup of 0.8 × the MAC
ratio or more (x86, ``benchmarks/layer_speedup.py``; the rest realises 0.2–0.8).

* Every dense 3×3 conv of 16 or more input channels becomes a 2×2 conv on a 2×2 spatial
  sum-pool (``c = C, n = 2``); 3-channel stems (0.5), depthwise and grouped convs are left alone.
* Every 1×1 conv of 160 or more input channels that expands them 4× or more (ResNet-50's last
  conv of a bottleneck, MobileNetV2's late expansions) pools pairs of half the channels
  (``c = C/2``); projections and narrow 1×1 convs do not repay the channel sum-pool.

ResNet-18 at 224×224: 1.81 GMAC -> 0.88 GMAC (its 3×3 convs only)."""

CALIBRATION_PIXELS = 4 * 224 * 224
"""Pixels of the random images whose statistics become the BatchNorm running statistics."""


@dataclass
class StructuredModel:
    """A model whose planned layers are exactly structured, with what describes it.

    Attributes
    ----------
    model
        An ordinary ``nn.Module`` in eval mode, with the architecture's module names.
    manifest
        The recorded structure, keyed by weight name (``layer1.0.conv1.weight``).
    structures
        ``{weight name: Structure}`` of the structured layers.
    example_input
        A deterministic input ``(1, 3, H, W)`` drawn from the same seed.
    """

    model: nn.Module
    manifest: Manifest
    structures: Dict[str, Structure]
    example_input: torch.Tensor

    def cost(self) -> ModelCost:
        """MACs and parameters of the original and structured model on ``example_input``."""
        return model_cost(self.model, self.structures, tuple(self.example_input.shape))


def create_structured(
    name: str,
    plan: Union[str, Plan] = DEFAULT_PLAN,
    seed: int = 0,
    image_size: IntPair = 224,
    **kwargs: Any,
) -> StructuredModel:
    """Build the registered model ``name`` with the layers ``plan`` selects exactly structured.

    Everything is drawn from ``seed`` (the global RNG is left untouched):

    * the architecture's own initialization of the layers the plan leaves alone;
    * each structured weight, ``W = structure.compose(alpha)`` with Gaussian ``alpha`` scaled
      so that ``W``'s expected mean square is Kaiming's ``2 / fan_in``;
    * BatchNorm weights uniform in ``[0.5, 1.5]`` and biases uniform in ``[-0.25, 0.25]``;
    * BatchNorm running statistics: the batch statistics of standard normal images of
      ``image_size``, as many as make :data:`CALIBRATION_PIXELS` pixels, so each BatchNorm's
      output has mean about its bias and std about its weight, and activations stay of order
      one through the whole network;
    * ``example_input``, standard normal.

    Parameters
    ----------
    name
        A name from :func:`~tvm_structconv.models.list_models`.
    plan
        A :class:`~tvm_structconv.plan.Plan` or plan text; :data:`DEFAULT_PLAN` by default.
    seed
        Seed of every random draw; the same seed gives identical weights and input.
    image_size
        ``H`` or ``(H, W)`` of ``example_input`` and of the calibration images (statistics
        near the border weigh more in small images, so calibrate at the size that will run).
    **kwargs
        Passed to the model's factory (``num_classes``, ``width_mult`` …).

    Raises
    ------
    ValueError
        If ``name`` is not registered or the plan does not parse or fit the model.
    """
    plan = Plan.parse(plan) if isinstance(plan, str) else plan
    height, width = as_pair(image_size, "image_size")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    structures = {}
    with torch.no_grad():
        for module_name, structure in plan.apply(model).items():
            weight = modules[module_name].weight
            weight.copy_(_structured_weight(structure, weight.dim(), weight.shape[0], generator))
            structures[f"{module_name}.weight"] = structure
        _calibrate_batchnorm(model, (height, width), generator)
    example_input = torch.randn(
        (1, 3, height, width), generator=torch.Generator().manual_seed(seed)
    )
    manifest = Manifest.from_structures(structures)
    return StructuredModel(model.eval(), manifest, structures, example_input)


def _structured_weight(
    structure: Structure, ndim: int, out_channels: int, generator: torch.Generator
) -> torch.Tensor:
    """``structure.compose(alpha)`` for Gaussian ``alpha``, with Kaiming mean square ``2/fan_in``.

    Each entry of ``alpha`` is spread over a box of ``D·Mh·Mw`` entries of ``W``, so
    ``E‖W‖² = var(alpha) · numel(alpha) · D·Mh·Mw``; ``var(alpha)`` is chosen to make that
    ``numel(W) · 2 / fan_in``. ``ndim`` is 2 for a Linear weight, 4 for a conv weight.
    """
    alpha_shape = structure.alpha_shape(out_channels)[:ndim]
    weight_numel = math.prod(structure.weight_shape(out_channels))
    fan_in = structure.group_channels * math.prod(structure.kernel_size)
    alpha_numel = math.prod(alpha_shape)
    std = math.sqrt(2.0 / fan_in * weight_numel / (alpha_numel * math.prod(structure.pool_window)))
    alpha = torch.randn(alpha_shape, generator=generator, dtype=torch.float64) * std
    return structure.compose(alpha)


def _calibrate_batchnorm(
    model: nn.Module, image_size: Tuple[int, int], generator: torch.Generator
) -> None:
    """Draw BatchNorm affine parameters, then set running statistics from random images.

    Only the BatchNorm layers run in training mode (dropout stays off); running statistics
    become exactly the calibration batch's (cumulative average over one batch).
    """
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5, generator=generator)
        norm.bias.uniform_(-0.25, 0.25, generator=generator)
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    batch = max(2, math.ceil(CALIBRATION_PIXELS / math.prod(image_size)))
    model(torch.randn((batch, 3, *image_size), generator=generator))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        norm.eval()
