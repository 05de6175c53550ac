"""Shared hypothesis settings: property tests stay deterministic and fast on 2 cores."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "structconv",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("structconv")


import os  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

#: What the ``needs_cross`` tests run: the aarch64 cross compiler and the user-mode emulator.
CROSS_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64-static")
#: The one command that installs them (Debian / Ubuntu, as root).
CROSS_INSTALL = (
    "apt-get update && apt-get install -y gcc-aarch64-linux-gnu "
    "g++-aarch64-linux-gnu qemu-user-static"
)


def _in_ci() -> bool:
    """``$CI`` is set (``true``, ``1``, …; not empty, ``0`` or ``false``), as ``.ci/run`` does."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing_cross_tools() -> str:
    """Why the ``needs_cross`` tests cannot run here, or ``""`` when they can."""
    missing = [tool for tool in CROSS_TOOLS if shutil.which(tool) is None]
    return f"needs {' and '.join(missing)}; install with: {CROSS_INSTALL}" if missing else ""


def pytest_collection_modifyitems(config, items):
    """Skip the ``needs_cross`` tests where the aarch64 tools are missing (each one named).

    In CI (``$CI`` set, as ``.ci/run`` does) they are not skipped:
    :func:`pytest_runtest_setup` fails them instead.
    """
    reason = _missing_cross_tools()
    if not reason or _in_ci():
        return
    for item in items:
        if item.get_closest_marker("needs_cross") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """In CI a missing aarch64 tool is a broken CI machine: fail the ``needs_cross`` test."""
    if item.get_closest_marker("needs_cross") is None or not _in_ci():
        return
    reason = _missing_cross_tools()
    if reason:
        pytest.fail(f"CI installs the aarch64 tools, but this test {reason}", pytrace=False)


@pytest.fixture(scope="session")
def exported_small_net(tmp_path_factory):
    """``small_nets.structured_net`` exported to ONNX (manifest inside) and .pt2 (sidecar).

    A dict with the paths ``"onnx"``, ``"pt2"``, their ``"folder"`` and the input ``"x"``.
    """
    from tvm_structconv.export import export

    from small_nets import structured_net

    folder = tmp_path_factory.mktemp("small_net")
    model, x, manifest = structured_net()
    paths = {"onnx": folder / "net.onnx", "pt2": folder / "net.pt2"}
    for path in paths.values():
        export(model, path, x, manifest)
    return {**paths, "folder": folder, "x": x}


@pytest.fixture(autouse=True)
def user_tuning_logs(tmp_path_factory, monkeypatch):
    """Every test's user tuning logs (``$STRUCTCONV_TUNING_LOGS``) are in a temp folder: no test
    writes into the tree or the real home."""
    root = tmp_path_factory.getbasetemp() / "user_tuning_logs"
    monkeypatch.setenv("STRUCTCONV_TUNING_LOGS", str(root))
    return root
