"""The CUDA build path without a GPU: a structured model compiles for sm_80 and sm_90 (dlight
GPU schedules give every kernel its thread bindings) and the generated CUDA C++ compiles with
nvcc. nvcc is required (CUDA toolkit on PATH or in /usr/local/cuda): without it these fail."""

import pytest

from small_nets import export_net, structured_net
from tvm_structconv.build import compile_model
from tvm_structconv.cli import main
from tvm_structconv.cuda_source import compile_with_nvcc, cuda_source, find_nvcc
from tvm_structconv.frontend import load_model
from tvm_structconv.targets import make_target
from tvm_structconv.toolchain import ToolchainError


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
    assert "threadIdx.x" in source  # thread bindings from the dlight GPU rules
    obj = compile_with_nvcc(source, arch, tmp_path, nvcc=nvcc)
    assert obj.stat().st_size > 0


def test_cli_compiles_for_cuda(tmp_path, capsys):
    library = tmp_path / "net.so"
    assert main(["compile", str(export_net(tmp_path)), "--target", "cuda", "--cuda-arch", "sm_90",
                 "-o", str(library)]) == 0
    assert library.stat().st_size > 0
    assert '"arch":"sm_90"' in capsys.readouterr().out


def test_a_cpu_build_has_no_cuda_source(imported):
    compiled = compile_model(imported, "x86", schedules=False)
    with pytest.raises(ValueError, match="not a CUDA build"):
        cuda_source(compiled.executable)


def test_a_bad_cuda_arch_is_a_user_error(tmp_path, capsys):
    assert main(["compile", str(export_net(tmp_path)), "--target", "cuda", "--cuda-arch", "80",
                 "-o", str(tmp_path / "x.so")]) == 2
    assert "CUDA arch must look like sm_80" in capsys.readouterr().err
