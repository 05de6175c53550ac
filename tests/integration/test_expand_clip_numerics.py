"""ExpandClip end to end: the expanded clip compiled and run against numpy's clip.
The IR tests of the pass are in ``tests/transform/test_expand_clip.py``."""

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.transform import ExpandClip

from relax_modules import clip_module


def test_values_are_those_of_clip_and_nhwc_planning_passes_through():
    mod = ExpandClip()(clip_module())
    x = np.linspace(-10, 10, 36, dtype="float32").reshape(1, 4, 3, 3)
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, np.clip(x, 0, 6))
