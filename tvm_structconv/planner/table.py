"""The latency table: each layer's kernel under each candidate, as the compiler runs it.

For every family of candidates (:data:`~tvm_structconv.planner.layers.FAMILIES`) the model is
imported with each layer's member of the family projected onto it and taken through the
compiler's own passes (:func:`~tvm_structconv.build.prepare_module`: BatchNorm folding, NHWC
layout planning, the structured and ordinary rewrites, alpha packed at compile time), then
through TVM's fusion (:func:`~tvm_structconv.tune.conv_calls`). Each layer's conv call is
found by its kernel's shape, in call order among equal shapes: its fused function, with the
epilogue fusion gave it (bias, ReLU, residual add), is the kernel the compiled model runs for
that layer and candidate. Each distinct kernel is compiled
with the hand schedules (:class:`~tvm_structconv.transform.ApplySchedules`, what a compile
without tuning log applies) and timed on the target (:mod:`tvm_structconv.planner.timers`).

Kernels are cached by the structural hash of the fused function, per target and device, in
``latency_table-<device>.json`` beside the target's tuning logs
(:func:`~tvm_structconv.tuning_logs.user_logs_dir`). The file's header holds the target, the
TVM version, the thread count and a hash of the schedules package's source: when any differs,
the cached kernels are dropped and measured again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import tvm
import tvm_ffi

from tvm_structconv.build import prepare_module
from tvm_structconv.planner.layers import FAMILIES, Candidate, Layer
from tvm_structconv.planner.source import ModelSource
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.structure import Structure
from tvm_structconv.tune import conv_calls, is_winograd
from tvm_structconv.tuning_logs import user_logs_dir

__all__ = ["TABLE_FORMAT", "KernelCache", "LatencyTable", "measure_table", "schedules_hash"]

#: The ``format`` of a latency table file.
TABLE_FORMAT = "structconv-latency/1"


def schedules_hash() -> str:
    """A hash of the source of :mod:`tvm_structconv.schedules` (16 hex digits).

    A change to any schedule changes the kernels' speed: cached latencies are then stale.
    """
    import tvm_structconv.schedules as schedules

    root = Path(schedules.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def kernel_key(func: tvm.tirx.PrimFunc) -> str:
    """The structural hash of a fused function (its name left out), as the cache's key."""
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return f"{tvm_ffi.structural_hash(module) & 0xFFFFFFFFFFFFFFFF:016x}"


@dataclass
class KernelCache:
    """Kernel latencies of one target and device, and the file that holds them.

    Attributes
    ----------
    path
        The JSON file.
    header
        What the latencies are valid for (target, TVM version, threads, schedules hash).
    kernels
        ``{kernel key: latency ms}``.
    dropped
        Why a file that existed was not reused (``""`` when it was, or there was none).
    """

    path: Path
    header: Dict[str, str]
    kernels: Dict[str, float] = field(default_factory=dict)
    dropped: str = ""

    @classmethod
    def open(cls, path: Path, header: Dict[str, str]) -> KernelCache:
        """The cache at ``path`` if its header equals ``header``, else an empty one."""
        cache = cls(Path(path), dict(header))
        if not cache.path.is_file():
            return cache
        try:
            data = json.loads(cache.path.read_text())
        except ValueError:
            cache.dropped = "unreadable"
            return cache
        stored = data.get("header", {}) if isinstance(data, dict) else {}
        if data.get("format") != TABLE_FORMAT:
            cache.dropped = "another format"
            return cache
        changed = sorted(
            key for key in set(stored) | set(header) if stored.get(key) != header.get(key)
        )
        if changed:
            cache.dropped = f"{', '.join(changed)} changed"
            return cache
        cache.kernels = {str(k): float(v) for k, v in data.get("kernels", {}).items()}
        return cache

    def save(self) -> None:
        """Write the file (its folder is created)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": TABLE_FORMAT, "header": self.header, "kernels": self.kernels}
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@dataclass
class LatencyTable:
    """Per layer: its candidates and the latency of its kernel under each.

    Attributes
    ----------
    layers
        The conv / Linear layers in call order.
    candidates
        ``{weight name: candidates}``, "leave it" first.
    latency_ms
        ``{weight name: latency per candidate}``; ``None`` where the compiler did not rewrite
        the layer with that candidate (it is then not a choice).
    path
        The cache file.
    measured, reused
        Distinct kernels timed in this run, and taken from the cache.
    dropped
        Why an existing cache file was not reused (``""`` if it was).
    """

    layers: List[Layer]
    candidates: Dict[str, List[Candidate]]
    latency_ms: Dict[str, List[Optional[float]]]
    path: Path
    measured: int = 0
    reused: int = 0
    dropped: str = ""

    def choices(self, layer: Layer) -> List[Tuple[Candidate, float]]:
        """``(candidate, latency)`` of the candidates the layer can take."""
        return [
            (candidate, latency)
            for candidate, latency in zip(self.candidates[layer.name], self.latency_ms[layer.name])
            if latency is not None
        ]

    def leave_ms(self) -> float:
        """The sum of every layer's "leave it" latency: the original model's conv time."""
        return sum(self.latency_ms[layer.name][0] for layer in self.layers)


def _signature(func: tvm.tirx.PrimFunc) -> Tuple[int, ...]:
    """``(kh, kw, input channels per group, output channels)`` of a fused conv function, read
    from its packed ``alpha`` (``K/block × kh × kw × C/groups × block``) and its output; a
    Winograd conv's transformed ``alpha`` (``m+1 × m+1 × K/block × C × block``) is a 2×2 one."""
    alpha = [int(d) for d in func.params[1].shape]
    out_channels = int(func.params[-1].shape[-1])
    if is_winograd(func):
        return (2, 2, alpha[3], out_channels)
    return (alpha[1], alpha[2], alpha[3], out_channels)


def _expected(weight_shape: Tuple[int, ...], structure: Optional[Structure]) -> Tuple[int, ...]:
    """The :func:`_signature` a layer's kernel has under ``structure`` (``None``: leave it)."""
    if structure is not None:
        kh, kw = structure.reduced_kernel_size
        return (kh, kw, structure.group_reduced_channels, weight_shape[0])
    kh, kw = (1, 1) if len(weight_shape) == 2 else weight_shape[2:4]
    return (kh, kw, weight_shape[1], weight_shape[0])


def _match(
    names: List[str],
    calls: List[Tuple[str, tvm.tirx.PrimFunc]],
    expected: Dict[str, Tuple[int, ...]],
) -> Dict[str, tvm.tirx.PrimFunc]:
    """Each layer's conv call: the first unused call of its signature, in order.

    The rewrite reports layers in the order it visits them, which is not always the order
    the fused model calls them (a ResNet block's downsample conv is reported first and called
    last), so calls are matched by their kernel's shape, in order among equal shapes.
    """
    unused = list(calls)
    found = {}
    for name in names:
        for position, (_call, func) in enumerate(unused):
            if _signature(func) == expected[name]:
                found[name] = func
                del unused[position]
                break
        else:
            raise RuntimeError(f"no conv call after fusion has the kernel of {name}")
    return found


def _layers(
    source: ModelSource, target: tvm.target.Target
) -> Tuple[List[Layer], Dict[str, tvm.tirx.PrimFunc]]:
    """The model's layers and their "leave it" kernels."""
    imported = source.imported({})
    prepared = prepare_module(imported, True, layout=conv_layout(target))
    calls = conv_calls(prepared.mod, target)
    reported = prepared.report.layers
    if len(calls) != len(reported):
        raise RuntimeError(
            f"{len(reported)} conv / linear layers but {len(calls)} conv calls after fusion"
        )
    weights = imported.weights()
    names = [report.name for report in reported]
    expected = {name: _expected(weights[name][0].shape, None) for name in names}
    kernels = _match(names, calls, expected)
    layers = []
    for report in reported:
        weight, groups = weights[report.name]
        output = tuple(int(d) for d in kernels[report.name].params[-1].shape)
        layers.append(Layer(report.name, report.kind, tuple(weight.shape), groups, output))
    return layers, kernels


def measure_table(
    source: ModelSource,
    target: tvm.target.Target,
    timer,
    header: Dict[str, str],
    path: Optional[Path] = None,
    progress: Callable[[str], None] = lambda message: None,
) -> LatencyTable:
    """Build the latency table of ``source`` on ``target``, timing what the cache lacks.

    Parameters
    ----------
    source
        The model.
    target
        The target the kernels are compiled for.
    timer
        A :mod:`~tvm_structconv.planner.timers` timer (local or RPC).
    header
        What the cached latencies must have been measured under (see :class:`KernelCache`).
    path
        The cache file; default ``latency_table-<timer.label>.json`` in the target's
        tuning-log folder.
    progress
        Called with a line for each step.
    """
    path = path or user_logs_dir(target) / f"latency_table-{timer.label}.json"
    cache = KernelCache.open(path, header)
    if cache.dropped:
        progress(f"latency table {path}: not reused ({cache.dropped})")
    layers, leave = _layers(source, target)
    candidates = {layer.name: layer.candidates() for layer in layers}
    kernels: Dict[Tuple[str, int], tvm.tirx.PrimFunc] = {
        (name, 0): func for name, func in leave.items()
    }
    for family in FAMILIES[1:]:
        wanted = {}
        for layer in layers:
            for index, candidate in enumerate(candidates[layer.name]):
                if candidate.family == family.label and index > 0:
                    wanted[layer.name] = index
        if not wanted:
            continue
        progress(f"compiling the model with every layer's {family.label} ({len(wanted)} layers)")
        structures = {name: candidates[name][index].structure for name, index in wanted.items()}
        prepared = prepare_module(source.imported(structures), True, layout=conv_layout(target))
        calls = conv_calls(prepared.mod, target)
        rewritten = {report.name for report in prepared.report.rewritten}
        names = [report.name for report in prepared.report.layers]
        shapes = {layer.name: layer.weight_shape for layer in layers}
        expected = {
            name: _expected(
                shapes[name], structures[name] if name in rewritten and name in wanted else None
            )
            for name in names
        }
        for name, func in _match(names, calls, expected).items():
            if name in rewritten and name in wanted:
                kernels[(name, wanted[name])] = func
    keys = {slot: kernel_key(func) for slot, func in kernels.items()}
    missing = {key: kernels[slot] for slot, key in keys.items() if key not in cache.kernels}
    reused = len(set(keys.values())) - len(missing)
    if missing:
        progress(f"timing {len(missing)} kernels ({reused} from {path})")
        cache.kernels.update(timer.time_kernels(missing))
        cache.save()
    latency = {
        layer.name: [
            cache.kernels[keys[(layer.name, index)]] if (layer.name, index) in keys else None
            for index in range(len(candidates[layer.name]))
        ]
        for layer in layers
    }
    return LatencyTable(layers, candidates, latency, path, len(missing), reused, cache.dropped)
