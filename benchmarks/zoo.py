"""Coverage of real model families: torchvision's and timm's classifiers through the compiler.

For every family of :data:`tvm_structconv.zoo.FAMILIES` (or those named), every export path
(TorchScript ONNX, dynamo ONNX, ``.pt2``) and both variants (original, ``structurize``d with
``3x3:n=2,c=C``): export, import, compile for x86 and check against onnxruntime / torch; and
compile (and cross-link, when ``aarch64-linux-gnu-g++`` is installed) for aarch64. Each check
runs in its own process, so one model's crash or memory cannot take the others down.

    python benchmarks/zoo.py                       # everything, 224x224 (long: ~1 h on 2 cores)
    python benchmarks/zoo.py --families mobilenet_v3_small,ghostnet --size 96 --exporters pt2

Writes ``benchmarks/results/zoo-<cpu>.{md,json}`` (``--out`` moves them): the coverage table of
the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path
from typing import List

from tvm_structconv.zoo import EXPORTERS, FAMILIES, ZooResult, check, coverage_table


def _check_in_child(queue, kwargs) -> None:
    queue.put([dataclasses.asdict(result) for result in check(**kwargs)])


def run_isolated(timeout: float = 3600, **kwargs) -> List[ZooResult]:
    """:func:`check` in a fresh process; a crash of that process fails every build."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_check_in_child, args=(queue, kwargs))
    process.start()
    try:
        found = queue.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - the child died or hung
        process.kill()
        found = None
    process.join()
    if found is None:
        shape = (kwargs["batch"], 3, *kwargs["image_size"])
        return [
            ZooResult(
                kwargs["name"],
                kwargs["exporter"],
                target,
                structured,
                shape,
                stage="crashed",
                error=f"the checking process exited with code {process.exitcode}",
            )
            for target, structured in kwargs["builds"]
        ]
    return [
        ZooResult(**{**fields, "input_shape": tuple(fields["input_shape"])}) for fields in found
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated")
    parser.add_argument("--targets", default="x86,aarch64", help="comma-separated")
    parser.add_argument("--variants", default="original,structured", help="comma-separated")
    parser.add_argument("--size", default="224", help="input side, or HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--out", default=None, help="output stem (default benchmarks/results/zoo-<cpu>)"
    )
    args = parser.parse_args()

    import tvm

    height, _, width = args.size.partition("x")
    size = (int(height), int(width or height))
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"zoo-{cpu}"
    out.parent.mkdir(parents=True, exist_ok=True)
    cross = shutil.which("aarch64-linux-gnu-g++") is not None
    builds = [
        (target, variant == "structured")
        for target in args.targets.split(",")
        for variant in args.variants.split(",")
    ]
    results = []
    for family in args.families.split(","):
        side = (max(size[0], FAMILIES[family].min_size), max(size[1], FAMILIES[family].min_size))
        for exporter in args.exporters.split(","):
            found = run_isolated(
                name=family,
                exporter=exporter,
                builds=builds,
                image_size=side,
                batch=args.batch,
                link=cross,
            )
            for result in found:
                error = f"{result.max_rel_error:.1e}" if result.max_rel_error is not None else "-"
                variant = "structured" if result.structured else "original"
                print(
                    f"{family:<20} {exporter:<12} {variant:<10} {result.target:<8} "
                    f"{'ok' if result.ok else 'FAIL ' + result.stage:<14} err {error:<8} "
                    f"compile {result.seconds.get('compile', float('nan')):6.1f} s"
                    f"{'  ' + result.error if result.error else ''}",
                    flush=True,
                )
            results.extend(found)
    header = (
        f"Zoo coverage, {time.strftime('%Y-%m-%d')}, host CPU {cpu}, input "
        f"{args.batch}x3x{size[0]}x{size[1]} (Inception-v3 at least 75), random weights; "
        f"aarch64 builds {'cross-linked' if cross else 'compiled only (no cross compiler)'}"
        "; errors are relative to the output's largest magnitude, against onnxruntime "
        "(ONNX) or torch (.pt2).\n\n"
    )
    out.with_suffix(".md").write_text(header + coverage_table(results) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=1)
    )
    failed = [r for r in results if not r.ok]
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed; table: "
        f"{out.with_suffix('.md')}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
