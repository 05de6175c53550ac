"""Relax passes, one pass per module."""

from tvm_structconv.transform.apply_schedules import ApplySchedules
from tvm_structconv.transform.apply_tuning_database import ApplyTuningDatabase
from tvm_structconv.transform.expand_clip import ExpandClip
from tvm_structconv.transform.fold_batchnorm import FoldBatchNorm
from tvm_structconv.transform.ordinary_conv import RewriteOrdinaryConv
from tvm_structconv.transform.structured_conv import (
    LayerReport,
    RewriteReport,
    RewriteStructuredConv,
    StructureMismatchError,
)

__all__ = [
    "ApplySchedules",
    "ApplyTuningDatabase",
    "ExpandClip",
    "FoldBatchNorm",
    "LayerReport",
    "RewriteOrdinaryConv",
    "RewriteReport",
    "RewriteStructuredConv",
    "StructureMismatchError",
]
