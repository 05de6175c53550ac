"""The structured-conv rewrite's choice of the Winograd kernel: which NHWC convs get it, what
it emits (the transformed ``alpha`` as a constant) and what the report says; the target's
choice in :func:`~tvm_structconv.schedules.packing.conv_layout`.

Numerics of the op are in ``tests/schedules/test_winograd.py``; ResNet-18 through
``compile_model`` in ``tests/integration/test_winograd_models.py``.
"""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_structconv import winograd
from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.schedules.cpu.winograd import choose_winograd_tile
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.structure import Structure
from tvm_structconv.targets import make_target
from tvm_structconv.transform.structured_conv import rewrite_structured_conv

from relax_modules import calls, conv2d_module


def nhwc_conv(structure: Structure, out_channels: int, seed: int = 0, **attrs):
    """An NHWC conv (after ``ConvertLayout``) of a structured weight, its constant and ``alpha``."""
    alpha = np.random.default_rng(seed).standard_normal(structure.alpha_shape(out_channels))
    weight = structure.compose(alpha).astype("float32")
    constant = relax.const(weight)
    mod = conv2d_module((1, structure.in_channels, 9, 7), constant, **attrs)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    alpha = structure.decompose(weight.astype(np.float64)).astype("float32")
    return mod, constant, alpha


def rewrite(mod, constant, structure, tile_choice):
    spec = LayerSpec(structure.reduced_channels, structure.reduced_kernel_size)
    return rewrite_structured_conv(
        mod,
        Manifest({"w": spec}),
        {constant: "w"},
        block_size=lambda *_: 4,
        winograd_tile=tile_choice,
    )


def called_functions(mod) -> list:
    return [call.args[0].name_hint for call in calls(mod, "relax.call_tir")]


def test_stride_1_conv_of_all_channels_gets_the_chosen_winograd_tile():
    structure = Structure(8, 3, 8, 2)
    mod, constant, alpha = nhwc_conv(structure, 12, padding=1)
    asked = []

    def tile_choice(batch, out_height, out_width):
        asked.append((batch, out_height, out_width))
        return 4

    actual, report = rewrite(mod, constant, structure, tile_choice)
    assert asked == [(1, 9, 7)]
    assert called_functions(actual) == ["structured_winograd_conv2d"]
    (call,) = calls(actual, "relax.call_tir")
    transformed = call.args[1].fields[1].value.numpy()
    np.testing.assert_allclose(
        transformed, winograd.transform_alpha(alpha, 4, 4), rtol=1e-5, atol=1e-6
    )
    (layer,) = report.layers
    assert (layer.rewritten, layer.kernel) == (True, "winograd F(4,2)")
    assert report.format().splitlines()[1].endswith("rewritten (manifest), winograd F(4,2)")


@pytest.mark.parametrize(
    "structure, attrs",
    [
        (Structure(8, 3, 8, 2), dict(strides=2, padding=1)),
        (Structure(8, 3, 8, 2), dict(padding=1, dilation=2)),
        (Structure(8, 3, 4, 2), dict(padding=1)),  # c = C/2: a channel window too
        (Structure(8, 3, 8, 1), dict(padding=1)),  # n = 1
        (Structure(8, 3, 8, 2, groups=2), dict(padding=1, groups=2)),
    ],
)
def test_other_convs_keep_the_direct_kernel(structure, attrs):
    mod, constant, _ = nhwc_conv(structure, 8, **attrs)
    actual, report = rewrite(mod, constant, structure, lambda *_: 2)
    assert called_functions(actual) == ["structured_conv2d"]
    assert report.layers[0].kernel == "direct"


def test_a_layer_the_choice_declines_is_direct_and_no_choice_names_no_kernel():
    structure = Structure(8, 3, 8, 2)
    mod, constant, _ = nhwc_conv(structure, 8, padding=1)
    actual, report = rewrite(mod, constant, structure, lambda *_: None)
    assert called_functions(actual) == ["structured_conv2d"]
    assert report.layers[0].kernel == "direct"
    actual, report = rewrite(mod, constant, structure, None)
    assert called_functions(actual) == ["structured_conv2d"]
    assert report.layers[0].kernel is None
    assert report.format().splitlines()[1].endswith("rewritten (manifest)")


def test_x86_targets_choose_winograd_and_others_do_not():
    assert conv_layout(make_target("x86")).winograd_tile is choose_winograd_tile
    assert conv_layout(make_target("aarch64")).winograd_tile is None
    assert conv_layout(make_target("x86"), scheduled=False).winograd_tile is None
    assert conv_layout().winograd_tile is None
    assert conv_layout(tvm.target.Target({"kind": "cuda", "arch": "sm_80"})).winograd_tile is None
