"""The errors a user can cause (bad file, manifest, weights, target, plan, tuning request,
missing tool or device), in one tuple.

The command line turns these into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""

from tvm_structconv.frontend import FrontendError
from tvm_structconv.manifest import ManifestError
from tvm_structconv.peers import PeerUnavailable
from tvm_structconv.plan import PlanError
from tvm_structconv.remote import RemoteError
from tvm_structconv.targets import TargetError
from tvm_structconv.toolchain import DeviceError, RunnerError, ToolchainError
from tvm_structconv.transform.structured_conv import StructureMismatchError
from tvm_structconv.tune import TuneError

__all__ = ["USER_ERRORS"]

USER_ERRORS = (FrontendError, ManifestError, PlanError, TargetError, StructureMismatchError,
               DeviceError, RunnerError, ToolchainError, PeerUnavailable, RemoteError, TuneError,
               OSError)
