"""RewriteOrdinaryConv end to end: an NHWC conv after ConvertLayout, rewritten, compiled and run
against torch. The IR tests of the pass are in ``tests/transform/test_ordinary_conv.py``."""

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from tvm_structconv.transform import RewriteOrdinaryConv

from relax_modules import conv2d_module as module

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
