"""GPU benchmark: the CUDA template of the fused conv against TVM's original conv and cuDNN.

Two halves, because the GPU machine this project borrows has PyTorch but no TVM compiler (and
no network): ``prepare`` compiles everything here, ``measure`` runs there on TVM's runtime
alone (``TVM_USE_RUNTIME_LIB=1``, shipped with the artifacts).

``prepare OUT --arch sm_90`` writes to ``OUT``:

* ``layers/``: for every distinct conv shape of ResNet-18 that the default plan structures
  (and its unstructured stem), the original and the structured conv as CUDA kernels with the
  shared-memory template (:mod:`tvm_structconv.schedules.gpu.conv`), plus ``layers.json``; with
  ``--sweep`` also every tiling of :data:`CANDIDATES` (what the template's tiling rule was
  fitted to);
* ``models/``: ResNet-18 original and structured, compiled for CUDA with their weights lifted
  to parameters (``*-lifted.so``: timing with random weights, which does not change the work,
  keeps the libraries small) and the structured model with its weights bound
  (``resnet18-structured.so``), with an input and onnxruntime's output for it;
* ``runtime/``: TVM's Python package without its compiler library.

``measure DIR --out RESULTS`` then, on the GPU: checks every layer kernel against
``torch.nn.functional.conv2d`` (cuDNN) on the composed kernel and the bound structured model
against onnxruntime's output, times each kernel and model (CUDA events through TVM's
``time_evaluator``; torch with ``torch.cuda.Event``) and compares with cuDNN (torch eager) and
``torch.compile`` on the original model. It writes ``gpu_speedup.json`` and ``gpu_speedup.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tarfile
from typing import Dict, List, Sequence

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MODEL = "resnet18"


# ---------------------------------------------------------------------------- prepare (here)
#: (output channels per thread, threads over channels, threads over rows) tried per layer
#: besides the heuristic tiling: what the next heuristic should be fitted to.
CANDIDATES = [
    (4, 4, 1),
    (4, 8, 1),
    (4, 16, 1),
    (2, 16, 1),
    (2, 32, 1),
    (1, 32, 1),
    (1, 64, 1),
    (2, 16, 0),
    (1, 32, 0),
    (4, 8, 0),
]  # rows 0: as many as 256 threads allow


def _candidate_tilings(layer, structured: bool) -> list:
    from tvm_structconv.schedules.gpu.conv import CudaTiling, choose_cuda_tiling, chunk_channels
    from tvm_structconv.schedules.target_info import divisors

    channels = (layer.reduced_channels if structured else layer.in_channels) // layer.groups
    kernel = layer.reduced_kernel if structured else layer.kernel
    size = layer.out_size
    base = choose_cuda_tiling(1, layer.out_channels, size, size, channels, kernel * kernel)
    tilings = []
    for ov, ot, yt in CANDIDATES:
        if layer.out_channels % (ov * ot):
            continue
        if yt == 0:
            yt = max(divisors(size, max(256 // (ot * base.xt), 1)))
        tiling = CudaTiling(
            ov, ot, yt, base.xv, base.xt, chunk_channels(channels, ov * ot, kernel * kernel)
        )
        if tiling != base and tiling not in tilings:
            tilings.append(tiling)
    return tilings


def _layer_kernel(layer, structured: bool, target, path: pathlib.Path, tiling=None) -> dict:
    import tvm
    from tvm import s_tir, te

    from tvm_structconv import ops
    from tvm_structconv.schedules.gpu import conv as cuda
    from tvm_structconv.structure import Structure

    channels = layer.reduced_channels if structured else layer.in_channels
    kernel = layer.reduced_kernel if structured else layer.kernel
    structure = Structure(layer.in_channels, layer.kernel, channels, kernel, layer.groups)
    data = te.placeholder((1, layer.in_channels, layer.height, layer.width), name="data")
    alpha = te.placeholder(structure.alpha_shape(layer.out_channels), name="alpha")
    out = ops.structured_conv2d(data, alpha, structure, (layer.stride,) * 2, (layer.padding,) * 4)
    func = te.create_prim_func([data, alpha, out])
    if tiling is None:
        sch = cuda.StructuredConv2dCUDA().apply(func, target, False)
    else:
        sch = s_tir.Schedule(func)
        if (
            not cuda.schedule_structured_conv2d_cuda(sch, ops.find_structured_block(sch), tiling)
            or cuda.shared_bytes(sch.mod["main"]) > cuda.SHARED_BUDGET
        ):
            return None
    template = cuda.shared_bytes(sch.mod["main"]) > 0
    tvm.compile(sch.mod, target=target).export_library(str(path))
    return {
        "structure": [layer.in_channels, layer.kernel, channels, kernel, layer.groups],
        "alpha": list(structure.alpha_shape(layer.out_channels)),
        "output": [1, layer.out_channels, layer.out_size, layer.out_size],
        "template": template,
        "tiling": list(dataclasses.astuple(tiling)) if tiling is not None else None,
    }


def _lift_constants(mod):
    """``mod`` with every constant of ``main`` turned into a trailing parameter; their shapes."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    shapes: List[tuple] = []
    params: List[relax.Var] = []

    @mutator
    class Lift(PyExprMutator):
        def visit_generic_const_(self, const):
            value = const.value
            var = relax.Var(f"w{len(params)}", relax.TensorType(value.shape, str(value.dtype)))
            params.append(var)
            shapes.append((tuple(int(d) for d in value.shape), str(value.dtype)))
            return var

    main = mod["main"]
    body = Lift().visit_expr(main.body)
    lifted = relax.Function(list(main.params) + params, body, main.ret_ty, main.is_pure, main.attrs)
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod["main"] = lifted
    return mod, shapes


def prepare(
    out: pathlib.Path, arch: str, candidates: bool = False, extra_models: Sequence[str] = ()
) -> None:
    """Compile the layer kernels and models for ``arch`` and pack TVM's runtime into ``out``."""
    import onnxruntime
    import tvm

    sys.path.insert(0, str(HERE))
    from layer_speedup import PLAN, collect_layers

    from tvm_structconv.build import cuda_pipeline, prepare_module
    from tvm_structconv.export import export
    from tvm_structconv.frontend import load_model
    from tvm_structconv.models import create_structured
    from tvm_structconv.targets import make_target

    target = make_target("cuda", arch)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    layers = [
        layer for layer in collect_layers([MODEL], quick=False, plan_text=PLAN) if layer.kernel == 3
    ]
    stem = type(layers[0])(3, 64, 7, 2, 3, 1, 224, 224, 3, 7, MODEL, 1)  # unstructured stem
    entries = {}
    for layer in [*layers, stem]:
        entry = {"key": layer.key, "count": layer.count, "macs": {}}
        for variant in ("original", "structured"):
            if layer is stem and variant == "structured":
                continue
            info = _layer_kernel(
                layer, variant == "structured", target, out / "layers" / f"{layer.key}-{variant}.so"
            )
            info["candidates"] = []
            sweep = _candidate_tilings(layer, variant == "structured") if candidates else []
            for index, tiling in enumerate(sweep):
                candidate = _layer_kernel(
                    layer,
                    variant == "structured",
                    target,
                    out / "layers" / f"{layer.key}-{variant}-c{index}.so",
                    tiling,
                )
                if candidate is not None:
                    info["candidates"].append(
                        {
                            "file": f"{layer.key}-{variant}-c{index}.so",
                            "tiling": candidate["tiling"],
                        }
                    )
            entry[variant] = info
            entry["macs"][variant] = layer.macs(variant == "structured")
        entry["conv"] = {
            "stride": layer.stride,
            "padding": layer.padding,
            "groups": layer.groups,
            "input": [1, layer.in_channels, layer.height, layer.width],
        }
        entries[layer.key] = entry
        print(f"built {layer.key}", flush=True)
    (out / "layers.json").write_text(json.dumps(entries, indent=1))

    built = create_structured(MODEL, seed=0)
    onnx_path = out / f"{MODEL}.onnx"
    export(built.model, onnx_path, built.example_input, built.manifest)
    imported = load_model(str(onnx_path))
    x = built.example_input.numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np.save(out / "models" / "input.npy", x)
    np.save(
        out / "models" / "expected.npy", session.run(None, {session.get_inputs()[0].name: x})[0]
    )
    onnx_path.unlink()
    models: Dict[str, dict] = {}
    for name in [MODEL, *extra_models]:
        if name != MODEL:
            other = create_structured(name, seed=0)
            export(other.model, onnx_path, other.example_input, other.manifest)
            imported = load_model(str(onnx_path))
            onnx_path.unlink()
        models[name] = {}
        for structured in (False, True):
            variant = "structured" if structured else "original"
            mod = prepare_module(imported, structured).mod
            lifted, shapes = _lift_constants(mod)
            with target:
                tvm.compile(
                    lifted, target=target, relax_pipeline=cuda_pipeline(target)
                ).export_library(str(out / "models" / f"{name}-{variant}-lifted.so"))
                if structured and name == MODEL:
                    tvm.compile(
                        mod, target=target, relax_pipeline=cuda_pipeline(target)
                    ).export_library(str(out / "models" / f"{name}-structured.so"))
            models[name][variant] = {"params": shapes}
            print(f"built {name} {variant}", flush=True)
    (out / "models.json").write_text(json.dumps(models))

    runtime = pathlib.Path(tvm.__file__).parent
    (out / "runtime").mkdir(exist_ok=True)
    with tarfile.open(out / "runtime" / "tvm.tar.gz", "w:gz") as archive:
        archive.add(
            str(runtime),
            arcname="tvm",
            filter=lambda info: (
                None
                if (
                    info.name.endswith("libtvm_compiler.so")
                    or "/3rdparty" in info.name
                    or "/__pycache__" in info.name
                    or "/web" in info.name
                )
                else info
            ),
        )
    print(f"wrote {out}")


# ---------------------------------------------------------------------------- measure (GPU)
def _torch_ms(fn, repeat: int = 50, warmup: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(5):
        start.record()
        for _ in range(repeat):
            fn()
        stop.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(stop) / repeat)
    return float(np.median(samples))


def measure(folder: pathlib.Path, out: pathlib.Path) -> None:
    """Check and time everything :func:`prepare` wrote, on this machine's GPU."""
    import torch  # first: its libcudart lets TVM's CUDA runtime library load
    import torch.nn.functional as F

    torch.cuda.init()
    import tvm
    from tvm.runtime import vm as tvm_vm

    if not tvm.cuda().exist:  # runtime-only TVM does not load its CUDA runtime by itself
        import ctypes

        ctypes.CDLL(
            str(pathlib.Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"),
            mode=ctypes.RTLD_GLOBAL,
        )
    if not tvm.cuda().exist:
        raise SystemExit("TVM sees no CUDA device")
    # the libraries hold CUDA C++, compiled when loaded; TVM's default callback asks the
    # compiler's target scope for the arch, which runtime-only TVM lacks: name it here
    import tvm_ffi
    from tvm.support import nvcc

    arch = "sm_{}{}".format(*torch.cuda.get_device_capability())

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile_cuda(code):
        return nvcc.compile_cuda(code, target_format="cubin", arch=arch, compiler="nvrtc")

    from tvm_structconv.structure import Structure

    device = tvm.cuda()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # an fp32 oracle (and an fp32 peer)
    torch.backends.cuda.matmul.allow_tf32 = False
    results: Dict[str, object] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "layers": {},
        "models": {},
    }
    rng = np.random.default_rng(0)
    for key, entry in json.loads((folder / "layers.json").read_text()).items():
        conv = entry["conv"]
        x = rng.standard_normal(conv["input"]).astype("float32")
        row = {"count": entry["count"], "macs": entry["macs"]}
        x_gpu = torch.from_numpy(x).cuda()
        for variant in ("original", "structured"):
            if variant not in entry:
                continue
            info = entry[variant]
            alpha = rng.standard_normal(info["alpha"]).astype("float32")
            module = tvm.runtime.load_module(str(folder / "layers" / f"{key}-{variant}.so"))
            args = [
                tvm.runtime.tensor(x, device),
                tvm.runtime.tensor(alpha, device),
                tvm.runtime.tensor(np.zeros(info["output"], "float32"), device),
            ]
            module["main"](*args)
            weight = (
                Structure(*info["structure"][:4], groups=info["structure"][4])
                .compose(torch.from_numpy(alpha).double())
                .float()
                .cuda()
            )
            expected = F.conv2d(
                x_gpu, weight, stride=conv["stride"], padding=conv["padding"], groups=conv["groups"]
            )
            got = args[2].numpy()
            error = float(
                np.max(np.abs(got - expected.cpu().numpy()))
                / max(float(expected.abs().max()), 1e-30)
            )
            timer = module.time_evaluator("main", device, number=20, repeat=5, min_repeat_ms=20)
            row[variant] = {
                "ms": float(np.median(timer(*args).results)) * 1e3,
                "rel_error": error,
                "template": info["template"],
                "candidates": [],
            }
            for candidate in info.get("candidates", []):
                other = tvm.runtime.load_module(str(folder / "layers" / candidate["file"]))
                result = tvm.runtime.tensor(np.zeros(info["output"], "float32"), device)
                other["main"](args[0], args[1], result)
                candidate_error = float(
                    np.max(np.abs(result.numpy() - expected.cpu().numpy()))
                    / max(float(expected.abs().max()), 1e-30)
                )
                candidate_timer = other.time_evaluator(
                    "main", device, number=20, repeat=3, min_repeat_ms=10
                )
                row[variant]["candidates"].append(
                    {
                        "tiling": candidate["tiling"],
                        "rel_error": candidate_error,
                        "ms": float(np.median(candidate_timer(args[0], args[1], result).results))
                        * 1e3,
                    }
                )
            row[variant]["best_ms"] = min(
                [row[variant]["ms"]]
                + [c["ms"] for c in row[variant]["candidates"] if c["rel_error"] < 1e-3]
            )
            if variant == "original":
                row["cudnn_ms"] = _torch_ms(
                    lambda: F.conv2d(
                        x_gpu,
                        weight,
                        stride=conv["stride"],
                        padding=conv["padding"],
                        groups=conv["groups"],
                    )
                )
        results["layers"][key] = row
        print(key, json.dumps(row), flush=True)

    from tvm_structconv.models import create_structured

    models = json.loads((folder / "models.json").read_text())
    x = np.load(folder / "models" / "input.npy")
    x_gpu = torch.from_numpy(x).cuda()
    results["more_models"] = {}
    for name, variants in models.items():
        row = results["models"] if name == MODEL else results["more_models"].setdefault(name, {})
        for variant, info in variants.items():
            vm = tvm_vm.VirtualMachine(
                tvm.runtime.load_module(str(folder / "models" / f"{name}-{variant}-lifted.so")),
                device,
            )
            params = [
                tvm.runtime.tensor((0.05 * rng.standard_normal(shape)).astype(dtype), device)
                for shape, dtype in info["params"]
            ]
            vm.set_input("main", tvm.runtime.tensor(x, device), *params)
            timer = vm.time_evaluator(
                "invoke_stateful", device, number=20, repeat=5, min_repeat_ms=50
            )
            row[f"tvm-{variant}"] = float(np.median(timer("main").results)) * 1e3
        model = create_structured(name, seed=0).model.cuda().eval()
        with torch.no_grad():
            row["torch-eager"] = _torch_ms(lambda: model(x_gpu))
            compiled = torch.compile(model)
            compiled(x_gpu)
            row["torch-compile"] = _torch_ms(lambda: compiled(x_gpu))
        print(name, json.dumps(row), flush=True)
    bound = tvm_vm.VirtualMachine(
        tvm.runtime.load_module(str(folder / "models" / f"{MODEL}-structured.so")), device
    )
    got = bound["main"](tvm.runtime.tensor(x, device)).numpy()
    expected = np.load(folder / "models" / "expected.npy")
    results["models"]["structured_rel_error"] = float(
        np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    )

    print(json.dumps(results["models"]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_speedup.json").write_text(json.dumps(results, indent=1))
    (out / "gpu_speedup.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    """The per-layer and end-to-end tables as Markdown."""
    sweep = any(
        row[v].get("candidates")
        for row in results["layers"].values()
        for v in ("original", "structured")
        if v in row
    )
    lines = [
        f"# GPU: {results['gpu']} (torch {results['torch']}), batch 1, fp32",
        "",
        "| layer | MAC ratio | TVM original ms | TVM structured ms | realized | quotient "
        "| cuDNN original ms | structured vs cuDNN | max rel error |"
        + (" realized, best tiling of each |" if sweep else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if sweep else ""),
    ]
    for key, row in results["layers"].items():
        original = row["original"]["ms"]
        if "structured" not in row:
            lines.append(
                f"| {key} (stem, unstructured) | 1 | {original:.4f} | | | | "
                f"{row['cudnn_ms']:.4f} | | {row['original']['rel_error']:.1e} |"
                + (" |" if sweep else "")
            )
            continue
        structured = row["structured"]["ms"]
        best = row["original"].get("best_ms", original) / row["structured"].get(
            "best_ms", structured
        )
        ratio = row["macs"]["original"] / row["macs"]["structured"]
        realized = original / structured
        lines.append(
            f"| {key} | {ratio:.2f} | {original:.4f} | {structured:.4f} | "
            f"{realized:.2f} | {realized / ratio:.2f} | {row['cudnn_ms']:.4f} | "
            f"{row['cudnn_ms'] / structured:.2f} | "
            f"{max(row['original']['rel_error'], row['structured']['rel_error']):.1e} |"
            + (f" {best:.2f} |" if sweep else "")
        )
    m = results["models"]
    lines += ["", "| ResNet-18 end to end | median ms |", "|---|---|"]
    for name in ("tvm-original", "tvm-structured", "torch-eager", "torch-compile"):
        lines.append(f"| {name} | {m[name]:.3f} |")
    lines += [
        "",
        f"structured TVM vs original TVM: {m['tvm-original'] / m['tvm-structured']:.2f}x; "
        f"vs torch eager (cuDNN): {m['torch-eager'] / m['tvm-structured']:.2f}x; "
        f"vs torch.compile: {m['torch-compile'] / m['tvm-structured']:.2f}x; "
        f"structured build vs onnxruntime: max rel error {m['structured_rel_error']:.1e}",
    ]
    for name, row in results.get("more_models", {}).items():
        lines += ["", f"| {name} end to end (random weights) | median ms |", "|---|---|"]
        lines += [
            f"| {key} | {row[key]:.3f} |"
            for key in ("tvm-original", "tvm-structured", "torch-eager", "torch-compile")
        ]
        lines += [
            "",
            f"{name}: structured TVM vs original TVM "
            f"{row['tvm-original'] / row['tvm-structured']:.2f}x; vs torch eager (cuDNN) "
            f"{row['torch-eager'] / row['tvm-structured']:.2f}x; vs torch.compile "
            f"{row['torch-compile'] / row['tvm-structured']:.2f}x",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="compile the kernels and models (no GPU needed)")
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--arch", default="sm_90")
    p.add_argument(
        "--models",
        default="resnet50",
        help="more built-in models timed end to end (comma-separated, '' for none)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also build the CANDIDATES tilings of every layer (a tiling sweep)",
    )
    m = commands.add_parser("measure", help="check and time them on the GPU")
    m.add_argument("folder", type=pathlib.Path)
    m.add_argument("--out", type=pathlib.Path, required=True)
    r = commands.add_parser("report", help="the Markdown tables of a measure run's JSON")
    r.add_argument("json", type=pathlib.Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.arch, args.sweep, [m for m in args.models.split(",") if m])
    elif args.command == "report":
        print(report(json.loads(args.json.read_text())), end="")
    else:
        measure(args.folder, args.out)


if __name__ == "__main__":
    main()
