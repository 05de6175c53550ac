"""A small conv net the planner tests plan: every kind of layer it chooses for, in 16x16."""

import pytest
import torch
import torch.nn as nn


class PlannerNet(nn.Module):
    """Stem 3x3 (3 channels), BatchNorm + ReLU, a strided 3x3, a residual 1x1, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.mix = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.stem(x)))
        x = torch.relu(self.down(x))
        x = x + self.mix(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture
def planner_net():
    """``(model, example input)``: the net in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = PlannerNet().eval()
    with torch.no_grad():
        model.norm.running_var.uniform_(0.5, 1.5)
        model.norm.running_mean.uniform_(-0.2, 0.2)
    return model, torch.randn(1, 3, 16, 16)


@pytest.fixture
def planner_pt2(planner_net, tmp_path):
    """The net exported as a torch.export program (``.pt2``), and its input."""
    model, x = planner_net
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    return path, x
