"""The torch oracle of the fused conv in NHWC, random layer cases and the host target, for the
CPU schedule tests."""

import numpy as np
import torch
import torch.nn.functional as F
import tvm

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)


def oracle(x, alpha, structure, stride, padding, dilation, bias=None):
    """NHWC result of torch's conv2d with the composed kernel (padding: top, left, bottom,
    right)."""
    top, left, bottom, right = padding
    padded = F.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    weight = structure.compose(torch.from_numpy(alpha).double())
    bias = None if bias is None else torch.from_numpy(bias).double()
    out = F.conv2d(padded, weight, bias, stride=stride, dilation=dilation, groups=structure.groups)
    return out.numpy().transpose(0, 2, 3, 1)


def random_case(structure, out_channels, size, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, structure.in_channels, *size)).astype("float32")
    alpha = rng.standard_normal(structure.alpha_shape(out_channels)).astype("float32")
    return x, alpha
