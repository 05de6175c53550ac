"""The x86 hand schedule of the fused conv: numerics against torch over many shapes, target
parameters read from the target, the fused epilogue, tiling choices and the rule's answers."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax, s_tir, te

from tvm_structconv import ops
from tvm_structconv.build import scheduled_pipeline
from tvm_structconv.schedules.cpu import conv, tiling
from tvm_structconv.schedules.target_info import vector_lanes, vector_registers
from tvm_structconv.structure import Structure

from conv_oracle import HOST, oracle, random_case
from strategies import conv_geometries, output_channels, structures


def scheduled_conv(
    x,
    alpha,
    structure,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    target=HOST,
    block=None,
    tiling_seed=None,
):
    """Run the hand-scheduled NHWC op on NCHW ``x`` and OIHW ``alpha``; return NHWC.

    With ``tiling_seed``, the tunable schedule (MetaSchedule's space) with tile sizes drawn
    from that seed.
    """
    data = te.placeholder(x.transpose(0, 2, 3, 1).shape, name="data")
    probe = ops.structured_conv2d_nhwc(
        data,
        te.placeholder((1, *alpha.shape[2:], alpha.shape[1], alpha.shape[0])),
        structure,
        stride,
        padding,
        dilation,
    )
    if block is None:
        block = tiling.channel_block(target, alpha.shape[0], structure.groups, int(probe.shape[2]))
    packed = ops.pack_alpha(alpha, block)
    weight = te.placeholder(packed.shape, name="alpha")
    out = ops.structured_conv2d_nhwc(data, weight, structure, stride, padding, dilation)
    func = te.create_prim_func([data, weight, out])
    if tiling_seed is None:
        sch = conv.StructuredConv2dRule().apply(func, target, False)
    else:
        sch = s_tir.Schedule(func, seed=tiling_seed)
        assert conv.schedule_structured_conv2d(
            sch, ops.find_structured_block(sch), target, tunable=True
        )
        assert len(sch.trace.decisions) == 3  # rows, pixels and chunks were sampled
    assert sch is not None
    executable = tvm.compile(sch.mod, target=target).jit()
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    executable(
        tvm.runtime.tensor(x.transpose(0, 2, 3, 1).copy()), tvm.runtime.tensor(packed), result
    )
    return result.numpy()


@settings(max_examples=60)
@given(structures(max_channels=6, max_kernel=3), st.data(), st.integers(0, 2**31 - 1))
def test_scheduled_op_equals_torch_over_random_shapes(structure, data, seed):
    """Stride, padding and dilation drawn per axis; output channels off the vector block."""
    out_channels = data.draw(output_channels(structure.groups), "out_channels")
    geometry = data.draw(conv_geometries(max_extra=9), "geometry")
    size = geometry.input_size(structure.kernel_size)
    x, alpha = random_case(structure, out_channels, size, seed)
    stride, padding, dilation = geometry.stride, geometry.padding, geometry.dilation
    got = scheduled_conv(x, alpha, structure, stride, padding, dilation)
    expected = oracle(x, alpha, structure, stride, padding, dilation)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=25)
@given(
    structures(max_channels=8, max_kernel=3),
    st.data(),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),  # stride per axis
    st.integers(4, 12),  # input size
    st.integers(1, 2**31 - 1),  # tiling seed
)
def test_tunable_schedule_is_exact_for_every_sampled_tiling(structure, data, stride, size, seed):
    out_channels = data.draw(output_channels(structure.groups), "out_channels")
    kernel_h, kernel_w = structure.kernel_size
    x, alpha = random_case(structure, out_channels, (size + kernel_h, size + kernel_w), seed)
    got = scheduled_conv(x, alpha, structure, stride, (1, 1, 1, 1), tiling_seed=seed)
    np.testing.assert_allclose(
        got, oracle(x, alpha, structure, stride, (1, 1, 1, 1), 1), rtol=1e-4, atol=1e-4
    )


def test_tunable_schedule_with_a_partial_vector_block():
    """A stage of symbolic extent under sampled tiles (found by output channels off the vector
    block: target_info.vector_partition took int() of it) stays scalar, and exact."""
    structure = Structure(2, 1, 2, 1, groups=2)  # depthwise 1x1: the pad is the only stage
    x, alpha = random_case(structure, 6, (5, 5), 1)
    got = scheduled_conv(x, alpha, structure, (1, 1), (1, 1, 1, 1), tiling_seed=6)
    np.testing.assert_allclose(
        got, oracle(x, alpha, structure, 1, (1, 1, 1, 1), 1), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "structure, out_channels, size, stride, padding",
    [
        (Structure(64, 3, 64, 2), 64, (7, 7), 1, (1, 1, 1, 1)),  # ResNet stage 4 at 7x7
        (Structure(16, 3, 16, 2), 32, (13, 13), 1, (1, 1, 1, 1)),  # a prime output width
        (Structure(16, 3, 8, 3), 24, (14, 14), 2, (1, 1, 1, 1)),  # channel pool only, strided
        (Structure(32, 1, 16, 1), 48, (14, 14), 2, (0, 0, 0, 0)),  # 1x1, c = C/2, strided
        (Structure(32, 3, 32, 2, groups=32), 32, (15, 15), 1, (1, 1, 1, 1)),  # depthwise
        (Structure(24, (3, 5), 12, (2, 3), groups=2), 16, (9, 11), 1, (1, 2, 1, 2)),  # grouped
        (Structure(3, 7, 3, 7), 32, (23, 23), 2, (3, 3, 3, 3)),  # a stem conv, trivial
    ],
)
def test_scheduled_op_on_network_like_layers(structure, out_channels, size, stride, padding):
    x, alpha = random_case(structure, out_channels, size, 1)
    got = scheduled_conv(x, alpha, structure, (stride, stride), padding)
    np.testing.assert_allclose(
        got, oracle(x, alpha, structure, stride, padding, 1), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("groups", [1, 2, 16])
def test_trivial_structure_is_the_ordinary_conv(groups):
    structure = Structure(16, 3, 16, 3, groups=groups)  # D = M = 1: no pool stage
    x, alpha = random_case(structure, 16, (10, 9), 2)
    got = scheduled_conv(x, alpha, structure, padding=(1, 1, 1, 1))
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(alpha), padding=1, groups=groups)
    np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_avx2_code_for_an_avx2_target():
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    structure = Structure(16, 3, 16, 2)
    data = te.placeholder((1, 9, 9, 16), name="data")
    block = tiling.channel_block(avx2, 32, 1, 9)
    weight = te.placeholder((32 // block, 2, 2, 16, block), name="alpha")
    out = ops.structured_conv2d_nhwc(data, weight, structure, padding=(1, 1, 1, 1))
    sch = conv.StructuredConv2dRule().apply(te.create_prim_func([data, weight, out]), avx2, False)
    assembly = tvm.compile(sch.mod, target=avx2).mod.inspect_source("asm")
    # every FMA accumulates 8 lanes in a ymm register (none in xmm: a target read as SSE
    # packs 4 channels per block); nothing of AVX-512
    fmas = {reg: len(re.findall(rf"vfmadd\w+ps\s[^\n]*%{reg}", assembly)) for reg in ("xmm", "ymm")}
    assert fmas["ymm"] > 0 and fmas["xmm"] == 0, fmas
    assert "%zmm" not in assembly
    if not tvm.target.codegen.target_has_features("avx2", HOST):
        pytest.skip("this host cannot run AVX2 code")
    x, alpha = random_case(structure, 32, (9, 9), 3)
    got = scheduled_conv(x, alpha, structure, padding=(1, 1, 1, 1), target=avx2)
    np.testing.assert_allclose(
        got, oracle(x, alpha, structure, 1, (1, 1, 1, 1), 1), rtol=1e-4, atol=1e-4
    )


def test_fused_bias_relu_and_residual_epilogue():
    structure = Structure(16, 3, 16, 2)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 11, 11, 16)).astype("float32")
    residual = rng.standard_normal((1, 11, 11, 24)).astype("float32")
    alpha = rng.standard_normal(structure.alpha_shape(24)).astype("float32")
    bias = rng.standard_normal(24).astype("float32")
    block = tiling.channel_block(HOST, 24, 1, 11)

    data = relax.Var("x", relax.TensorType(x.shape, "float32"))
    skip = relax.Var("r", relax.TensorType(residual.shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [data, skip]):
        with builder.dataflow():
            conv = builder.emit(
                builder.call_te(
                    lambda d, a: ops.structured_conv2d_nhwc(d, a, structure, padding=(1, 1, 1, 1)),
                    data,
                    relax.const(ops.pack_alpha(alpha, block)),
                    primfunc_name_hint="conv",
                )
            )
            out = builder.emit(relax.op.add(conv, relax.const(bias.reshape(1, 1, 1, 24))))
            out = builder.emit(relax.op.nn.relu(out))
            out = builder.emit(relax.op.add(out, skip))
            out = builder.emit_output(builder.emit(relax.op.clip(out, 0.0, 6.0)))
        builder.emit_func_output(out)
    executable = tvm.compile(builder.get(), target=HOST, relax_pipeline=scheduled_pipeline(HOST))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(residual)).numpy()
    conv = oracle(x.transpose(0, 3, 1, 2).copy(), alpha, structure, 1, (1, 1, 1, 1), 1, bias)
    expected = np.clip(np.maximum(conv, 0) + residual, 0, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    lowered = scheduled_pipeline(HOST)(builder.get())
    kernels = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1, "bias, ReLU, residual add and clip fuse into the conv"
    (kernel,) = kernels
    assert kernel.attrs["tirx.is_scheduled"]
    # the epilogue is applied in the write-back of the register tile: the one block writing
    # the output reads the local accumulator, and no buffer holds an epilogue stage
    sch = s_tir.Schedule(kernel)
    root = sch.get_sblock("root")
    blocks = [sch.get(b) for b in [root, *sch.get_child_blocks(root)]]
    allocated = [buffer for b in blocks for buffer in b.alloc_buffers]
    assert all(b.scope() == "local" or b.name.startswith("pool") for b in allocated), allocated
    # the output is the one buffer written that the function does not allocate
    (write_back,) = [
        b for b in blocks if any(all(not w.source.same_as(a) for a in allocated) for w in b.writes)
    ]
    assert "local" in {read.source.scope() for read in write_back.reads}
    assert len(write_back.reads) == 3, "the tile, the bias and the residual"


@pytest.mark.parametrize(
    "mcpu, lanes, registers",
    [("haswell", 8, 16), ("znver3", 8, 16), ("skylake-avx512", 16, 32), ("x86-64", 4, 16)],
)
def test_vector_width_and_registers_come_from_the_target(mcpu, lanes, registers):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    assert (vector_lanes(target), vector_registers(target)) == (lanes, registers)


def test_neon_target():
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert (vector_lanes(neon), vector_registers(neon)) == (4, 32)


@pytest.mark.parametrize(
    "mcpu, out_channels, out_width, block, pixels",
    [
        ("haswell", 64, 56, 16, 4),  # 4 px x 2 ymm = 8 accumulators
        ("haswell", 512, 7, 8, 7),  # 7 px x 1 ymm rather than 1 px x 2 ymm
        ("skylake-avx512", 64, 56, 32, 14),  # 14 px x 2 zmm = 28 of 32 registers
        ("skylake-avx512", 24, 56, 8, 28),  # 24 lanes is no whole zmm: one ymm
    ],
)
def test_register_tile_fits_the_target(mcpu, out_channels, out_width, block, pixels):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert tiling.channel_block(target, out_channels, 1, out_width) == block
    chosen = tiling.choose_tiling(1, out_width, out_width, out_channels, block, target)
    assert chosen.pixels == pixels


@pytest.mark.parametrize(
    "cores, out_height, rows", [(2, 56, 7), (2, 28, 7), (16, 56, 7), (4, 7, 7)]
)
def test_tasks_are_balanced_over_cores(cores, out_height, rows):
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": cores})
    chosen = tiling.choose_tiling(1, out_height, out_height, 64, 16, target)
    assert chosen.rows == rows
    tasks = (out_height // chosen.rows) * chosen.chunks
    assert tasks % cores == 0


def test_rule_answers_none_for_functions_it_does_not_schedule():
    a = te.placeholder((4, 4), name="a")
    elementwise = te.create_prim_func([a, te.compute((4, 4), lambda i, j: a[i, j] + 1)])
    assert conv.StructuredConv2dRule().apply(elementwise, HOST, False) is None
    structure = Structure(4, 3, 2, 2)
    data, alpha = te.placeholder((1, 4, 6, 6)), te.placeholder(structure.alpha_shape(4))
    nchw = te.create_prim_func([data, alpha, ops.structured_conv2d(data, alpha, structure)])
    assert conv.StructuredConv2dRule().apply(nchw, HOST, False) is None
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert conv.StructuredConv2dRule().apply(nchw, cuda, False) is None


@pytest.mark.parametrize("size", [14, 13])
def test_1024_channel_conv_is_exact(size):
    """Every pixel of a row on one L1 set: 7-pixel tiles at 14 wide, 13-pixel tiles at 13."""
    structure = Structure(1024, 1, 1024, 1)
    x, alpha = random_case(structure, 48, (size, size), seed=3)
    got = scheduled_conv(x, alpha, structure)
    expected = oracle(x, alpha, structure, (1, 1), (0, 0, 0, 0), (1, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
