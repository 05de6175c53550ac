"""MergeParallelConvs end to end: RepVGG-style blocks (convs of one input summed, with or
without an identity BatchNorm branch) compiled for x86 (NHWC, scheduled) and with TVM's
default NCHW pipeline, against torch; what merges and what must not."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.build import compile_model, prepare_module
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import Manifest
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.structure import Structure
from tvm_structconv.targets import make_target


class Branches(nn.Module):
    """``act(sum of conv_i(x) [+ bn(x)])``: each branch a conv (+ BatchNorm), RepVGG's block
    in its training form when the kernels are 3x3 and 1x1."""

    def __init__(self, channels, out_channels, branches, stride, groups, identity):
        """``branches``: ``(kernel, padding, dilation)`` of each conv."""
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    channels,
                    out_channels,
                    k,
                    stride=stride,
                    padding=p,
                    dilation=d,
                    groups=groups,
                    bias=False,
                ),
                nn.BatchNorm2d(out_channels),
            )
            for k, p, d in branches
        )
        self.identity = nn.BatchNorm2d(channels) if identity else None
        for module in self.modules():  # a BatchNorm with statistics, not the identity
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        out = sum(branch(x) for branch in self.branches)
        if self.identity is not None:
            out = out + self.identity(x)
        return torch.relu(out)


def _merges(compiled) -> str:
    return " ".join(note for note in compiled.notes if "parallel convs merged" in note)


@st.composite
def blocks(draw):
    """A block whose branches share their centre (they merge) or differ in dilation (they
    must not), every branch with the same output size."""
    channels = draw(st.integers(1, 12))
    depthwise = draw(st.booleans())
    groups = channels if depthwise else 1
    out_channels = channels if depthwise or draw(st.booleans()) else draw(st.integers(1, 12))
    stride = draw(st.sampled_from([1, 1, 2]))
    aligned = draw(st.booleans())
    if aligned:
        d = draw(st.sampled_from([1, 1, 2]))
        big = draw(st.sampled_from([3, 5]))
        small = draw(st.sampled_from([k for k in (1, 3) if k < big]))
        pad = draw(st.integers(0, 2))
        branches = [(big, (pad + (big - small) // 2) * d, d), (small, pad * d, d)]
        keeps_size = pad * 2 == small - 1
    else:
        branches, keeps_size = [(3, 2, 2), (3, 1, 1)], True
    identity = (
        draw(st.booleans()) and stride == 1 and out_channels == channels and keeps_size and aligned
    )
    block = dict(
        channels=channels,
        out_channels=out_channels,
        branches=branches,
        stride=stride,
        groups=groups,
        identity=identity,
    )
    return block, aligned


@settings(max_examples=14, deadline=None)
@given(case=blocks(), size=st.integers(6, 13), seed=st.integers(0, 2**31 - 1))
def test_summed_branches_match_torch_and_merge_when_their_centres_agree(case, size, seed):
    block, aligned = case
    torch.manual_seed(seed)
    model = Branches(**block).eval()
    x = torch.randn(1, block["channels"], size, size + 1)
    expected = model(x).detach().numpy()
    imported = load_model(model, x, Manifest.from_structures({}))
    compiled = compile_model(imported, "x86", structured=False, tuning_logs=False)
    np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-4)
    merged = _merges(compiled)
    if aligned:
        big = block["branches"][0][0]
        assert "1x (" in merged and f"-> {big}x{big}" in merged, compiled.notes
        assert ("identity" in merged) == block["identity"], compiled.notes
    else:
        assert merged == "", compiled.notes


def test_repvgg_block_becomes_one_conv_in_both_layouts():
    torch.manual_seed(0)
    model = Branches(8, 8, [(3, 1, 1), (1, 0, 1)], 1, 1, identity=True).eval()
    x = torch.randn(1, 8, 10, 9)
    expected = model(x).detach().numpy()
    imported = load_model(model, x, Manifest.from_structures({}))
    for layout in (conv_layout(make_target("x86"), True), None):
        prepared = prepare_module(imported, structured=False, layout=layout)
        assert prepared.mod.script().count("R.nn.conv2d") == 0  # one fused op, no conv left
        assert [n for n in prepared.notes if "3x3 + 1x1 + identity -> 3x3" in n], prepared.notes
    for schedules in (True, False):
        compiled = compile_model(
            imported, "x86", structured=False, schedules=schedules, tuning_logs=False
        )
        np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-4)


def test_a_structured_branch_is_never_merged():
    """The 3x3 branch carries a recorded structure: it stays the structured op; the 1x1
    branch and the identity still merge into one 1x1 conv, and the result is exact."""
    torch.manual_seed(1)
    model = Branches(8, 8, [(3, 1, 1), (1, 0, 1)], 1, 1, identity=True).eval()
    structure = Structure(8, 3, 4, 2)
    conv = model.branches[0][0]
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(structure.project(conv.weight.double().numpy())))
    x = torch.randn(1, 8, 9, 9)
    expected = model(x).detach().numpy()
    imported = load_model(model, x, Manifest.from_structures({"branches.0.0.weight": structure}))
    compiled = compile_model(imported, "x86", structured=True, tuning_logs=False)
    assert [layer.name for layer in compiled.report.rewritten] == ["branches.0.0.weight"]
    assert "1x (1x1 + identity -> 1x1)" in _merges(compiled), compiled.notes
    assert "3x3" not in _merges(compiled)
    np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-4)


def _structured_branches(channels, out_channels, kernel, structures, identity, seed):
    """A :class:`Branches` block whose convs are projected onto ``structures`` (one each), its
    manifest, and an input."""
    torch.manual_seed(seed)
    padding = kernel // 2
    model = Branches(
        channels, out_channels, [(kernel, padding, 1)] * len(structures), 1, 1, identity
    ).eval()
    layers = {}
    for i, structure in enumerate(structures):
        conv = model.branches[i][0]
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(structure.project(conv.weight.double().numpy())))
        layers[f"branches.{i}.0.weight"] = structure
    return model, Manifest.from_structures(layers), torch.randn(1, channels, 9, 8)


def _structured_calls(prepared) -> int:
    return prepared.mod.script().count("R.call_tir(cls.structured_conv2d")


@settings(max_examples=10, deadline=None)
@given(
    channels=st.sampled_from([4, 8, 12]),
    out_channels=st.sampled_from([8, 12, 20]),
    kernel=st.sampled_from([1, 3]),
    branches=st.integers(2, 4),
    identity=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_structured_branches_of_one_structure_become_one_structured_conv(
    channels, out_channels, kernel, branches, identity, seed
):
    """Summed structured convs of one input with the same structure are one structured conv
    of the summed alpha (the fused op is linear in alpha), in both layouts (NHWC: out_channels
    not a multiple of the channel block take the sliced, zero-padded path); an identity
    branch cannot join them and is added as it was. Exact against torch."""
    identity = identity and channels == out_channels
    if kernel == 3:
        structure = Structure(channels, 3, channels, 2)
    else:
        structure = Structure(channels, 1, channels // 2, 1)
    model, manifest, x = _structured_branches(
        channels, out_channels, kernel, [structure] * branches, identity, seed
    )
    expected = model(x).detach().numpy()
    imported = load_model(model, x, manifest)
    for layout in (conv_layout(make_target("x86"), True), None):
        prepared = prepare_module(imported, structured=True, layout=layout)
        assert len(prepared.report.rewritten) == branches
        assert _structured_calls(prepared) == 1, prepared.mod.script()
        assert [n for n in prepared.notes if f"{branches} structured convs of one op" in n]
    for schedules in (True, False):
        compiled = compile_model(
            imported, "x86", structured=True, schedules=schedules, tuning_logs=False
        )
        np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-4)


def test_structured_winograd_branches_become_one_winograd_conv():
    """Three structured 3x3 branches (c = C, n = 2) of an NHWC activation on x86 run as Winograd,
    which is linear in its transformed alpha: one Winograd call of the summed constant, exact."""
    torch.manual_seed(4)
    structure = Structure(8, 3, 8, 2)
    block = Branches(8, 8, [(3, 1, 1)] * 3, 1, 1, identity=False)
    model = nn.Sequential(nn.Conv2d(8, 8, 1), block).eval()
    layers = {}
    for i in range(3):
        conv = block.branches[i][0]
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(structure.project(conv.weight.double().numpy())))
        layers[f"1.branches.{i}.0.weight"] = structure
    x = torch.randn(1, 8, 17, 18)
    imported = load_model(model, x, Manifest.from_structures(layers))
    prepared = prepare_module(imported, structured=True, layout=conv_layout(make_target("x86")))
    assert [layer.kernel for layer in prepared.report.rewritten] == ["winograd F(2,2)"] * 3
    assert prepared.mod.script().count("R.call_tir(cls.structured_winograd_conv2d") == 1
    assert [n for n in prepared.notes if "3 structured convs of one op" in n], prepared.notes
    compiled = compile_model(imported, "x86", structured=True, tuning_logs=False)
    np.testing.assert_allclose(
        compiled.run(x.numpy())[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )


def test_structured_branches_of_different_structures_stay_apart():
    """Two structured 3x3 branches of one input, c = C and c = C/2: two different ops, two
    calls, nothing merged, exact."""
    model, manifest, x = _structured_branches(
        8, 8, 3, [Structure(8, 3, 8, 2), Structure(8, 3, 4, 2)], False, 3
    )
    imported = load_model(model, x, manifest)
    prepared = prepare_module(imported, structured=True, layout=conv_layout(make_target("x86")))
    assert _structured_calls(prepared) == 2
    assert not [n for n in prepared.notes if "merged" in n], prepared.notes
    compiled = compile_model(imported, "x86", structured=True, tuning_logs=False)
    np.testing.assert_allclose(
        compiled.run(x.numpy())[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )


def test_a_branch_with_another_user_is_not_merged():
    """A conv whose output is also read elsewhere must still be computed: nothing merges."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a = self.a(x)
            return a + self.b(x), a * 2

    torch.manual_seed(2)
    model = Shared().eval()
    x = torch.randn(1, 4, 7, 7)
    imported = load_model(model, x, Manifest.from_structures({}))
    compiled = compile_model(imported, "x86", structured=False, tuning_logs=False)
    assert _merges(compiled) == ""
    for got, expected in zip(compiled.run(x.numpy()), model(x)):
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family, blocks", [("repvgg", 22), ("mobileone", 43)])
def test_every_block_of_timm_reparameterizable_families_merges(family, blocks):
    """timm's RepVGG-A0 and MobileOne-S0 in their training form: every block's branches are
    one conv in the original build, and the model is exact against torch."""
    from tvm_structconv.zoo import create

    model = create(family, 0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    imported = load_model(model, x, Manifest.from_structures({}))
    compiled = compile_model(imported, "x86", structured=False, tuning_logs=False)
    merged = _merges(compiled)
    counts = [int(part.split("x (")[0]) for part in merged.split(": ")[1].split("), ")]
    assert sum(counts) == blocks, compiled.notes
    expected = model(x).detach().numpy()
    # random BatchNorm statistics grow the logits to ~1e4: errors relative to the largest
    error = np.abs(compiled.run(x.numpy())[0] - expected).max() / np.abs(expected).max()
    assert error < 1e-5, error
