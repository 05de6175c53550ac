"""Two families deployed to aarch64 and run under qemu: the structured build with the NEON
schedules (SE gates, hardswish, channel shuffles) against onnxruntime on the same input."""

import pytest

from tvm_structconv.cli import main
from tvm_structconv.manifest import Manifest
from tvm_structconv.nn import structurize
from tvm_structconv.plan import Plan
from tvm_structconv.zoo import FAMILIES, create, export_model

pytestmark = [pytest.mark.slow, pytest.mark.needs_cross]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2"])
def test_structured_family_matches_onnxruntime_under_qemu(name, tmp_path, capsys):
    import torch

    model, manifest = structurize(create(name), Plan.parse(FAMILIES[name].plan))
    assert isinstance(manifest, Manifest) and manifest.layers
    path = export_model(model, torch.randn(1, 3, 32, 32), manifest, tmp_path, name, "torchscript")
    status = main(
        [
            "deploy",
            str(path),
            "--target",
            "aarch64",
            "-o",
            str(tmp_path / "bundle"),
            "--check",
            "--repeat",
            "1",
            "--rtol",
            "1e-4",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "under qemu-aarch64-static" in out and "OK: max error" in out
    rewritten = f"{len(manifest.layers)} of "
    assert rewritten in out, out
