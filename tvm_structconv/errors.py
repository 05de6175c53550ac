"""The errors a user can cause (bad file, manifest, weights, target, plan, tuning request,
missing tool or device), in one tuple.

The command line turns these into a one-line message and a non-zero exit. A
:class:`~tvm_structconv.build.CompileError` is the compiler failing on a model that imported
(a bug to report); its line names the model and the stage. Anything else is a bug too: the
command line says so in one line, and ``--debug`` shows the traceback.
"""

from tvm_structconv.build import CompileError
from tvm_structconv.frontend import FrontendError
from tvm_structconv.manifest import ManifestError
from tvm_structconv.peers import PeerUnavailable
from tvm_structconv.plan import PlanError
from tvm_structconv.remote import RemoteError
from tvm_structconv.targets import TargetError
from tvm_structconv.toolchain import DeviceError, RunnerError, ToolchainError
from tvm_structconv.transform.structured_conv import StructureMismatchError
from tvm_structconv.tune import TuneError
from tvm_structconv.tuning_logs import TuningLogError

__all__ = ["USER_ERRORS"]

USER_ERRORS = (
    FrontendError,
    ManifestError,
    PlanError,
    TargetError,
    StructureMismatchError,
    DeviceError,
    RunnerError,
    ToolchainError,
    PeerUnavailable,
    RemoteError,
    TuneError,
    TuningLogError,
    CompileError,
    OSError,
)
