"""The planner's driver: table, damage, the knapsack, the planned build and its measurement.

:func:`plan_model` answers "this model, that much faster on that target: which structure for
each layer, at least damage?":

1. the latency table of every layer × candidate on the target (cached, reused);
2. the damage of each choice (residual, or calibration sensitivity);
3. the original model and the fastest plan compiled and timed: they fit a factor from the
   table's kernel times to the model's and a cost per weight byte (weights streamed from
   memory), so a model's predicted latency is
   ``Σ (scale · chosen kernel + byte_ms · its weight bytes)`` (:meth:`Planner._calibrate`);
4. the multiple-choice knapsack under the budget
   (:func:`~tvm_structconv.planner.knapsack.solve_budget`);
5. the planned model compiled and timed alternately with the original, in one run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import tvm

from tvm_structconv.build import compile_model
from tvm_structconv.plan import Plan, PlanError
from tvm_structconv.planner.damage import load_calibration, residual_damage, sensitivity_damage
from tvm_structconv.planner.knapsack import solve_budget
from tvm_structconv.planner.layers import Candidate
from tvm_structconv.planner.source import ModelSource
from tvm_structconv.planner.table import LatencyTable, measure_table, schedules_hash
from tvm_structconv.planner.timers import LocalTimer, RemoteTimer, Timer
from tvm_structconv.targets import make_target, target_key
from tvm_structconv.threads import available_cores
from tvm_structconv.toolchain import check_runnable

__all__ = ["BudgetError", "PlanResult", "Planner", "plan_model", "check_budget"]


#: Whether kernels are timed with their weights evicted from the caches first (in a whole
#: model, each kernel's weights come from memory when the model's weights outgrow the caches).
COLD_DEFAULT = False


class BudgetError(PlanError):
    """A latency budget that is malformed or that no plan meets."""


def check_budget(speedup: Optional[float], latency_ms: Optional[float]) -> None:
    """Refuse anything but exactly one finite budget: a speedup ``>= 1`` or a latency ``> 0``.

    Raises
    ------
    BudgetError
        Naming what is wrong.
    """
    if (speedup is None) == (latency_ms is None):
        raise BudgetError("give exactly one budget: --speedup X or --latency-ms L")
    if speedup is not None and not (math.isfinite(speedup) and speedup >= 1):
        raise BudgetError(f"--speedup must be a number >= 1 (the original is 1), got {speedup}")
    if latency_ms is not None and not (math.isfinite(latency_ms) and latency_ms > 0):
        raise BudgetError(f"--latency-ms must be a positive number, got {latency_ms}")


@dataclass
class PlanResult:
    """What :func:`plan_model` chose, predicted and measured.

    Attributes
    ----------
    model
        The model's name.
    target
        The target planned for.
    plan
        The per-layer plan (every tabled layer named; ``None`` entries are left alone).
    table
        The latency table.
    damage
        ``{weight name: damage per candidate}`` the knapsack minimized.
    damage_kind
        ``"residual"`` or ``"sensitivity"``.
    choice
        ``{weight name: chosen candidate index}``.
    rest_ms
        A fixed part of every model's time outside the per-layer costs (0 with
        :meth:`Planner._calibrate`'s fit, which scales the kernels instead).
    original_ms
        The original model's latency the budget was set from.
    budget_ms
        The latency budget.
    predicted_ms
        ``rest_ms`` + the chosen candidates' costs in the model (``cost_ms``).
    measured_ms
        ``{"original": ms, "planned": ms}`` timed alternately (empty without measuring).
    cost_ms
        ``{weight name: cost per candidate}`` in the model: kernel time plus ``byte_ms`` per
        weight byte (``None`` where no choice).
    byte_ms
        The fitted cost of streaming one weight byte (0 when the weights stay in cache).
    scale
        The fitted factor from the table's kernel times to their time in the model.
    device
        ``"local"`` or ``"rpc-<key>"``.
    tries
        How many plans were built and measured to find this one
        (:meth:`Planner.plan_measured`).
    """

    model: str
    target: tvm.target.Target
    plan: Plan
    table: LatencyTable
    damage: Dict[str, List[float]]
    damage_kind: str
    choice: Dict[str, int]
    rest_ms: float
    original_ms: float
    budget_ms: float
    predicted_ms: float
    measured_ms: Dict[str, float] = field(default_factory=dict)
    cost_ms: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    byte_ms: float = 0.0
    scale: float = 1.0
    device: str = "local"
    tries: int = 1

    def chosen(self, name: str) -> Candidate:
        """The candidate chosen for the layer with weight ``name``."""
        return self.table.candidates[name][self.choice[name]]

    @property
    def total_damage(self) -> float:
        """The sum of the chosen candidates' damage."""
        return sum(self.damage[name][index] for name, index in self.choice.items())

    @property
    def predicted_speedup(self) -> float:
        """``original_ms / predicted_ms``."""
        return self.original_ms / self.predicted_ms

    @property
    def measured_speedup(self) -> Optional[float]:
        """Original over planned, timed alternately; ``None`` when not measured."""
        if not self.measured_ms:
            return None
        return self.measured_ms["original"] / self.measured_ms["planned"]

    def structured(self) -> List[str]:
        """Weight names of the layers the plan structures."""
        return [name for name, index in self.choice.items() if index != 0]

    def info(self) -> Dict[str, object]:
        """The numbers a plan file records beside the plan."""
        return {
            "model": self.model,
            "target": target_key(self.target),
            "device": self.device,
            "budget_ms": round(self.budget_ms, 4),
            "original_ms": round(self.original_ms, 4),
            "predicted_ms": round(self.predicted_ms, 4),
            "predicted_speedup": round(self.predicted_speedup, 4),
            "measured_speedup": (
                None if self.measured_speedup is None else round(self.measured_speedup, 4)
            ),
            "damage": round(self.total_damage, 6),
            "kernel_scale": round(self.scale, 4),
            "weight_stream_gb_per_s": (
                None if self.byte_ms == 0 else round(1e-6 / self.byte_ms, 3)
            ),
            "damage_kind": self.damage_kind,
            "tries": self.tries,
        }

    def summary(self) -> str:
        """Per structured layer its choice, then a line ending with both speedups."""
        lines = [
            f"latency table {self.table.path}: {self.table.measured} kernels timed, "
            f"{self.table.reused} reused"
        ]
        lines.append(
            f"{'layer':<34} {'choice':<16} {'ms':>8} {'leave ms':>9} {self.damage_kind:>11}"
        )
        for name in self.structured():
            index = self.choice[name]
            lines.append(
                f"{name:<34} {self.chosen(name).describe():<16} "
                f"{self.cost_ms[name][index]:>8.4f} "
                f"{self.cost_ms[name][0]:>9.4f} {self.damage[name][index]:>11.4f}"
            )
        layers = len(self.table.layers)
        lines.append(
            f"{len(self.structured())} of {layers} layers structured; budget "
            f"{self.budget_ms:.4g} ms, original {self.original_ms:.4g} ms, predicted "
            f"{self.predicted_ms:.4g} ms ({self.device}, {target_key(self.target)}; "
            f"{self.tries} measured {'build' if self.tries == 1 else 'builds'})"
        )
        measured = (
            f"measured {self.measured_speedup:.2f}x"
            if self.measured_speedup is not None
            else "not measured"
        )
        lines.append(
            f"damage {self.total_damage:.4f} ({self.damage_kind}); "
            f"predicted {self.predicted_speedup:.2f}x, {measured}"
        )
        return "\n".join(lines)


def table_header(target: tvm.target.Target, threads: int, mode: str = "warm") -> Dict[str, str]:
    """What cached kernel latencies must match: target, TVM, threads, schedules' source and
    how kernels were timed (``mode``: warm caches or cold weights)."""
    return {
        "target": str(target),
        "tvm": tvm.__version__,
        "threads": str(threads),
        "schedules": schedules_hash(),
        "timing": mode,
    }


class Planner:
    """A model's latency table, damage and original build on a target: plans for any budget.

    Construction does the expensive part once (the table, the damage, the original model
    compiled and timed); :meth:`plan` then solves for a budget and :meth:`measure` compiles a
    plan and times it against the original. Parameters are those of :func:`plan_model`.

    Raises
    ------
    PlanError, TargetError, DeviceError, RemoteError, FrontendError
        See :func:`plan_model`.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, torch.nn.Module],
        target: Union[str, tvm.target.Target] = "x86",
        *,
        example_input: Optional[torch.Tensor] = None,
        image_size: int = 224,
        seed: int = 0,
        input_shapes: Optional[Dict[str, List[int]]] = None,
        rpc_tracker: Optional[str] = None,
        device_key: Optional[str] = None,
        calibration: Union[None, str, os.PathLike, torch.Tensor] = None,
        rounds: int = 10,
        cold_weights: bool = COLD_DEFAULT,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        target = make_target(target) if isinstance(target, str) else target
        if target.kind.name != "llvm":
            raise PlanError(
                f"plan measures CPU kernels (x86, aarch64 through RPC); {target.kind.name} is "
                "not supported yet"
            )
        if rpc_tracker is not None:
            if not device_key:
                raise PlanError("--rpc-tracker needs --device-key")
            self.timer: Timer = RemoteTimer(target, rpc_tracker, device_key, cold=cold_weights)
            threads = int(target.attrs.get("num-cores", 1))
        else:
            check_runnable(target)
            self.timer = LocalTimer(target, cold=cold_weights)
            current = os.environ.get("TVM_NUM_THREADS", "")
            threads = int(current) if current.isdigit() else available_cores()
        self.target, self.rounds, self.progress = target, rounds, progress
        self.source = ModelSource(model, example_input, image_size, seed, input_shapes)
        self.table = measure_table(
            self.source,
            target,
            self.timer,
            table_header(target, threads, self.timer.mode),
            progress=progress,
        )
        self.damage, self.damage_kind = self._damage(calibration)
        self.seed = seed
        self._calibrate()

    def _calibrate(self) -> None:
        """Compile the original and the fastest plan, time both alternately, and fit how the
        table's kernels add up to a whole model.

        A model's time is modelled as ``T = scale · Σ kernel + byte_ms · Σ weight bytes``.
        Timed alone, a kernel finds its weights in the caches; in a model whose weights
        outgrow them, each kernel streams its weights from memory (``byte_ms``), and the ops
        between the kernels, the VM and the machine's load at table time make the sum of
        kernels off by a factor (``scale``). Two measured models (the original and the fastest
        plan) fix both; when the fit gives a negative term, ``byte_ms`` is 0 and ``scale``
        makes the original exact. Each candidate's cost in the model, ``scale · kernel +
        byte_ms · its weight bytes``, is still one number per choice: the knapsack stays exact.
        """
        table = self.table
        fastest = {
            layer.name: min(
                (index for index, latency in enumerate(table.latency_ms[layer.name]) if latency),
                key=lambda index: table.latency_ms[layer.name][index],
            )
            for layer in table.layers
        }
        self.progress("compiling the original model and the fastest plan, timing them")
        self.original = compile_model(
            self.source.imported({}), self.target, structured=False, tuning_logs=False
        )
        structures = {
            name: table.candidates[name][index].structure
            for name, index in fastest.items()
            if index != 0
        }
        fastest_build = compile_model(
            self.source.imported(structures), self.target, structured=True, tuning_logs=False
        )
        self.inputs = [spec.random(self.seed) for spec in self.original.inputs]
        times = self.timer.time_models(
            {"original": self.original, "fastest": fastest_build}, self.inputs, self.rounds
        )
        self.original_ms, self.fastest_measured_ms = times["original"], times["fastest"]
        leave = {layer.name: 0 for layer in table.layers}
        kernels = [self._kernels(choice) for choice in (leave, fastest)]
        weights = [self._weight_bytes(choice) for choice in (leave, fastest)]
        measured = [self.original_ms, self.fastest_measured_ms]
        self.scale, self.byte_ms = fit_scale_and_bytes(kernels, weights, measured)
        self.rest_ms = 0.0
        self.cost_ms = {
            layer.name: [
                None
                if latency is None
                else self.scale * latency
                + self.byte_ms * candidate.weight_bytes(layer.weight_shape[0])
                for candidate, latency in zip(
                    table.candidates[layer.name], table.latency_ms[layer.name]
                )
            ]
            for layer in table.layers
        }

    def _kernels(self, choice: Dict[str, int]) -> float:
        """The table's kernel time of a choice per layer."""
        return sum(self.table.latency_ms[name][index] for name, index in choice.items())

    def _weight_bytes(self, choice: Dict[str, int]) -> int:
        """The weight bytes of a choice per layer."""
        table = self.table
        return sum(
            table.candidates[layer.name][choice[layer.name]].weight_bytes(layer.weight_shape[0])
            for layer in table.layers
        )

    def _damage(self, calibration) -> Tuple[Dict[str, List[float]], str]:
        """The damage table and its kind."""
        table = self.table
        if calibration is None:
            return residual_damage(self.source, table.layers, table.candidates), "residual"
        inputs = (
            calibration
            if isinstance(calibration, torch.Tensor)
            else load_calibration(calibration, source_input_shape(self.source))
        )
        self.progress(f"calibration: output change of each choice on {len(inputs)} inputs")
        available = {
            layer.name: [latency is not None for latency in table.latency_ms[layer.name]]
            for layer in table.layers
        }
        damage = sensitivity_damage(self.source, table.layers, table.candidates, inputs, available)
        return damage, "sensitivity"

    def fastest_ms(self) -> float:
        """The predicted latency of the fastest plan."""
        return self.rest_ms + sum(
            min(cost for cost in self.cost_ms[layer.name] if cost is not None)
            for layer in self.table.layers
        )

    def result(self, choice: Dict[str, int], budget_ms: float) -> PlanResult:
        """The :class:`PlanResult` of a choice per layer (unmeasured)."""
        table = self.table
        plan = Plan(
            layers={
                layer.module_name: None
                if choice[layer.name] == 0
                else _entry(table.candidates[layer.name][choice[layer.name]])
                for layer in table.layers
            }
        )
        predicted = self.rest_ms + sum(self.cost_ms[name][index] for name, index in choice.items())
        return PlanResult(
            self.source.name,
            self.target,
            plan,
            table,
            self.damage,
            self.damage_kind,
            dict(choice),
            self.rest_ms,
            self.original_ms,
            budget_ms,
            predicted,
            cost_ms=self.cost_ms,
            byte_ms=self.byte_ms,
            scale=self.scale,
            device=self.timer.label,
        )

    def plan(
        self, speedup: Optional[float] = None, latency_ms: Optional[float] = None
    ) -> PlanResult:
        """The least-damage plan within the budget (unmeasured).

        Raises
        ------
        BudgetError
            If the budget is malformed or below the fastest reachable latency.
        """
        check_budget(speedup, latency_ms)
        budget = latency_ms if latency_ms is not None else self.original_ms / speedup
        choice = choose(self.table, self.cost_ms, self.damage, budget - self.rest_ms)
        if choice is None:
            fastest = self.fastest_ms()
            raise BudgetError(
                f"the budget {budget:.4g} ms cannot be met on {target_key(self.target)}: the "
                f"fastest reachable latency is {fastest:.4g} ms ({self.original_ms / fastest:.2f}x;"
                f" original {self.original_ms:.4g} ms)"
            )
        return self.result(choice, budget)

    def measure(self, result: PlanResult, rounds: Optional[int] = None) -> PlanResult:
        """Compile ``result``'s plan and time it alternately with the original; fill
        ``result.measured_ms`` and return ``result``."""
        self.progress("compiling the planned model, timing it against the original")
        structures = {name: result.chosen(name).structure for name in result.structured()}
        planned = compile_model(
            self.source.imported(structures), self.target, structured=True, tuning_logs=False
        )
        result.measured_ms = self.timer.time_models(
            {"original": self.original, "planned": planned}, self.inputs, rounds or self.rounds
        )
        return result

    def plan_measured(
        self,
        speedup: Optional[float] = None,
        latency_ms: Optional[float] = None,
        tries: int = 3,
        tolerance: float = 0.05,
    ) -> PlanResult:
        """Plan, measure, and plan again against what was measured (up to ``tries`` builds).

        Kernels timed alone add up to a model's time only approximately (weights that fit
        in the caches once enough layers shrink, the ops between kernels), so the measured
        speedup of a plan can miss the request. Each try asks the table for the request
        scaled by how far the last build missed it; the first build within ``tolerance`` of
        the request is returned, else the one closest to it (preferring those that meet it).
        ``result.tries`` says how many builds were measured.

        Raises
        ------
        BudgetError
            If the budget is malformed or unreachable by the table's fastest plan.
        """
        check_budget(speedup, latency_ms)
        wanted = speedup if speedup is not None else self.original_ms / latency_ms
        goal, results = wanted, []
        for _ in range(max(1, tries)):
            try:
                result = self.plan(latency_ms=self.original_ms / goal)
            except BudgetError:
                if not results:
                    raise
                break
            self.measure(result)
            results.append(result)
            measured = result.measured_speedup
            if abs(measured / wanted - 1) <= tolerance:
                break
            goal = max(1.0, goal * wanted / measured)
        best = min(
            results,
            key=lambda r: (
                r.measured_speedup < wanted * (1 - tolerance),
                abs(r.measured_speedup / wanted - 1),
            ),
        )
        best.tries = len(results)
        return best


def plan_model(
    model: Union[str, os.PathLike, torch.nn.Module],
    target: Union[str, tvm.target.Target] = "x86",
    *,
    speedup: Optional[float] = None,
    latency_ms: Optional[float] = None,
    measure: bool = True,
    tries: int = 3,
    **options,
) -> PlanResult:
    """Choose each layer's structure to meet a latency budget on ``target`` at least damage.

    Parameters
    ----------
    model
        A built-in model name, a ``.pt2`` / ONNX file, or an ``nn.Module`` (with
        ``example_input``).
    target
        A target name (``x86``, ``aarch64`` …) or Target; a CPU (LLVM) target.
    speedup, latency_ms
        The budget, exactly one: a speedup over the original build, or a latency.
    measure
        Compile the planned model and time it against the original.
    tries
        Builds measured at most: each next plan corrects the request by how far the last
        build missed it (:meth:`Planner.plan_measured`).
    **options
        Passed to :class:`Planner`: ``example_input`` (what an ``nn.Module`` is exported
        with), ``image_size`` and ``seed`` (a built-in model's input size and weights; the seed
        also draws the timed inputs), ``input_shapes`` (an ONNX model's symbolic inputs),
        ``rpc_tracker`` and ``device_key`` (time on the devices of this key at this tracker
        instead of this machine), ``calibration`` (inputs, a ``.npy`` file or a tensor: damage
        is then the output change on them), ``rounds`` (alternating rounds of the whole-model
        timing), ``cold_weights`` (time kernels with their weights evicted from the caches) and
        ``progress`` (called with a line for each step).

    Raises
    ------
    BudgetError
        If the budget is malformed or cannot be met (the message gives the fastest latency).
    TargetError, DeviceError, RemoteError, FrontendError
        For an unknown target, one that cannot run here without RPC, an unreachable tracker,
        or a model that cannot be read.
    """
    check_budget(speedup, latency_ms)  # before any work
    planner = Planner(model, target, **options)
    if not measure:
        return planner.plan(speedup, latency_ms)
    return planner.plan_measured(speedup, latency_ms, tries=tries)


def fit_scale_and_bytes(
    kernels: Sequence[float], weights: Sequence[float], measured: Sequence[float]
) -> Tuple[float, float]:
    """``(scale, byte_ms)`` with ``measured[i] = scale · kernels[i] + byte_ms · weights[i]``
    for two models; ``(measured[0] / kernels[0], 0)`` when that solution has a negative or
    undefined term."""
    determinant = kernels[0] * weights[1] - kernels[1] * weights[0]
    if abs(determinant) > 1e-12 * max(1.0, abs(kernels[0] * weights[1])):
        scale = (measured[0] * weights[1] - measured[1] * weights[0]) / determinant
        byte_ms = (kernels[0] * measured[1] - kernels[1] * measured[0]) / determinant
        if scale > 0 and byte_ms >= 0:
            return scale, byte_ms
    return measured[0] / kernels[0], 0.0


def choose(
    table: LatencyTable,
    cost_ms: Dict[str, List[Optional[float]]],
    damage: Dict[str, List[float]],
    kernel_budget: float,
) -> Optional[Dict[str, int]]:
    """The least-damage candidate index per layer whose costs fit ``kernel_budget`` ms."""
    latencies, costs, indices = [], [], []
    for layer in table.layers:
        usable = [
            index
            for index, latency in enumerate(cost_ms[layer.name])
            if latency is not None and math.isfinite(damage[layer.name][index])
        ]
        indices.append(usable)
        latencies.append([cost_ms[layer.name][index] for index in usable])
        costs.append([damage[layer.name][index] for index in usable])
    picked = solve_budget(latencies, costs, kernel_budget)
    if picked is None:
        return None
    return {layer.name: usable[pick] for layer, usable, pick in zip(table.layers, indices, picked)}


def source_input_shape(source: ModelSource) -> tuple:
    """The model's input shape (for calibration data)."""
    if source.example_input is not None:
        return tuple(source.example_input.shape)
    return tuple(source.imported({}).inputs[0].shape)


def _entry(candidate: Candidate) -> tuple:
    """A plan's per-layer entry ``(reduced channels, (nh, nw))``."""
    return candidate.structure.reduced_channels, candidate.structure.reduced_kernel_size
