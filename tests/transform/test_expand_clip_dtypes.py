"""ExpandClip over every float dtype and integer bounds: the constants take the tensor's dtype,
an integer bound is read as its value, and the expanded clip computes numpy's clip (mutation
survivors of ``transform/expand_clip.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_structconv.transform import ExpandClip

from relax_modules import chain_module


def clip_of(dtype: str, low, high) -> tvm.IRModule:
    """``main(x) = clip(x, low, high)`` for ``x`` of shape ``(2, 5)`` and ``dtype``."""
    return chain_module((2, 5), lambda x: relax.op.clip(x, low, high), dtype=dtype)


def expanded(dtype: str, low: float, high: float) -> tvm.IRModule:
    """``minimum(maximum(x, low), high)`` with 0-d constants of ``dtype``."""
    mod = chain_module(
        (2, 5),
        lambda x: relax.op.maximum(x, relax.const(np.array(low, dtype), dtype)),
        lambda lower: relax.op.minimum(lower, relax.const(np.array(high, dtype), dtype)),
        dtype=dtype,
    )
    return relax.transform.CanonicalizeBindings()(mod)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("low, high", [(0.0, 6.0), (-1, 2), (-0.5, 0.25)])
def test_every_float_dtype_is_expanded_with_constants_of_its_dtype(dtype, low, high):
    """Float or integer bounds alike; the result is numpy's clip in that dtype."""
    actual = ExpandClip()(clip_of(dtype, low, high))
    tvm.ir.assert_structural_equal(actual, expanded(dtype, low, high), map_free_vars=True)
    x = np.linspace(-3, 8, 10).astype(dtype).reshape(2, 5)
    executable = tvm.compile(actual, target=tvm.target.Target({"kind": "llvm"}))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.clip(x, np.array(low, dtype), np.array(high, dtype)))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8"])
def test_an_integer_clip_is_left_as_it_is(dtype):
    mod = clip_of(dtype, 0, 6)
    assert ExpandClip()(mod).same_as(mod)


def test_a_module_with_a_primfunc_and_no_clip_is_returned_as_it_is():
    """Nothing to expand: the module itself comes back, its PrimFunc untouched."""
    mod = relax.transform.LegalizeOps()(chain_module((2, 5), relax.op.nn.relu))  # relu PrimFunc
    assert any(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions_items())
    assert ExpandClip()(mod).same_as(mod)


def test_a_clip_among_primfuncs_is_expanded_and_the_primfuncs_kept():
    """A module holding PrimFuncs too: only the Relax function is rewritten."""
    before = chain_module((2, 5), relax.op.nn.relu, lambda relu: relax.op.clip(relu, 0.0, 6.0))
    mod = relax.transform.LegalizeOps(enable_warning=False)(before)
    # LegalizeOps turned both into PrimFuncs: put the clip back as a Relax op
    mod = tvm.IRModule({**dict(mod.functions_items()), **dict(before.functions_items())})
    prim_funcs = {
        gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    actual = ExpandClip()(mod)
    assert not actual.same_as(mod)
    assert {
        gv.name_hint for gv, f in actual.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    } == prim_funcs
    text = actual["main"].script()
    assert "R.clip" not in text and "R.maximum" in text and "R.minimum" in text


def test_every_relax_function_of_a_module_is_expanded():
    """Two Relax functions with a clip each, after a PrimFunc: both expanded (each function's
    change is counted on its own, and a PrimFunc met first does not end the walk)."""
    x = relax.Var("x", relax.TensorType((2, 5), "float32"))
    y = relax.Var("y", relax.TensorType((2, 5), "float32"))
    builder = relax.BlockBuilder()
    for name, var in (("first", x), ("second", y)):
        with builder.function(name, [var]):
            with builder.dataflow():
                out = builder.emit_output(builder.emit(relax.op.clip(var, 0.0, 6.0)))
            builder.emit_func_output(out)
    mod = builder.get()
    a = tvm.te.placeholder((2,), name="a")
    prim = tvm.te.create_prim_func([a, tvm.te.compute((2,), lambda i: a[i] + 1.0)])
    functions = {tvm.ir.GlobalVar("a_prim"): prim, **dict(mod.functions_items())}
    mod = tvm.IRModule(functions)
    assert isinstance(next(iter(mod.functions_items()))[1], tvm.tirx.PrimFunc)
    actual = ExpandClip()(mod)
    for name in ("first", "second"):
        text = actual[name].script()
        assert "R.clip" not in text and "R.maximum" in text and "R.minimum" in text, name
