"""The x86 hand schedule as MetaSchedule's custom rule for blocks with ``schedule_rule``:
the design spaces tuning searches (the tunable hand schedule and the hand schedule as it is)."""

import sys

import tvm
from tvm import te

import tvm_structconv.schedules.cpu.conv  # noqa: F401  (registers the rule)
from tvm_structconv import ops
from tvm_structconv.structure import Structure
from tvm_structconv.tune import conv_tune_context

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)


def test_meta_schedule_uses_the_hand_schedule_as_custom_rule():
    # MetaSchedule dispatches on the target's keys: "cpu" for llvm
    assert tvm.get_global_func(f"s_tir.meta_schedule.cpu.{ops.SCHEDULE_RULE}") is not None
    structure = Structure(8, 3, 8, 2)
    data, alpha = te.placeholder((1, 8, 8, 8)), te.placeholder((1, 2, 2, 8, 8))
    out = ops.structured_conv2d_nhwc(data, alpha, structure, padding=(1, 1, 1, 1))
    relu = te.compute(out.shape, lambda *i: tvm.tirx.max(out(*i), 0.0), name="relu")
    mod = tvm.IRModule({"main": te.create_prim_func([data, alpha, relu])})
    spaces = conv_tune_context(mod, HOST, "conv").generate_design_space()
    # made without TVM's tensor intrinsics, and their empty stand-in is gone again
    intrinsics = sys.modules.get("tvm.s_tir.tensor_intrin")
    assert intrinsics is None or hasattr(intrinsics, "__file__")
    sampled = sorted(
        len([inst for inst in space.trace.insts if inst.kind.name == "SamplePerfectTile"])
        for space in spaces
    )
    # the hand schedule; the tunable one samples output-channel chunks, rows and pixels
    assert sampled == [0, 3]
    for space in spaces:
        text = space.mod.script()
        assert "T.parallel" in text and "structured_conv2d_local" in text
        assert 'sblock("relu")' not in text  # the epilogue is inlined into the write-back
        assert "pool_height_rf" not in text  # no default rule touched the pool stages
