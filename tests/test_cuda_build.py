"""The CUDA build path without a GPU: a structured model compiles for sm_80 and sm_90 (the
fused convs with the shared-memory template, the rest with dlight's GPU rules) and the
generated CUDA C++ compiles with nvcc. nvcc is required (CUDA toolkit on PATH or in
/usr/local/cuda): without it these fail. Numerics on a GPU: benchmarks/gpu_speedup.py."""

import pytest

from tvm_structconv.build import compile_model
from tvm_structconv.cli import main
from tvm_structconv.cuda_source import compile_with_nvcc, cuda_source, find_nvcc
from tvm_structconv.frontend import load_model
from tvm_structconv.structure import Structure
from tvm_structconv.targets import make_target
from tvm_structconv.toolchain import ToolchainError

from small_nets import export_net, structured_net


@pytest.fixture(scope="module")
def nvcc():
    try:
        return find_nvcc()
    except ToolchainError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def imported():
    model, x, manifest = structured_net()
    return load_model(model, x, manifest)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_structured_model_compiles_for_cuda_and_nvcc_accepts_it(imported, nvcc, arch, tmp_path):
    compiled = compile_model(imported, make_target("cuda", arch))
    assert len(compiled.report.rewritten) == 2
    source = cuda_source(compiled.executable)
    assert 'extern "C" __global__' in source
    assert "fused_structured_conv2d" in source  # the fused sum-pool + reduced conv
    assert "threadIdx.x" in source
    assert "__shared__" in source  # the template's tiles of S and alpha
    obj = compile_with_nvcc(source, arch, tmp_path, nvcc=nvcc)
    assert obj.stat().st_size > 0


def test_cli_compiles_for_cuda(tmp_path, capsys):
    library = tmp_path / "net.so"
    assert (
        main(
            [
                "compile",
                str(export_net(tmp_path)),
                "--target",
                "cuda",
                "--cuda-arch",
                "sm_90",
                "-o",
                str(library),
            ]
        )
        == 0
    )
    assert library.stat().st_size > 0
    assert '"arch":"sm_90"' in capsys.readouterr().out


def test_a_cpu_build_has_no_cuda_source(imported):
    compiled = compile_model(imported, "x86", schedules=False)
    with pytest.raises(ValueError, match="not a CUDA build"):
        cuda_source(compiled.executable)


def test_a_bad_cuda_arch_is_a_user_error(tmp_path, capsys):
    assert (
        main(
            [
                "compile",
                str(export_net(tmp_path)),
                "--target",
                "cuda",
                "--cuda-arch",
                "80",
                "-o",
                str(tmp_path / "x.so"),
            ]
        )
        == 2
    )
    assert "CUDA arch must look like sm_80" in capsys.readouterr().err


@pytest.mark.parametrize(
    "structure, out_channels, size, stride",
    [
        (Structure(64, 3, 64, 2), 64, 56, 1),
        (Structure(128, 3, 128, 2), 256, 28, 2),
        (Structure(512, 3, 512, 2), 512, 7, 1),
        (Structure(3, 7, 3, 7), 64, 224, 2),  # the stem: a big alpha tile, small chunks
        (Structure(32, 3, 32, 2, groups=32), 32, 28, 1),  # depthwise
        (Structure(32, 1, 16, 1), 64, 14, 1),  # 1x1, c = C/2: a channel window
    ],
)
def test_the_template_schedules_conv_layers_within_shared_memory(
    structure, out_channels, size, stride
):
    from tvm import s_tir, te

    from tvm_structconv import ops
    from tvm_structconv.schedules.gpu import conv as cuda

    data = te.placeholder((1, structure.in_channels, size, size), name="data")
    alpha = te.placeholder(structure.alpha_shape(out_channels), name="alpha")
    pad = structure.kernel_size[0] // 2
    out = ops.structured_conv2d(data, alpha, structure, (stride, stride), (pad,) * 4)
    sch = s_tir.Schedule(te.create_prim_func([data, alpha, out]))
    assert cuda.schedule_structured_conv2d_cuda(sch, ops.find_structured_block(sch))
    used = cuda.shared_bytes(sch.mod["main"])
    assert 0 < used <= cuda.SHARED_BUDGET
    text = sch.mod.script()
    assert 'thread="blockIdx.x"' in text and 'thread="threadIdx.x"' in text
    assert "pool" not in text or 'scope="shared"' in text  # S is never a global buffer
    for name in ("pool_height", "pool_width", "pool_channel"):
        assert f"{name} = T.sblock_alloc_buffer" not in text  # no global intermediate


def test_tiling_rule_fills_blocks_with_threads():
    from tvm_structconv.schedules.gpu.conv import choose_cuda_tiling

    tiling = choose_cuda_tiling(1, 512, 7, 7, 512, 4)
    assert (tiling.ov, tiling.ot, tiling.yt, tiling.xv, tiling.xt) == (1, 32, 1, 1, 7)
    assert tiling.threads == 224
    stem = choose_cuda_tiling(1, 64, 112, 112, 3, 49)
    assert 4 * stem.ov * stem.ot * stem.rc * 49 <= 16 * 1024 and stem.xv == 2


def test_the_template_is_metaschedules_custom_rule_for_cuda():
    """Registered under the ``cuda`` key (MetaSchedule tries every key of the target; the CPU
    test shows the lookup). Called directly: a CUDA TuneContext costs 25 s to create."""
    import tvm
    from tvm import s_tir, te

    from tvm_structconv import ops

    rule = tvm.get_global_func(f"s_tir.meta_schedule.cuda.{ops.SCHEDULE_RULE}")
    structure = Structure(16, 3, 16, 2)
    data = te.placeholder((1, 16, 14, 14), name="data")
    alpha = te.placeholder(structure.alpha_shape(32), name="alpha")
    out = ops.structured_conv2d(data, alpha, structure, (1, 1), (1, 1, 1, 1))
    sch = s_tir.Schedule(te.create_prim_func([data, alpha, out]))
    (space,) = rule(sch, ops.find_structured_block(sch))
    text = space.mod.script()
    assert 'scope="shared"' in text and 'thread="threadIdx.x"' in text
    assert text.count('"schedule_rule": "None"') >= 2  # the other blocks left alone by MetaSchedule
