"""One-thread time of the Winograd structured conv against the direct structured kernel.

For ResNet-18's stride-1 3×3 shapes (``c = C``, ``n = 2``, batch 1, NHWC float32) it builds
the direct fused kernel (:func:`tvm_structconv.ops.structured_conv2d_nhwc` with the hand
schedule of :mod:`tvm_structconv.schedules.cpu.conv`) and the Winograd one
(:func:`tvm_structconv.winograd.winograd_structured_conv2d_nhwc`, F(m, 2) for each ``--tiles``,
scheduled by :mod:`tvm_structconv.schedules.cpu.winograd`), both with the same epilogue (bias,
residual add, ReLU), checks every kernel against torch's dense 3×3 conv (float64) and times
them alternating call by call on one thread, each summarised by its minimum.

    TVM_NUM_THREADS=1 taskset -c 0 python benchmarks/winograd_layers.py --calls 200

Writes ``benchmarks/results/winograd_layers-<cpu>.{md,json}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before TVM starts its thread pool

import numpy as np  # noqa: E402

from tvm_structconv.timing import interleaved_samples  # noqa: E402  (imports no TVM)

#: (channels, height = width) of ResNet-18's stride-1 3×3 convs.
SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))
RESULTS = Path(__file__).parent / "results"


def dense_kernel(alpha: np.ndarray) -> np.ndarray:
    """The structured 3×3 kernel ``W`` (OIHW) of a ``c = C`` 2×2 ``alpha``: ``alpha`` ∗ ones."""
    out_channels, channels, _, _ = alpha.shape
    weight = np.zeros((out_channels, channels, 3, 3), np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            weight[:, :, dy : dy + 2, dx : dx + 2] += alpha
    return weight


def reference(data: np.ndarray, alpha: np.ndarray, bias: np.ndarray, residual: np.ndarray):
    """``relu(conv2d(data, W, padding=1) + bias + residual)`` by torch in float64, NHWC."""
    import torch

    out = torch.nn.functional.conv2d(
        torch.from_numpy(data.astype(np.float64)).permute(0, 3, 1, 2),
        torch.from_numpy(dense_kernel(alpha.astype(np.float64))),
        torch.from_numpy(bias.astype(np.float64)),
        padding=1,
    ).permute(0, 2, 3, 1)
    return torch.relu(out + torch.from_numpy(residual.astype(np.float64))).numpy()


def _epilogue(conv, bias, residual):
    from tvm import topi

    return topi.nn.relu(topi.add(topi.add(conv, bias), residual))


def build_direct(channels: int, size: int, alpha: np.ndarray, target) -> Tuple[Callable, list]:
    """The direct structured kernel with the epilogue: ``(function, constant arguments)``."""
    import tvm
    from tvm import te

    from tvm_structconv import ops
    from tvm_structconv.schedules.cpu.conv import StructuredConv2dRule
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.structure import Structure

    block = conv_layout(target).block_size(channels, 1, size)
    data = te.placeholder((1, size, size, channels), name="data")
    packed = te.placeholder((channels // block, 2, 2, channels, block), name="alpha")
    bias = te.placeholder((channels,), name="bias")
    residual = te.placeholder((1, size, size, channels), name="residual")
    conv = ops.structured_conv2d_nhwc(
        data, packed, Structure(channels, 3, channels, 2), (1, 1), (1, 1, 1, 1)
    )
    out = _epilogue(conv, bias, residual)
    func = te.create_prim_func([data, packed, bias, residual, out])
    sch = StructuredConv2dRule().apply(func, target, False)
    return tvm.compile(sch.mod, target=target)["main"], [ops.pack_alpha(alpha, block)]


def build_winograd(
    channels: int, size: int, alpha: np.ndarray, tile: int, target
) -> Tuple[Callable, list]:
    """The Winograd F(``tile``, 2) kernel with the epilogue: ``(function, constant arguments)``."""
    import tvm
    from tvm import te

    from tvm_structconv.schedules.cpu.winograd import WinogradRule
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.winograd import transform_alpha, winograd_structured_conv2d_nhwc

    block = conv_layout(target).block_size(channels, 1, size)
    transformed = transform_alpha(alpha, tile, block)
    data = te.placeholder((1, size, size, channels), name="data")
    u = te.placeholder(transformed.shape, name="transformed_alpha")
    bias = te.placeholder((channels,), name="bias")
    residual = te.placeholder((1, size, size, channels), name="residual")
    conv = winograd_structured_conv2d_nhwc(data, u, channels, (1, 1, 1, 1))
    out = _epilogue(conv, bias, residual)
    func = te.create_prim_func([data, u, bias, residual, out])
    sch = WinogradRule().apply(func, target, False)
    if sch is None:
        raise RuntimeError("the Winograd rule declined the function")
    return tvm.compile(sch.mod, target=target)["main"], [transformed]


def measure_shape(
    channels: int, size: int, tiles: Sequence[int], calls: int, target
) -> Dict[str, object]:
    """Build, check and time the direct and Winograd kernels of one shape."""
    import tvm

    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, size, size, channels)).astype("float32")
    alpha = (rng.standard_normal((channels, channels, 2, 2)) / (2 * channels**0.5)).astype(
        "float32"
    )
    bias = rng.standard_normal(channels).astype("float32")
    residual = rng.standard_normal((1, size, size, channels)).astype("float32")
    expected = reference(data, alpha, bias, residual)
    kernels = {"direct": build_direct(channels, size, alpha, target)}
    for tile in tiles:
        kernels[f"winograd F({tile},2)"] = build_winograd(channels, size, alpha, tile, target)
    device = tvm.cpu()
    runs, errors = {}, {}
    for name, (func, constants) in kernels.items():
        out = tvm.runtime.tensor(np.zeros(expected.shape, "float32"), device)
        args = [tvm.runtime.tensor(a, device) for a in (data, *constants, bias, residual)] + [out]
        func(*args)
        errors[name] = float(np.abs(out.numpy() - expected).max() / np.abs(expected).max())
        runs[name] = (func, args)
    times = interleaved_samples(
        {name: functools.partial(func, *args) for name, (func, args) in runs.items()},
        calls,
        warmup=0,
    )
    best = {name: min(values) for name, values in times.items()}
    return {
        "channels": channels,
        "size": size,
        "min_ms": best,
        "median_ms": {name: float(np.median(values)) for name, values in times.items()},
        "max_rel_error": errors,
        "direct_over": {name: best["direct"] / value for name, value in best.items()},
    }


def markdown(rows: List[dict], header: str) -> str:
    """The results as a markdown table: minimum ms, direct / kernel, max relative error."""
    names = list(rows[0]["min_ms"])
    lines = [
        header,
        "",
        "| shape | "
        + " | ".join(f"{n} ms" for n in names)
        + " | "
        + " | ".join(f"direct / {n}" for n in names[1:])
        + " | "
        + " | ".join(f"{n} max rel. error" for n in names)
        + " |",
        "|---" * (1 + 2 * len(names) + len(names) - 1) + "|",
    ]
    for row in rows:
        shape = f"{row['channels']}->{row['channels']} @{row['size']}²"
        lines.append(
            f"| {shape} | "
            + " | ".join(f"{row['min_ms'][n]:.3f}" for n in names)
            + " | "
            + " | ".join(f"{row['direct_over'][n]:.2f}x" for n in names[1:])
            + " | "
            + " | ".join(f"{row['max_rel_error'][n]:.1e}" for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse the arguments, measure every shape, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each kernel")
    parser.add_argument("--tiles", default="2,4,6", help="Winograd output tile sizes m")
    parser.add_argument("--shapes", default="", help="channels@size,... (default ResNet-18's)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import tvm

    from tvm_structconv.targets import make_target

    target = make_target("x86")
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    tiles = [int(t) for t in args.tiles.split(",")]
    shapes = SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(v) for v in s.split("@")) for s in args.shapes.split(","))
    rows = []
    for channels, size in shapes:
        row = measure_shape(channels, size, tiles, args.calls, target)
        rows.append(row)
        ratios = ", ".join(f"{n} {v:.2f}x" for n, v in row["direct_over"].items() if n != "direct")
        errors = ", ".join(f"{n} {v:.1e}" for n, v in row["max_rel_error"].items())
        print(
            f"{channels}->{channels} @{size}: direct {row['min_ms']['direct']:.3f} ms; "
            f"direct / winograd: {ratios}; max rel. error: {errors}",
            flush=True,
        )
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    header = (
        f"Winograd vs direct structured conv, {time.strftime('%Y-%m-%d %H:%M')} UTC, host CPU "
        f"{cpu}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, batch 1, fp32 NHWC, "
        f"epilogue bias + residual add + ReLU; kernels alternate call by call, {args.calls} "
        f"calls each; minimum ms; load average at end {load}. Above 1: Winograd "
        "faster. Errors: max |out − torch float64| / max |torch|."
    )
    text = markdown(rows, header)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"winograd_layers-{cpu}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
