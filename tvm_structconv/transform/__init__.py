"""Relax passes, one pass per module.

Each rewrite is a plain function that returns ``(module, report)`` (what it did, layer by
layer) and a module pass of the same name for a ``tvm.transform.Sequential``, which drops the
report. The tuning-database pass marks what it scheduled on the functions themselves
(:func:`tuned_functions`).
"""

from tvm_structconv.transform.apply_schedules import ApplySchedules
from tvm_structconv.transform.apply_tuning_database import (
    TUNED,
    ApplyTuningDatabase,
    tuned_functions,
)
from tvm_structconv.transform.expand_clip import ExpandClip
from tvm_structconv.transform.fold_batchnorm import (
    BatchNormFoldReport,
    FoldBatchNorm,
    fold_batchnorm,
)
from tvm_structconv.transform.merge_parallel_convs import (
    MergeParallelConvs,
    ParallelConvReport,
    merge_parallel_convs,
)
from tvm_structconv.transform.ordinary_conv import (
    OrdinaryConvReport,
    RewriteOrdinaryConv,
    rewrite_ordinary_conv,
)
from tvm_structconv.transform.sink_transposes import SinkTransposes, sink_transposes
from tvm_structconv.transform.structured_conv import (
    LayerReport,
    RewriteReport,
    RewriteStructuredConv,
    StructureMismatchError,
    rewrite_structured_conv,
)

__all__ = [
    "TUNED",
    "ApplySchedules",
    "ApplyTuningDatabase",
    "BatchNormFoldReport",
    "ExpandClip",
    "FoldBatchNorm",
    "LayerReport",
    "MergeParallelConvs",
    "OrdinaryConvReport",
    "ParallelConvReport",
    "RewriteOrdinaryConv",
    "RewriteReport",
    "RewriteStructuredConv",
    "SinkTransposes",
    "StructureMismatchError",
    "fold_batchnorm",
    "merge_parallel_convs",
    "rewrite_ordinary_conv",
    "rewrite_structured_conv",
    "sink_transposes",
    "tuned_functions",
]
