"""The AArch64 (NEON) form of the CPU template: exact over many shapes (its loop nest runs
here with the host's vectors; under qemu in test_deploy_qemu.py), and LLVM's AArch64 code
multiplies by element from vector loads of S rather than from scalar loads."""

import re

import numpy as np
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import s_tir, te

from tvm_structconv import ops
from tvm_structconv.schedules.cpu import conv, tiling
from tvm_structconv.structure import Structure
from tvm_structconv.targets import make_target

from conv_oracle import HOST, oracle, random_case
from strategies import output_channels, structures

AARCH64 = make_target("aarch64")


def nhwc_func(structure, out_channels, size, target, stride=(1, 1), padding=1):
    width = (size + 2 * padding - structure.kernel_size[1]) // stride[1] + 1
    block = tiling.channel_block(target, out_channels, structure.groups, width)
    data = te.placeholder((1, size, size, structure.in_channels), name="data")
    reduced_kernel = structure.reduced_kernel_size
    alpha = te.placeholder(
        (
            out_channels // block,
            *reduced_kernel,
            structure.reduced_channels // structure.groups,
            block,
        ),
        name="alpha",
    )
    out = ops.structured_conv2d_nhwc(data, alpha, structure, stride, (padding,) * 4)
    return te.create_prim_func([data, alpha, out]), block, [int(d) for d in out.shape]


@settings(max_examples=25)
@given(
    structures(max_channels=12, max_kernel=3),
    st.data(),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),  # stride per axis
    st.integers(5, 12),
    st.integers(1, 2**31 - 1),
)
def test_channel_unrolled_template_is_exact(structure, data, stride, size, seed):
    out_channels = data.draw(output_channels(structure.groups), "out_channels")
    func, block, out_shape = nhwc_func(structure, out_channels, size, HOST, stride)
    sch = s_tir.Schedule(func)
    assert conv.schedule_structured_conv2d(sch, ops.find_structured_block(sch), HOST, unroll=4)
    x, alpha = random_case(structure, out_channels, (size, size), seed)
    packed = ops.pack_alpha(alpha, block)
    result = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    tvm.compile(sch.mod, target=HOST)(
        tvm.runtime.tensor(x.transpose(0, 2, 3, 1).copy()), tvm.runtime.tensor(packed), result
    )
    np.testing.assert_allclose(
        result.numpy(), oracle(x, alpha, structure, stride, (1,) * 4, 1), rtol=1e-4, atol=1e-4
    )


def aarch64_assembly(unroll=None) -> str:
    """AArch64 assembly of the conv rule's schedule; ``unroll`` forces the channel unroll."""
    func, _, _ = nhwc_func(Structure(64, 3, 64, 2), 64, 14, AARCH64)
    if unroll is None:
        sch = conv.StructuredConv2dRule().apply(func, AARCH64, False)
        assert sch is not None
    else:
        sch = s_tir.Schedule(func)
        assert conv.schedule_structured_conv2d(
            sch, ops.find_structured_block(sch), AARCH64, unroll=unroll
        )
    return tvm.compile(sch.mod, target=AARCH64).mod.inspect_source("asm")


def test_neon_form_multiplies_by_element_from_vector_loads():
    neon = aarch64_assembly()  # the rule reads the NEON unroll off the target
    by_element = len(re.findall(r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[\d\]", neon))
    assert by_element > 0 and by_element == len(re.findall(r"\bfmla\b", neon))
    assert not re.findall(r"\bldr\s+s\d+", neon)  # S comes as 4-channel vectors
    generic = aarch64_assembly(unroll=1)
    assert re.findall(r"\bldr\s+s\d+", generic)  # the x86 order loads S one value at a time


def test_channel_unroll_is_neon_lanes_on_aarch64_only():
    assert tiling.channel_unroll(HOST) == 1 and tiling.channel_unroll(AARCH64) == 4
