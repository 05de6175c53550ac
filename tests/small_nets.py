"""A small structured conv net (two structured convs, BatchNorm, a linear head) for build tests."""

from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn

from tvm_structconv.export import export
from tvm_structconv.manifest import Manifest
from tvm_structconv.structure import Structure


def structured_net(
    seed: int = 0, dtype: torch.dtype = torch.float32
) -> Tuple[nn.Module, torch.Tensor, Manifest]:
    """The net in eval mode with exactly structured conv weights, an input and its manifest;
    weights and input of ``dtype`` (the conv weights structured in it)."""
    torch.manual_seed(seed)
    model = (
        nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.Flatten(),
            nn.Linear(72, 5),
        )
        .to(dtype)
        .eval()
    )
    structures = {"0.weight": Structure(4, 3, 2, 2), "3.weight": Structure(8, 3, 8, 2)}
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
        for name, structure in structures.items():
            weight = dict(model.named_parameters())[name]
            weight.copy_(torch.from_numpy(structure.project(weight.double().numpy())))
    return model, torch.randn(1, 4, 8, 8).to(dtype), Manifest.from_structures(structures)


def export_net(folder: Path) -> Path:
    """Export :func:`structured_net` to ``folder/net.onnx`` (manifest inside); return the path."""
    model, x, manifest = structured_net()
    path = Path(folder) / "net.onnx"
    export(model, path, x, manifest)
    return path
