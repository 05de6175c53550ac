"""The generic CPU rules: pools, global pooling, dense and elementwise ops scheduled and exact."""

import numpy as np
import torch
import tvm
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tvm import relax, s_tir, te, topi

from tvm_structconv.build import scheduled_pipeline
from tvm_structconv.schedules.cpu.injective import Injective, concat_boundaries
from tvm_structconv.schedules.cpu.reduction import ChannelReduction
from tvm_structconv.schedules.target_info import vector_lanes

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)


def run_scheduled(build, inputs):
    """Build a one-function Relax module, compile it with the scheduled pipeline, run it."""
    params = [
        relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs)
    ]
    builder = relax.BlockBuilder()
    with builder.function("main", params):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(build(*params)))
        builder.emit_func_output(out)
    mod = builder.get()
    lowered = scheduled_pipeline(HOST)(mod)
    kernels = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    executable = tvm.compile(mod, target=HOST, relax_pipeline=scheduled_pipeline(HOST))
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](
        *(tvm.runtime.tensor(a) for a in inputs)
    )
    return result.numpy(), kernels


def test_nhwc_max_pool_is_scheduled_and_exact():
    x = np.random.default_rng(0).standard_normal((1, 30, 30, 64)).astype("float32")
    got, kernels = run_scheduled(lambda v: relax.op.nn.max_pool2d(v, 3, 2, 1, layout="NHWC"), [x])
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    expected = np.max(
        [padded[:, i : i + 29 : 2, j : j + 29 : 2] for i in range(3) for j in range(3)], axis=0
    )
    np.testing.assert_array_equal(got, expected)
    assert all(k.attrs["tirx.is_scheduled"] for k in kernels)
    assert "T.parallel" in kernels[0].script() and "T.vectorized" in kernels[0].script()


def test_global_average_pool_and_dense_with_bias():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 7, 7, 48)).astype("float32")
    weight = rng.standard_normal((48, 1000)).astype("float32")
    bias = rng.standard_normal(1000).astype("float32")

    def build(v):
        pooled = relax.op.reshape(relax.op.mean(v, axis=[1, 2], keepdims=True), (1, 48))
        return relax.op.add(relax.op.matmul(pooled, relax.const(weight)), relax.const(bias))

    got, kernels = run_scheduled(build, [x])
    expected = x.astype(np.float64).mean(axis=(1, 2)) @ weight + bias
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert all(k.attrs.get("tirx.is_scheduled") for k in kernels)


def test_elementwise_and_transpose():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 20, 20)).astype("float32")
    got, kernels = run_scheduled(
        lambda v: relax.op.nn.relu(relax.op.permute_dims(v, [0, 2, 3, 1])), [x]
    )
    np.testing.assert_array_equal(got, np.maximum(x.transpose(0, 2, 3, 1), 0))
    assert all(k.attrs["tirx.is_scheduled"] for k in kernels)


def test_rules_answer_none_for_other_kinds():
    a = te.placeholder((8, 8), name="a")
    k = te.reduce_axis((0, 8), name="k")
    row_sum = te.compute((8,), lambda i: te.sum(a[i, k], axis=k), name="row_sum")  # inner reduction
    func = te.create_prim_func([a, row_sum])
    assert ChannelReduction().apply(func, HOST, False) is None
    assert Injective().apply(func, HOST, False) is None
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    elementwise = te.create_prim_func([a, te.compute((8, 8), lambda i, j: a[i, j] * 2)])
    assert Injective().apply(elementwise, cuda, False) is None
    assert isinstance(Injective().apply(elementwise, HOST, False), s_tir.Schedule)


def test_dense_with_fewer_outputs_than_a_vector():
    """5 outputs: no vector width divides them; the schedule must not vectorize a shared loop."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 72)).astype("float32")
    weight = rng.standard_normal((72, 5)).astype("float32")
    bias = rng.standard_normal(5).astype("float32")
    got, _ = run_scheduled(
        lambda v: relax.op.add(relax.op.matmul(v, relax.const(weight)), relax.const(bias)), [x]
    )
    np.testing.assert_allclose(got, x.astype(np.float64) @ weight + bias, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 40) | st.sampled_from([64, 192, 528]),
    size=st.integers(3, 30),
    kernel=st.sampled_from([2, 3, 5]),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    ceil_mode=st.booleans(),
)
def test_padded_max_pool_reads_the_input_in_place_per_output_row_and_is_exact(
    channels, size, kernel, stride, padding, ceil_mode
):
    """No padded copy of the input (a copy per output row was 2-3x slower): the window reads
    the input itself; (batch, output row) in parallel; a vector of 1, 2 or 4 registers (a
    conditional read of 3 was 3-4x slower)."""
    padding = min(padding, kernel // 2)  # what torch accepts
    assume(size + 2 * padding >= kernel)
    x = te.placeholder((1, size, size, channels), name="x")
    y = topi.nn.pool2d(
        x, (kernel,) * 2, (stride,) * 2, (1, 1), (padding,) * 4, "max", ceil_mode, "NHWC"
    )
    sch = ChannelReduction().apply(te.create_prim_func([x, y]), HOST, False)
    assert sch is not None
    update = sch.get_sblock("pool_max_update")
    reads = [region.source.name for region in sch.get(update).reads]
    assert "x" in reads and not any(name.startswith("pad") for name in reads)
    assert 'sblock("pad' not in sch.mod.script()  # no stage of its own either
    loops = sch.get_loops(update)
    rows = int(y.shape[1])
    if rows > 1 and sch.get(loops[0]).kind == tvm.tirx.ForKind.PARALLEL:
        assert int(sch.get(loops[0]).extent) == rows  # (batch 1, output rows)
    vector = sch.get(loops[-1])
    lanes = vector_lanes(HOST)
    width = int(vector.extent)
    assert channels % width == 0
    assert width <= lanes or (width // lanes) in (1, 2, 4)
    assert width == 1 or vector.kind == tvm.tirx.ForKind.VECTORIZED
    if channels % lanes == 0:
        assert width >= lanes
    data = np.random.default_rng(1).standard_normal((1, size, size, channels)).astype("float32")
    expected = torch.nn.functional.max_pool2d(
        torch.from_numpy(data).permute(0, 3, 1, 2), kernel, stride, padding, ceil_mode=ceil_mode
    ).permute(0, 2, 3, 1)
    result = tvm.runtime.tensor(np.zeros(tuple(expected.shape), "float32"))
    tvm.compile(sch.mod, target=HOST)(tvm.runtime.tensor(data), result)
    np.testing.assert_array_equal(result.numpy(), expected.numpy())


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.integers(1, 40) | st.sampled_from([16, 32, 64, 128]), min_size=2, max_size=5),
    st.integers(1, 6),
)
def test_channel_concat_is_partitioned_per_input_and_exact(channels, width):
    """A concat along NHWC channels + an elementwise op: where whole vectors fit each input,
    one loop of vectors per input, and exact either way."""
    inputs = [te.placeholder((1, 3, width, c), name=f"x{i}") for i, c in enumerate(channels)]
    joined = topi.concatenate(inputs, axis=3)
    out = te.compute(joined.shape, lambda *i: te.max(joined(*i), 0.0), name="relu")
    sch = Injective().apply(te.create_prim_func([*inputs, out]), HOST, False)
    assert sch is not None
    boundaries = concat_boundaries_of(inputs)
    assert boundaries == list(np.cumsum(channels)[:-1])
    lanes = vector_lanes(HOST)
    if all(c % lanes == 0 for c in channels):  # a vector loop inside each input
        script = sch.mod.script()
        assert script.count("_partition") == len(channels)
        assert script.count("T.vectorized(") == len(channels)  # a vector loop in each part
    rng = np.random.default_rng(width)
    data = [rng.standard_normal((1, 3, width, c)).astype("float32") for c in channels]
    result = tvm.runtime.tensor(np.zeros((1, 3, width, sum(channels)), "float32"))
    tvm.compile(sch.mod, target=HOST)(*(tvm.runtime.tensor(d) for d in data), result)
    np.testing.assert_array_equal(result.numpy(), np.maximum(np.concatenate(data, axis=3), 0))


def concat_boundaries_of(inputs):
    joined = topi.concatenate(inputs, axis=3)
    sch = s_tir.Schedule(te.create_prim_func([*inputs, joined]))
    return concat_boundaries(sch, sch.get_sblock("T_concat"))
