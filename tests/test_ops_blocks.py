"""How schedule rules find the fused conv in a PrimFunc: ``find_structured_block``,
``schedule_of_conv`` and ``stages_around`` (the pool stages before it, the epilogue after)."""

import tvm
from tvm import relax, te, topi

from tvm_structconv import ops
from tvm_structconv.structure import Structure


def fused_func(structure: Structure, epilogue: bool):
    """A PrimFunc of pad → pool stages → the NHWC conv (→ bias add → ReLU)."""
    data = te.placeholder((1, 6, 6, structure.in_channels), name="data")
    c, (nh, nw) = structure.group_reduced_channels, structure.reduced_kernel_size
    alpha = te.placeholder((2, nh, nw, c, 4), name="alpha")
    out = ops.structured_conv2d_nhwc(data, alpha, structure, padding=(1, 1, 1, 1))
    tensors = [data, alpha]
    if epilogue:
        bias = te.placeholder((8,), name="bias")
        out = topi.nn.relu(te.compute(out.shape, lambda *i: out(*i) + bias[i[-1]], name="add"))
        tensors.append(bias)
    return te.create_prim_func([*tensors, out])


def names(sch, blocks):
    return [sch.get(block).name_hint for block in blocks]


def test_the_conv_block_and_the_stages_around_it():
    func = fused_func(Structure(4, 3, 2, 2), epilogue=True)
    sch, conv = ops.schedule_of_conv(func)
    assert sch.get(conv).name_hint == "structured_conv2d"
    assert sch.get(conv).annotations["schedule_rule"] == ops.SCHEDULE_RULE
    before, after = ops.stages_around(sch, conv)
    assert names(sch, before) == [
        "pad",
        "pool_channel_2",
        "pool_channel",
        "pool_width",
        "pool_height",
    ]
    assert names(sch, after) == ["add", "compute"]
    # the same block, found from the function or from a schedule of it
    assert ops.find_structured_block(func) is not None
    assert sch.get(ops.find_structured_block(sch)).same_as(sch.get(conv))


def test_the_trivial_structure_has_only_the_padding_before_and_nothing_after():
    sch, conv = ops.schedule_of_conv(fused_func(Structure(4, 3, 4, 3), epilogue=False))
    before, after = ops.stages_around(sch, conv)
    assert (names(sch, before), after) == (["pad"], [])


def test_functions_without_the_conv_are_answered_none():
    a = te.placeholder((4, 4), name="a")
    elementwise = te.create_prim_func([a, te.compute((4, 4), lambda i, j: a[i, j] + 1)])
    assert ops.find_structured_block(elementwise) is None
    assert ops.schedule_of_conv(elementwise) is None
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    relax_function = relax.Function([x], x)
    assert ops.schedule_of_conv(relax_function) is None
    assert isinstance(elementwise, tvm.tirx.PrimFunc)


def test_a_strided_1x1_pools_a_subsampled_input():
    """The stage is named ``subsample``: the CPU schedule inlines stages by that name."""
    structure = Structure(8, 1, 4, 1)
    data = te.placeholder((1, 7, 7, 8), name="data")
    alpha = te.placeholder((2, 1, 1, 4, 4), name="alpha")
    out = ops.structured_conv2d_nhwc(data, alpha, structure, (2, 1))
    sch, conv = ops.schedule_of_conv(te.create_prim_func([data, alpha, out]))
    before, _ = ops.stages_around(sch, conv)
    assert names(sch, before) == ["subsample", "pool_channel_2", "pool_channel_4", "pool_channel"]
    assert [int(d) for d in sch.get(before[0]).writes[0].source.shape] == [1, 4, 7, 8]
    # unstrided, the whole input is pooled: no subsample stage
    out = ops.structured_conv2d_nhwc(data, alpha, structure, (1, 1))
    sch, conv = ops.schedule_of_conv(te.create_prim_func([data, alpha, out]))
    assert names(sch, ops.stages_around(sch, conv)[0])[0] == "pool_channel_2"
