"""ApplyTuningDatabase: a function the database holds gets its recorded schedule and the
``structconv.tuned`` mark; every other function, and the input module, stay as they are.

The database is an in-memory MetaSchedule database with one record: a split and a parallel
loop applied by hand to the workload, as ``structconv tune`` would record a schedule it found.
"""

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvm_structconv.transform import TUNED, ApplyTuningDatabase, tuned_functions

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})


def two_functions(scheduled: bool = False) -> tvm.IRModule:
    """A Relax ``main`` calling two fused elementwise functions, ``scale`` and ``shift``."""

    @I.ir_module
    class Module:
        @T.prim_func(private=True, s_tir=True)
        def scale(A: T.Buffer((64, 32), "float32"), B: T.Buffer((64, 32), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i, j in T.grid(64, 32):
                with T.sblock("B"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, vj] = A[vi, vj] * T.float32(2)

        @T.prim_func(private=True, s_tir=True)
        def shift(A: T.Buffer((64, 32), "float32"), B: T.Buffer((64, 32), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i, j in T.grid(64, 32):
                with T.sblock("B"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, vj] = A[vi, vj] + T.float32(1)

        @R.function
        def main(x: R.Tensor((64, 32), "float32")) -> R.Tensor((64, 32), "float32"):
            cls = Module
            with R.dataflow():
                y = R.call_tir(cls.scale, (x,), out_ty=R.Tensor((64, 32), "float32"))
                z = R.call_tir(cls.shift, (y,), out_ty=R.Tensor((64, 32), "float32"))
                R.output(z)
            return z

    if scheduled:
        gvar = Module.get_global_var("scale")
        Module[gvar] = Module[gvar].with_attr("tirx.is_scheduled", True)
    return Module


def database_scheduling_scale() -> ms.Database:
    """A database with one record for ``scale``: rows split by 8, the outer loop parallel."""
    database = ms.database.MemoryDatabase()
    # the workload as MetaSchedule extracts it from the module (s_tir.meta_schedule.normalize_mod)
    workload = tvm.IRModule({"main": two_functions()["scale"].with_attr("global_symbol", "main")})
    sch = s_tir.Schedule(workload)
    rows, _ = sch.get_loops(sch.get_sblock("B"))
    outer, _ = sch.split(rows, [None, 8])
    sch.parallel(outer)
    database.commit_tuning_record(
        ms.database.TuningRecord(sch.trace, database.commit_workload(workload), [1e-6], TARGET)
    )
    return database


def apply(mod: tvm.IRModule) -> tvm.IRModule:
    with TARGET:
        return ApplyTuningDatabase(database_scheduling_scale())(mod)


def test_function_in_the_database_gets_its_schedule_and_the_mark():
    @T.prim_func(private=True, s_tir=True)
    def expected_scale(A: T.Buffer((64, 32), "float32"), B: T.Buffer((64, 32), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, TUNED: True})
        for i_0 in T.parallel(8):
            for i_1, j in T.grid(8, 32):
                with T.sblock("B"):
                    vi = T.axis.spatial(64, i_0 * 8 + i_1)
                    vj = T.axis.spatial(32, j)
                    T.reads(A[vi, vj])
                    T.writes(B[vi, vj])
                    B[vi, vj] = A[vi, vj] * T.float32(2)

    before = two_functions()
    after = apply(before)
    tvm.ir.assert_structural_equal(after["scale"], expected_scale)
    assert tuned_functions(after) == ["scale"]
    # the function the database does not hold, and the Relax function, are unchanged
    tvm.ir.assert_structural_equal(after["shift"], two_functions()["shift"])
    assert after["shift"].same_as(before["shift"])
    tvm.ir.assert_structural_equal(after["main"], before["main"])
    # the module given to the pass is not modified
    tvm.ir.assert_structural_equal(before, two_functions())
    assert tuned_functions(before) == []


def test_function_already_scheduled_is_neither_rescheduled_nor_marked():
    before = two_functions(scheduled=True)
    after = apply(before)
    tvm.ir.assert_structural_equal(after, two_functions(scheduled=True))
    assert tuned_functions(after) == []


def test_empty_database_changes_nothing():
    before = two_functions()
    with TARGET:
        after = ApplyTuningDatabase(ms.database.MemoryDatabase())(before)
    tvm.ir.assert_structural_equal(after, two_functions())
    assert tuned_functions(after) == []
