"""MACs and parameters of a whole model, original and structured.

MACs are counted for every ``nn.Conv2d`` and ``nn.Linear`` call while the model runs on an
input of the given shape (forward hooks read each layer's output shape), so strides, padding
and repeated calls are counted as they happen. Structured layers are costed with
:meth:`Structure.cost <tvm_structconv.structure.Structure.cost>`; every other layer costs the
same in both models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from tvm_structconv.structure import LayerCost, Structure

__all__ = ["ModelCost", "model_cost"]


@dataclass(frozen=True)
class ModelCost:
    """MACs and parameters of a model, original and structured.

    Attributes
    ----------
    layers
        Cost of every conv and linear layer, keyed by weight name (``layer1.0.conv1.weight``),
        in the order the layers first ran; a layer called several times is summed.
    original_params, structured_params
        All parameters of the model (BatchNorm and biases included), with each structured
        weight counted as ``W`` and as ``alpha`` respectively.
    """

    layers: Mapping[str, LayerCost]
    original_params: int
    structured_params: int

    @property
    def original_macs(self) -> int:
        """MACs of all conv and linear layers of the original model."""
        return sum(cost.original_macs for cost in self.layers.values())

    @property
    def structured_macs(self) -> int:
        """MACs of all conv and linear layers of the structured model."""
        return sum(cost.structured_macs for cost in self.layers.values())

    @property
    def pool_adds(self) -> int:
        """Additions of all the structured layers' sum-pools (running sums)."""
        return sum(cost.pool_adds for cost in self.layers.values())

    @property
    def mac_ratio(self) -> float:
        """Theoretical speedup: original MACs over structured MACs."""
        return self.original_macs / self.structured_macs

    @property
    def param_ratio(self) -> float:
        """Original parameters over structured parameters."""
        return self.original_params / self.structured_params

    def summary(self) -> str:
        """One line: GMACs and millions of parameters, original -> structured, and the ratios."""
        return (
            f"{self.original_macs / 1e9:.2f} GMAC -> {self.structured_macs / 1e9:.2f} GMAC "
            f"({self.mac_ratio:.2f}x), {self.original_params / 1e6:.2f} M -> "
            f"{self.structured_params / 1e6:.2f} M params ({self.param_ratio:.2f}x)"
        )


def model_cost(
    model: nn.Module,
    structures: Mapping[str, Structure],
    input_shape: Sequence[int] = (1, 3, 224, 224),
) -> ModelCost:
    """Count the MACs and parameters of ``model`` and of its structured version.

    The model runs once on zeros of ``input_shape`` (in eval mode and without gradients; each
    module's train/eval mode is restored afterwards).

    Parameters
    ----------
    model
        The model, original or structured (only shapes matter).
    structures
        ``{weight name: Structure}`` of the structured layers (as in a manifest).
    input_shape
        Shape of the input, batch included.

    Raises
    ------
    ValueError
        If a key of ``structures`` is not the weight of a Conv2d or Linear of ``model``, or
        its structure does not fit that weight.
    """
    layers = _layers_by_weight(model)
    for name, structure in structures.items():
        if name not in layers:
            raise ValueError(f"{name!r} is not the weight of a Conv2d or Linear layer of the model")
        layer = layers[name]
        expected = structure.weight_shape(layer.weight.shape[0])
        if isinstance(layer, nn.Linear):
            expected = expected[:2]
        if tuple(layer.weight.shape) != expected:
            raise ValueError(
                f"{name!r} has shape {tuple(layer.weight.shape)}, which {structure} does not fit"
            )
    original_params = sum(parameter.numel() for parameter in model.parameters())
    saved_params = 0
    for name, structure in structures.items():
        layer_cost = structure.cost(layers[name].weight.shape[0])
        saved_params += layer_cost.original_params - layer_cost.structured_params

    costs: Dict[str, LayerCost] = {}

    def record(name: str, layer: nn.Module, output: torch.Tensor) -> None:
        structure = structures.get(name) or _trivial_structure(layer)
        if isinstance(layer, nn.Conv2d):
            batch, out_channels, height, width = output.shape
            cost = structure.cost(out_channels, (height, width), batch)
        else:
            out_channels = output.shape[-1]
            cost = structure.cost(out_channels, 1, output.numel() // out_channels)
        costs[name] = _add(costs[name], cost) if name in costs else cost

    handles = [
        layer.register_forward_hook(
            lambda module, inputs, output, name=name: record(name, module, output)
        )
        for name, layer in layers.items()
    ]
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return ModelCost(costs, original_params, original_params - saved_params)


def _layers_by_weight(model: nn.Module) -> Dict[str, nn.Module]:
    """``{"<module name>.weight": module}`` for every Conv2d and Linear of ``model``."""
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def _trivial_structure(layer: nn.Module) -> Structure:
    """The structure that reduces nothing: an unstructured layer's cost, same in both models."""
    if isinstance(layer, nn.Conv2d):
        kernel: Tuple[int, int] = tuple(layer.kernel_size)  # type: ignore[assignment]
        return Structure(layer.in_channels, kernel, layer.in_channels, kernel, layer.groups)
    return Structure(layer.in_features, 1, layer.in_features, 1)


def _add(first: LayerCost, second: LayerCost) -> LayerCost:
    """Cost of two calls of the same layer: MACs and pool adds add up, parameters do not."""
    return LayerCost(
        original_macs=first.original_macs + second.original_macs,
        structured_macs=first.structured_macs + second.structured_macs,
        original_params=first.original_params,
        structured_params=first.structured_params,
        pool_adds=first.pool_adds + second.pool_adds,
    )
