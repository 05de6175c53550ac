"""fast_legalize: GELU and erf legalize to TOPI's fast_erf (plain arithmetic, no libm erff call)
for float32; other dtypes keep TVM's legalization. Numerics in
``tests/integration/test_fast_legalize_numerics.py``."""

import pytest
import tvm
from tvm import relax

from tvm_structconv.transform.fast_legalize import legalize_ops


def unary_module(op, dtype: str, shape=(2, 8)) -> tvm.IRModule:
    x = relax.Var("x", relax.TensorType(shape, dtype))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(op(x)))
        builder.emit_func_output(out)
    return builder.get()


def prim_funcs(mod: tvm.IRModule):
    return [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.parametrize("op", [relax.op.nn.gelu, relax.op.erf], ids=["gelu", "erf"])
def test_float32_legalizes_without_an_erf_call(op):
    fast = legalize_ops()(unary_module(op, "float32"))
    default = relax.transform.LegalizeOps()(unary_module(op, "float32"))
    (fast_func,) = prim_funcs(fast)
    (default_func,) = prim_funcs(default)
    assert "T.erf(" in default_func.script()  # TVM's own: libm erff per element
    assert "T.erf(" not in fast_func.script()
    assert "relax.nn.gelu" not in fast.script() and "R.erf" not in fast.script()


@pytest.mark.parametrize("op", [relax.op.nn.gelu, relax.op.erf], ids=["gelu", "erf"])
def test_float64_keeps_tvms_legalization(op):
    fast = legalize_ops()(unary_module(op, "float64"))
    default = relax.transform.LegalizeOps()(unary_module(op, "float64"))
    tvm.ir.assert_structural_equal(fast, default)


def test_other_ops_are_legalized_as_tvm_does():
    mod = unary_module(relax.op.nn.relu, "float32")
    tvm.ir.assert_structural_equal(legalize_ops()(mod), relax.transform.LegalizeOps()(mod))


def test_the_scheduled_pipeline_uses_it():
    from tvm_structconv.build import fusion_passes
    from tvm_structconv.targets import make_target

    target = make_target("x86")
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(
            unary_module(relax.op.nn.gelu, "float32", (4, 16))
        )
    assert prim_funcs(fused) and all("T.erf(" not in f.script() for f in prim_funcs(fused))


@pytest.mark.parametrize("op", [relax.op.nn.gelu, relax.op.erf], ids=["gelu", "erf"])
def test_float16_legalizes_without_an_erf_call_in_float16(op):
    fast = legalize_ops()(unary_module(op, "float16"))
    (func,) = prim_funcs(fast)
    assert "T.erf(" not in func.script()
    assert "float32" not in func.script()  # every constant in the tensor's dtype
