"""Legalize GELU and erf with TOPI's vectorizable ``fast_erf`` on CPUs.

TVM lowers ``erf`` (and so ``relax.nn.gelu``, ``x · ½(1 + erf(x/√2))``) to a call of libm's
``erff`` per element, which LLVM cannot vectorize: a GELU over ConvNeXt-T's first MLP
(1×56×56×384) took 8.4 ms on 2 threads, more than the 1×1 conv it follows. TOPI's
``fast_erf`` is a rational approximation in plain arithmetic (vectorized, 0.19 ms for the same
tensor) whose largest absolute error on that GELU was 9.6e-7, against 4.5e-7 for ``erff``.

:func:`legalize_ops` is ``relax.transform.LegalizeOps`` with these two ops legalized so for
float32 (and float16) tensors; other dtypes, and every other op, get TVM's own legalization.
The GELU stays one elementwise function, so ``FuseOps`` fuses it into the conv before it.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi

__all__ = ["FAST_LEGALIZE", "legalize_ops"]

_FAST_DTYPES = ("float32", "float16")


def _default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def _fast_gelu(data: te.Tensor) -> te.Tensor:
    scaled = topi.multiply(data, tvm.tirx.const(1.0 / math.sqrt(2.0), data.dtype))
    erf = topi.fast_erf(scaled)
    half = tvm.tirx.const(0.5, data.dtype)
    return te.compute(
        data.shape,
        lambda *index: data(*index) * (half + half * erf(*index)),
        name="gelu",
        tag="elemwise",
    )


def _legalize_gelu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.ty.dtype) not in _FAST_DTYPES:
        return _default(bb, call)
    return bb.call_te(_fast_gelu, call.args[0], primfunc_name_hint="gelu")


def _legalize_erf(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.ty.dtype) not in _FAST_DTYPES:
        return _default(bb, call)
    return bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")


#: The legalizations that differ from TVM's: op name -> ``f(block_builder, call)``.
FAST_LEGALIZE = {"relax.nn.gelu": _legalize_gelu, "relax.erf": _legalize_erf}


def legalize_ops() -> tvm.transform.Pass:
    """``relax.transform.LegalizeOps`` with :data:`FAST_LEGALIZE`."""
    return relax.transform.LegalizeOps(customize_legalize_map=FAST_LEGALIZE)
