"""Relax passes, one pass per module."""

from tvm_structconv.transform.fold_batchnorm import FoldBatchNorm
from tvm_structconv.transform.structured_conv import (
    LayerReport,
    RewriteReport,
    RewriteStructuredConv,
    StructureMismatchError,
)
