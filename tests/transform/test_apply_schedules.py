"""ApplySchedules: every PrimFunc scheduled by the project's rules for an LLVM target, against a
hand-written expected PrimFunc; other targets and functions already scheduled left alone.

The elementwise function goes to :class:`~tvm_structconv.schedules.cpu.injective.Injective`:
producers inlined into the last block, its innermost loop split at the longest vector of up to 4
registers (``target_info.vector_widths``) and vectorized, the outer loops fused and parallel
(there are ``PARALLEL_MIN_WORK`` iterations or more).
"""

import pytest
import tvm
from tvm.script import ir as I
from tvm.script import tirx as T

from tvm_structconv.transform import ApplySchedules

#: AVX2: 256-bit registers, 8 float32 lanes, 4 registers of them.
X86_AVX2 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}
)
#: NEON: 128-bit registers, 4 float32 lanes.
AARCH64 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
)


def scale_relu(rows: int = 64, columns: int = 256) -> tvm.IRModule:
    """``C = max(2 A, 0)`` in two blocks, as fusion leaves an elementwise chain."""

    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def scale_relu(
            A: T.Buffer((rows, columns), "float32"), C: T.Buffer((rows, columns), "float32")
        ):
            T.func_attr({"tirx.noalias": True})
            B = T.sblock_alloc_buffer((rows, columns))
            for i, j in T.grid(rows, columns):
                with T.sblock("B"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, vj] = A[vi, vj] * T.float32(2)
            for i, j in T.grid(rows, columns):
                with T.sblock("C"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.max(B[vi, vj], T.float32(0))

    return Before


@pytest.mark.parametrize("target, vector", [(X86_AVX2, 32), (AARCH64, 16)], ids=["avx2", "neon"])
def test_elementwise_function_is_inlined_parallel_and_vectorized(target, vector):
    chunks = 256 // vector  # the vector loop splits the 256 columns into chunks

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def scale_relu(A: T.Buffer((64, 256), "float32"), C: T.Buffer((64, 256), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for i_j_0_fused in T.parallel(64 * chunks):
                for j_1 in T.vectorized(vector):
                    with T.sblock("C"):
                        vi = T.axis.spatial(64, i_j_0_fused // chunks)
                        vj = T.axis.spatial(256, i_j_0_fused % chunks * vector + j_1)
                        T.reads(A[vi, vj])
                        T.writes(C[vi, vj])
                        C[vi, vj] = T.max(A[vi, vj] * T.float32(2), T.float32(0))

    tvm.ir.assert_structural_equal(ApplySchedules(target)(scale_relu()), Expected)


def test_small_elementwise_function_is_vectorized_on_one_thread():
    """4 x 64 = 256 iterations, below ``PARALLEL_MIN_WORK``: no parallel loop."""

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def scale_relu(A: T.Buffer((4, 64), "float32"), C: T.Buffer((4, 64), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for i, j_0 in T.grid(4, 2):
                for j_1 in T.vectorized(32):
                    with T.sblock("C"):
                        vi = T.axis.spatial(4, i)
                        vj = T.axis.spatial(64, j_0 * 32 + j_1)
                        T.reads(A[vi, vj])
                        T.writes(C[vi, vj])
                        C[vi, vj] = T.max(A[vi, vj] * T.float32(2), T.float32(0))

    tvm.ir.assert_structural_equal(ApplySchedules(X86_AVX2)(scale_relu(4, 64)), Expected)


@pytest.mark.parametrize(
    "target",
    [tvm.target.Target({"kind": "c"}), tvm.target.Target({"kind": "cuda", "arch": "sm_80"})],
    ids=["c", "cuda"],
)
def test_other_targets_leave_the_function_alone(target):
    """A C target is not scheduled at all; for CUDA only the fused conv is (dlight's GPU rules
    schedule the rest later), so an elementwise function stays as it is."""
    before = scale_relu()
    after = ApplySchedules(target)(before)
    tvm.ir.assert_structural_equal(after, scale_relu())
    assert "tirx.is_scheduled" not in after["scale_relu"].attrs


def test_function_already_scheduled_is_left_alone():
    before = scale_relu()
    gvar = before.get_global_var("scale_relu")
    before[gvar] = before[gvar].with_attr("tirx.is_scheduled", True)
    expected = scale_relu()
    expected[gvar.name_hint] = expected["scale_relu"].with_attr("tirx.is_scheduled", True)
    tvm.ir.assert_structural_equal(ApplySchedules(X86_AVX2)(before), expected)


def test_input_module_is_not_modified():
    # dlight's ApplyDefaultSchedule writes the scheduled functions into the module it is given
    before = scale_relu()
    ApplySchedules(X86_AVX2)(before)
    tvm.ir.assert_structural_equal(before, scale_relu())
