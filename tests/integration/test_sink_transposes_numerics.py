"""sink_transposes end to end: random chains of transposes and elementwise ops (constants of
every broadcast rank, a second permuted input), compiled and run, against numpy."""

import numpy as np
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from tvm_structconv.transform import sink_transposes

BINARY = {"add": np.add, "multiply": np.multiply, "maximum": np.maximum}
UNARY = {"relu": lambda a: np.maximum(a, 0), "sigmoid": lambda a: 1 / (1 + np.exp(-a))}


@st.composite
def chains(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    axes = draw(st.permutations(range(rank)))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(BINARY) + sorted(UNARY) + ["residual"]),
                st.integers(0, rank),  # rank of the constant operand
            ),
            min_size=1,
            max_size=5,
        )
    )
    back = draw(st.booleans())
    return shape, list(axes), steps, back


@settings(max_examples=25, deadline=None)
@given(chains(), st.integers(0, 2**31 - 1))
def test_moved_transposes_compute_the_same(chain, seed):
    shape, axes, steps, back = chain
    rng = np.random.default_rng(seed)
    x_value = rng.standard_normal(shape).astype("float32")
    r_value = rng.standard_normal(shape).astype("float32")
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    r = relax.Var("r", relax.TensorType(shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x, r]):
        with builder.dataflow():
            value = builder.emit(relax.op.permute_dims(x, axes))
            expected = x_value.transpose(axes)
            for op, constant_rank in steps:
                if op in UNARY:
                    value = (
                        builder.emit(relax.op.nn.relu(value))
                        if op == "relu"
                        else (builder.emit(relax.op.sigmoid(value)))
                    )
                    expected = UNARY[op](expected)
                elif op == "residual":
                    permuted = builder.emit(relax.op.permute_dims(r, axes))
                    value = builder.emit(relax.op.add(value, permuted))
                    expected = expected + r_value.transpose(axes)
                else:
                    constant_shape = expected.shape[len(expected.shape) - constant_rank :]
                    constant = rng.standard_normal(constant_shape).astype("float32")
                    value = builder.emit(getattr(relax.op, op)(value, relax.const(constant)))
                    expected = BINARY[op](expected, constant)
            if back:
                value = builder.emit(relax.op.permute_dims(value, list(np.argsort(axes))))
                expected = expected.transpose(np.argsort(axes))
            out = builder.emit_output(value)
        builder.emit_func_output(out)
    moved = sink_transposes(builder.get())
    if back:  # the transposes cancel
        assert "permute_dims" not in moved.script()
    executable = tvm.compile(moved, target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x_value), tvm.runtime.tensor(r_value)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
