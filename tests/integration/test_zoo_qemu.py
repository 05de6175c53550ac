"""Two families deployed to aarch64 and run under qemu: the structured build with the NEON
schedules (SE gates, hardswish, channel shuffles) against onnxruntime on the same input, at the
batch of 8 and the 48x64 input test_zoo_mobile.py checks them at on x86 (this is their aarch64
build of the zoo checks)."""

import pytest

from tvm_structconv.cli import main
from tvm_structconv.manifest import Manifest
from tvm_structconv.nn import structurize
from tvm_structconv.plan import Plan
from tvm_structconv.zoo import FAMILIES, create, export_model

from zoo_checks import MOBILE_BATCHED

pytestmark = [pytest.mark.slow, pytest.mark.needs_cross]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2"])
def test_structured_family_matches_onnxruntime_under_qemu(name, tmp_path, capsys):
    import torch

    model, manifest = structurize(create(name), Plan.parse(FAMILIES[name].plan))
    assert isinstance(manifest, Manifest) and manifest.layers
    shape = MOBILE_BATCHED[name]
    example = torch.randn(shape["batch"], 3, *shape["size"])
    path = export_model(model, example, manifest, tmp_path, name, "torchscript")
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
