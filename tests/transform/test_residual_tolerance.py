"""The rewrite's residual check at its edge: a weight just under the tolerance is rewritten
(and reports its residual), one just over it (2x) is refused, for the default fp32 tolerance
and an explicit one, for a conv and for a Linear layer."""

import numpy as np
import pytest
from tvm import relax

from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.structure import Structure
from tvm_structconv.transform.structured_conv import (
    StructureMismatchError,
    rewrite_structured_conv,
)

#: 100 float32 machine epsilons (written out: the test must not read it from the code it checks)
FP32_TOLERANCE = 100 * 2.0**-23


def weight_with_residual(structure: Structure, shape, residual: float, seed: int = 0):
    """A float32 weight of ``shape`` whose relative residual under ``structure`` is
    ``residual``: a structured kernel plus a perturbation orthogonal to the structured ones."""
    rng = np.random.default_rng(seed)
    structured = structure.project(rng.standard_normal(shape))
    noise = rng.standard_normal(shape)
    noise -= structure.project(noise)
    # ‖t·E‖ / ‖S + t·E‖ = r with S ⊥ E
    scale = residual * np.linalg.norm(structured) / np.linalg.norm(noise) / np.sqrt(1 - residual**2)
    weight = (structured + scale * noise).astype("float32")
    assert structure.residual(weight.astype(np.float64)) == pytest.approx(residual, rel=0.02)
    return weight


def module_of(weight: np.ndarray):
    """``main(x)``: a conv (4-D weight) or a Linear layer (2-D) on that constant weight."""
    constant = relax.const(weight)
    if weight.ndim == 4:
        x = relax.Var("x", relax.TensorType((1, weight.shape[1], 7, 7), "float32"))
        make = lambda v: relax.op.nn.conv2d(v, constant, padding=1)  # noqa: E731
    else:
        x = relax.Var("x", relax.TensorType((1, weight.shape[1]), "float32"))
        make = lambda v: relax.op.matmul(v, relax.op.permute_dims(constant))  # noqa: E731
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(make(x))
        builder.emit_func_output(out)
    return builder.get(), constant


CASES = [
    (Structure(8, 3, 4, 2), (6, 8, 3, 3), LayerSpec(4, (2, 2))),
    (Structure(12, 1, 6, 1), (5, 12), LayerSpec(6, (1, 1))),
]


@pytest.mark.parametrize("structure, shape, spec", CASES, ids=["conv", "linear"])
@pytest.mark.parametrize("tol", [None, 1e-3], ids=["default", "explicit"])
def test_residual_just_under_the_tolerance_is_rewritten_just_over_is_refused(
    structure, shape, spec, tol
):
    tolerance = FP32_TOLERANCE if tol is None else tol
    manifest = Manifest({"w": spec})

    under = weight_with_residual(structure, shape, 0.5 * tolerance)
    mod, constant = module_of(under)
    _, report = rewrite_structured_conv(mod, manifest, {constant: "w"}, tol=tol)
    (layer,) = report.rewritten
    assert layer.residual == pytest.approx(0.5 * tolerance, rel=0.02)

    over = weight_with_residual(structure, shape, 2 * tolerance)
    mod, constant = module_of(over)
    with pytest.raises(StructureMismatchError, match=f"> tolerance {tolerance:.1e}"):
        rewrite_structured_conv(mod, manifest, {constant: "w"}, tol=tol)
