"""The planner through TVM RPC: kernels and whole models timed on servers on 127.0.0.1."""

import pytest
import torch
import torch.nn as nn

from tvm_structconv.local_rpc import local_rpc_cluster
from tvm_structconv.planner import plan_model
from tvm_structconv.planner.layers import FAMILIES


@pytest.mark.slow
def test_plan_through_rpc_times_every_kernel_on_the_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTCONV_TUNING_LOGS", str(tmp_path))  # a table of its own
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1))
    x = torch.randn(1, 32, 16, 16)
    with local_rpc_cluster("planner", 2) as cluster:
        result = plan_model(
            model,
            "x86",
            speedup=1.05,
            example_input=x,
            rpc_tracker=cluster.address,
            device_key="planner",
            rounds=2,
        )
    assert result.device == "rpc-planner"
    assert result.table.path.name == "latency_table-rpc-planner.json"
    # 3x3: leave, c=C or C/2 or C/4 with n = 3 or 2 (6); 1x1: c = C, C/2, C/4 (3)
    assert result.table.measured == 9 and len(FAMILIES) == 6
    assert all(latency > 0 for row in result.table.latency_ms.values() for latency in row)
    assert result.predicted_ms <= result.budget_ms * (1 + 1e-9)
    assert set(result.measured_ms) == {"original", "planned"}
    assert result.summary().endswith(f"measured {result.measured_speedup:.2f}x")
