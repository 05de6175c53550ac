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


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def exported_small_net(tmp_path_factory):
    """``small_nets.structured_net`` exported to ONNX (manifest inside) and .pt2 (sidecar).

    A dict with the paths ``"onnx"``, ``"pt2"``, their ``"folder"`` and the input ``"x"``.
    """
    from small_nets import structured_net
    from tvm_structconv.export import export

    folder = tmp_path_factory.mktemp("small_net")
    model, x, manifest = structured_net()
    paths = {"onnx": folder / "net.onnx", "pt2": folder / "net.pt2"}
    for path in paths.values():
        export(model, path, x, manifest)
    return {**paths, "folder": folder, "x": x}
