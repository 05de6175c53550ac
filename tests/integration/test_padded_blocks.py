"""Packing blocks that do not divide a conv's outputs: alpha padded with zero filters, the
padded outputs sliced off, the result exact against torch."""

import numpy as np
import torch
import torch.nn as nn
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from tvm_structconv.build import flatten_outputs, prepare_module, scheduled_pipeline
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import Manifest
from tvm_structconv.schedules.packing import ConvLayout
from tvm_structconv.structure import Structure

from conv_oracle import HOST


def calls_of(mod: tvm.IRModule, op_name: str) -> int:
    found = []
    relax.analysis.post_order_visit(
        mod["main"].body,
        lambda e: (
            found.append(e)
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == op_name
            else None
        ),
    )
    return len(found)


@settings(max_examples=6, deadline=None)
@given(
    in_channels=st.integers(4, 12),
    out_channels=st.integers(3, 40),
    block=st.sampled_from([8, 16]),
    kernel=st.sampled_from([1, 3]),
    structured=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_padded_block_conv_equals_torch(in_channels, out_channels, block, kernel, structured, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), nn.ReLU()
    ).eval()
    structures = {}
    if structured:
        structure = Structure(in_channels, kernel, in_channels // 2 + 1, max(kernel - 1, 1))
        with torch.no_grad():
            projected = structure.project(model[0].weight.double().numpy())
            model[0].weight.copy_(torch.from_numpy(projected))
        structures["0.weight"] = structure
    x = torch.randn(1, in_channels, 7, 9)
    imported = load_model(model, x, Manifest.from_structures(structures))
    layout = ConvLayout("NHWC", lambda outputs, groups, width: block)
    prepared = prepare_module(imported, structured, layout=layout)
    padded = out_channels % block != 0
    assert calls_of(prepared.mod, "relax.strided_slice") == int(padded)
    executable = tvm.compile(prepared.mod, target=HOST, relax_pipeline=scheduled_pipeline(HOST))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    (got,) = flatten_outputs(vm["main"](tvm.runtime.tensor(x.numpy())))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
