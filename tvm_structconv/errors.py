"""The errors a user can cause (bad file, manifest, weights, target or plan), in one tuple.

The command line turns these into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""

from tvm_structconv.frontend import FrontendError
from tvm_structconv.manifest import ManifestError
from tvm_structconv.plan import PlanError
from tvm_structconv.targets import TargetError
from tvm_structconv.transform.structured_conv import StructureMismatchError

__all__ = ["USER_ERRORS"]

USER_ERRORS = (FrontendError, ManifestError, PlanError, TargetError, StructureMismatchError, OSError)
