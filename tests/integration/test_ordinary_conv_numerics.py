"""RewriteOrdinaryConv end to end: an NHWC conv after ConvertLayout, rewritten, compiled and run
against torch. The IR tests of the pass are in ``tests/transform/test_ordinary_conv.py``."""

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from tvm_structconv.build import scheduled_pipeline
from tvm_structconv.transform import RewriteOrdinaryConv
from tvm_structconv.transform.conv_call import NCHW_INPUT_MAX_CHANNELS

from relax_modules import calls
from relax_modules import conv2d_module as module
from strategies import conv_geometries

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)

TARGET = tvm.target.Target({"kind": "llvm"})


def test_nhwc_conv_after_convert_layout_is_packed_and_exact():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 3, 3, 2)).astype("float32")
    x = rng.standard_normal((1, 3, 9, 7)).astype("float32")
    mod = module(x.shape, relax.const(weight), strides=2, padding=(1, 0, 2, 1), dilation=1)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    rewritten = RewriteOrdinaryConv(lambda out_channels, groups, width: 4)(mod)
    text = rewritten.script()
    assert "R.nn.conv2d" not in text and "structured_conv2d" in text
    executable = tvm.compile(rewritten, target=TARGET)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    expected = F.conv2d(
        F.pad(torch.from_numpy(x), (0, 1, 1, 2)), torch.from_numpy(weight), stride=2
    )
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 6), st.sampled_from([3, 8, 16]), conv_geometries(), st.integers(0, 99))
def test_image_input_is_read_in_its_nchw_layout_by_the_scheduled_conv(
    channels, out_channels, geometry, seed
):
    """A few-channel NCHW input (an image) is read by the conv's padding stage: the transpose
    ConvertLayout puts before the first conv is gone; wider inputs keep it."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, channels, 3, 3)).astype("float32")
    x = rng.standard_normal((1, channels, *geometry.input_size((3, 3)))).astype("float32")
    mod = module(
        x.shape,
        relax.const(weight),
        strides=geometry.stride,
        padding=geometry.padding,
        dilation=geometry.dilation,
    )
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    rewritten = RewriteOrdinaryConv(lambda out_channels, groups, width: 8)(mod)
    transposes = calls(rewritten, "relax.permute_dims")
    # the output goes back to NCHW; the input's transpose only when too wide to read in place
    assert len(transposes) == (1 if channels <= NCHW_INPUT_MAX_CHANNELS else 2)
    executable = tvm.compile(rewritten, target=HOST, relax_pipeline=scheduled_pipeline(HOST))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    top, left, bottom, right = geometry.padding
    expected = F.conv2d(
        F.pad(torch.from_numpy(x).double(), (left, right, top, bottom)),
        torch.from_numpy(weight).double(),
        stride=geometry.stride,
        dilation=geometry.dilation,
    )
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
