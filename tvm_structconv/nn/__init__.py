"""The training side: structured layers, the structural regularizer and decomposition.

Never imports TVM. ``functional`` holds the reference ops (sum-pool, then the reduced conv).
"""

from tvm_structconv.nn import functional
from tvm_structconv.nn.convert import structurize, to_ordinary
from tvm_structconv.nn.layers import (
    StructuredConv2d,
    StructuredLinear,
    precondition_alpha_gradients,
    structured_parameter_groups,
)
from tvm_structconv.nn.regularizer import StructuralRegularizer

__all__ = [
    "functional",
    "StructuredConv2d",
    "StructuredLinear",
    "StructuralRegularizer",
    "structured_parameter_groups",
    "precondition_alpha_gradients",
    "structurize",
    "to_ordinary",
]
