"""Assertions shared by the zoo tests (tests/integration/test_zoo_*.py)."""

from typing import Sequence

from tvm_structconv.zoo import DEFAULT_BUILDS, Build, ZooResult, check

#: Largest accepted error relative to the output's magnitude (the issue's bar).
RTOL = 1e-4

#: Mobile families checked at a batch of 8 and a non-square input instead of 1x3x32x32: x86 in
#: test_zoo_mobile.py, and their aarch64 structured build deployed and run under qemu in
#: test_zoo_qemu.py (so test_zoo_mobile.py does not compile that build once more).
MOBILE_BATCHED = {
    "shufflenet_v2": {"size": (48, 64), "batch": 8},
    "mobilenet_v3_small": {"size": (48, 64), "batch": 8},
}


def assert_family(
    name: str,
    exporter: str = "torchscript",
    size=(32, 32),
    batch: int = 1,
    builds: Sequence[Build] = DEFAULT_BUILDS,
) -> list:
    """Check one family's builds: every one compiles; x86 builds match the oracle within RTOL;
    structured builds rewrite exactly the layers the manifest records, and nothing else."""
    results = check(name, exporter, builds, image_size=size, batch=batch)
    assert [(r.target, r.structured) for r in results] == list(builds)
    for result in results:
        _assert_result(result)
    return results


def _assert_result(result: ZooResult) -> None:
    label = (
        f"{result.family} via {result.exporter}, "
        f"{'structured' if result.structured else 'original'} for {result.target}"
    )
    assert result.ok, f"{label}: fails in {result.stage}: {result.error}"
    if result.target == "x86":
        assert result.max_rel_error is not None and result.max_rel_error < RTOL, (
            f"{label}: max relative error {result.max_rel_error:.2e}"
        )
    if result.structured:
        assert result.recorded > 0, f"{label}: the plan structured no layer"
        assert result.rewritten == result.recorded, (
            f"{label}: {result.rewritten} of {result.recorded} recorded layers rewritten"
        )
        assert result.macs_after < result.macs_before
        # every layer left alone is one the manifest does not name (nor, where an exporter
        # renamed weights, one whose value has a structure)
        assert set(result.skipped) <= {
            "no recorded structure",
            "no recorded structure and none detected",
        }, result.skipped
