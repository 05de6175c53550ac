"""Plans: which layers of a torch model get which structure.

A plan is a list of rules, each matching layers by kind and kernel size and saying which
``(c, n)`` they get, plus explicit per-layer entries that override the rules. Plans are written
by hand (``Plan.parse("3x3:n=2,c=C/2")``) and used to build structured variants of models and
to drive the regularizer and ``structurize`` on the training side. A plan file (JSON,
:meth:`Plan.save` / :meth:`Plan.load`) holds rules and per-layer entries; the latency-budget
planner (:mod:`tvm_structconv.planner`) writes per-layer plans, and every ``--plan`` argument
takes a file ending in ``.json`` as well as rule syntax (:meth:`Plan.from_argument`).

Rule syntax (rules separated by ``;``)::

    KIND:key=value,key=value

``KIND`` is ``HxW`` (a conv with that kernel size; ``3x3``, ``1x1``, ``1x7`` …) or ``linear``.
Keys: ``c`` — reduced input channels per group, ``C`` (unchanged), ``C/k`` (divided, rounded
down, at least 1) or an int; ``n`` — the reduced kernel size, ``N`` (unchanged), an int or
``hxw``; ``min_channels`` — skip layers with fewer input channels per group;
``min_expansion`` — skip layers with fewer than that many output channels per input channel
(``4`` keeps a 1×1 conv 64 → 256, skips 256 → 64); ``depthwise`` — ``yes`` to include depthwise
convs (default ``no``); ``grouped`` — ``yes`` to include grouped convs with several input
channels per group (default ``no``).

Why the defaults leave depthwise and grouped convs alone, and what
:data:`~tvm_structconv.models.DEFAULT_PLAN` structures: the compiled structured kernel turns the
MAC ratio into speed (a quotient of realized speedup over MAC ratio of 0.8 or more, measured per
layer by ``benchmarks/layer_speedup.py``) for dense 3×3 convs of 16 or more input channels and
for expanding 1×1 convs of 128 or more; the sum-pool costs about ``log2(C − c)`` adds per input
channel and pixel, which a 1×1 conv with few output channels (a projection), a 3-channel stem or
a grouped conv with few channels per group does not repay (quotients 0.3–0.8).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch.nn as nn

from tvm_structconv.structure import Structure

__all__ = ["PLAN_FORMAT", "Rule", "Plan", "PlanError", "structurable_layers"]

#: The ``format`` field of a plan file (:meth:`Plan.save`).
PLAN_FORMAT = "structconv-plan/1"


class PlanError(ValueError):
    """A plan that cannot be parsed or does not fit a layer."""


@dataclass(frozen=True)
class Rule:
    """Structure for every layer of one kind.

    Attributes
    ----------
    kernel_size
        ``(Nh, Nw)`` of the convs this rule matches, or ``None`` for Linear layers.
    channel_fraction
        Reduced channels per group as a fraction of the layer's channels per group
        (``Fraction(1, 2)`` for ``c = C/2``); ignored when ``channels`` is set.
    channels
        Absolute reduced channels per group, or ``None``.
    reduced_kernel_size
        ``(nh, nw)``, or ``None`` to keep the kernel size.
    min_channels
        Layers with fewer input channels per group are left alone.
    depthwise
        Whether depthwise convs (one input channel per group) match.
    grouped
        Whether grouped convs with several input channels per group match.
    min_expansion
        Layers with fewer output than ``min_expansion`` × input channels are left alone.
    """

    kernel_size: Optional[Tuple[int, int]]
    channel_fraction: Fraction = Fraction(1)
    channels: Optional[int] = None
    reduced_kernel_size: Optional[Tuple[int, int]] = None
    min_channels: int = 1
    depthwise: bool = False
    grouped: bool = False
    min_expansion: Fraction = Fraction(0)

    def matches(self, layer: nn.Module) -> bool:
        """Whether ``layer`` is of this rule's kind."""
        return self.refusal(layer) is None

    def refusal(self, layer: nn.Module) -> Optional[str]:
        """Why this rule does not structure ``layer``, or ``None`` when it matches.

        ``"other kind"`` when the layer is not of the rule's kernel size or type at all.
        """
        if self.kernel_size is None:
            if not isinstance(layer, nn.Linear):
                return "other kind"
            return self._size_refusal(layer.in_features, layer.out_features / layer.in_features)
        if not isinstance(layer, nn.Conv2d) or tuple(layer.kernel_size) != self.kernel_size:
            return "other kind"
        per_group = layer.in_channels // layer.groups
        if per_group == 1 and layer.groups > 1 and not self.depthwise:
            return "depthwise (the rule has depthwise=no)"
        if per_group > 1 and layer.groups > 1 and not self.grouped:
            return "grouped (the rule has grouped=no)"
        return self._size_refusal(per_group, layer.out_channels / layer.in_channels)

    def _size_refusal(self, per_group: int, expansion: float) -> Optional[str]:
        """Why ``min_channels`` or ``min_expansion`` refuse a layer, or ``None``."""
        if per_group < self.min_channels:
            return (
                "fewer input channels per group than the rule's "
                f"min_channels={self.min_channels} (has {per_group})"
            )
        if expansion < self.min_expansion:
            return (
                "fewer output channels per input channel than the rule's "
                f"min_expansion={self.min_expansion} (has {expansion:.3g})"
            )
        return None

    def structure_for(self, layer: nn.Module) -> Structure:
        """The structure this rule gives ``layer`` (which it must match)."""
        groups = getattr(layer, "groups", 1)
        in_channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        kernel = tuple(layer.kernel_size) if isinstance(layer, nn.Conv2d) else (1, 1)
        per_group = in_channels // groups
        if self.channels is not None:
            reduced = self.channels
        else:
            reduced = max(1, int(per_group * self.channel_fraction))
        if reduced > per_group:
            raise PlanError(f"rule asks for c={reduced} per group, the layer has only {per_group}")
        return Structure(
            in_channels, kernel, reduced * groups, self.reduced_kernel_size or kernel, groups
        )

    def to_text(self) -> str:
        """The rule in plan syntax; ``Plan.parse(rule.to_text())`` gives the rule back.

        Raises
        ------
        PlanError
            If the channel fraction is not ``1/k`` (the syntax has no other fractions).
        """
        kind = "linear" if self.kernel_size is None else "{}x{}".format(*self.kernel_size)
        if self.channels is not None:
            channels = str(self.channels)
        elif self.channel_fraction == 1:
            channels = "C"
        elif self.channel_fraction.numerator == 1:
            channels = f"C/{self.channel_fraction.denominator}"
        else:
            raise PlanError(f"c={self.channel_fraction} x C has no plan syntax (only C/k)")
        options = [f"c={channels}"]
        if self.reduced_kernel_size is not None:
            options.append("n={}x{}".format(*self.reduced_kernel_size))
        if self.min_channels != 1:
            options.append(f"min_channels={self.min_channels}")
        if self.min_expansion != 0:
            options.append(f"min_expansion={self.min_expansion}")
        if self.depthwise:
            options.append("depthwise=yes")
        if self.grouped:
            options.append("grouped=yes")
        return f"{kind}:{','.join(options)}"


@dataclass
class Plan:
    """Rules plus per-layer overrides.

    Attributes
    ----------
    rules
        Tried in order; the first that matches a layer gives its structure.
    layers
        ``{module name: (reduced_channels total, (nh, nw))}`` or ``None`` to exclude a layer;
        takes precedence over the rules.
    """

    rules: List[Rule] = field(default_factory=list)
    layers: Dict[str, Optional[Tuple[int, Tuple[int, int]]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Plan:
        """Parse rule syntax such as ``"3x3:n=2,c=C/2;1x1:c=C/2,min_channels=64"``."""
        rules = [_parse_rule(part.strip()) for part in text.split(";") if part.strip()]
        if not rules:
            raise PlanError(f"plan {text!r} has no rule")
        return cls(rules=rules)

    @classmethod
    def from_argument(cls, text: str) -> Plan:
        """A ``--plan`` argument: a plan file (``.json``, :meth:`load`) or rule syntax."""
        if text.strip().lower().endswith(".json"):
            return cls.load(text)
        return cls.parse(text)

    def to_json(self) -> Dict[str, Any]:
        """The plan as a JSON object (the body of a plan file).

        ``{"format": "structconv-plan/1", "rules": "3x3:c=C,n=2x2", "layers": {"layer1.0.conv1":
        {"c": 32, "n": [2, 2]}, "fc": null}}``: ``c`` is the layer's reduced channels in total
        (as :class:`~tvm_structconv.structure.Structure`'s ``reduced_channels``), ``null``
        leaves a layer alone; ``layers`` take precedence over ``rules``.
        """
        layers = {
            name: None if entry is None else {"c": entry[0], "n": list(entry[1])}
            for name, entry in self.layers.items()
        }
        rules = ";".join(rule.to_text() for rule in self.rules)
        return {"format": PLAN_FORMAT, "rules": rules, "layers": layers}

    @classmethod
    def from_json(cls, data: Any, source: str = "<plan>") -> Plan:
        """The plan a :meth:`to_json` object describes.

        Raises
        ------
        PlanError
            If the object is not a plan of this format; the message names ``source``.
        """
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"{source}: not a plan file ('format' must be {PLAN_FORMAT!r})")
        unknown = sorted(set(data) - {"format", "rules", "layers", "info"})
        if unknown:
            raise PlanError(f"{source}: unknown field {unknown[0]!r}")
        rules_text = data.get("rules", "")
        if not isinstance(rules_text, str):
            raise PlanError(f"{source}: 'rules' must be plan text, got {rules_text!r}")
        rules = [_parse_rule(part.strip()) for part in rules_text.split(";") if part.strip()]
        entries = data.get("layers", {})
        if not isinstance(entries, dict):
            raise PlanError(f"{source}: 'layers' must map layer names to {{c, n}} or null")
        layers = {name: _parse_layer_entry(entry, name, source) for name, entry in entries.items()}
        if not rules and not layers:
            raise PlanError(f"{source}: the plan has no rule and no layer")
        return cls(rules=rules, layers=layers)

    def save(self, path: Union[str, os.PathLike], info: Optional[Dict[str, Any]] = None) -> None:
        """Write the plan file ``path`` (:meth:`to_json`); ``info`` is kept as a comment."""
        data = self.to_json()
        if info:
            data["info"] = info
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> Plan:
        """Read a plan file written by :meth:`save`.

        Raises
        ------
        PlanError
            If the file is missing, not JSON or not a plan; the message names the file.
        """
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise PlanError(f"cannot read plan file {os.fspath(path)}: {error.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise PlanError(f"{os.fspath(path)}: not JSON ({error})") from None
        return cls.from_json(data, os.fspath(path))

    def structure_for(self, name: str, layer: nn.Module) -> Optional[Structure]:
        """The structure for the layer called ``name``, or ``None`` if the plan leaves it alone."""
        if name in self.layers:
            entry = self.layers[name]
            if entry is None:
                return None
            reduced_channels, reduced_kernel = entry
            try:
                if isinstance(layer, nn.Conv2d):
                    return Structure(
                        layer.in_channels,
                        tuple(layer.kernel_size),
                        reduced_channels,
                        reduced_kernel,
                        layer.groups,
                    )
                return Structure(layer.in_features, 1, reduced_channels, reduced_kernel)
            except ValueError as error:
                raise PlanError(f"plan entry of layer {name!r} does not fit it: {error}") from None
        for rule in self.rules:
            if rule.matches(layer):
                return rule.structure_for(layer)
        return None

    def skipped(self, model: nn.Module) -> Dict[str, str]:
        """``{module name: why}`` for every Conv2d and Linear of ``model`` the plan leaves alone.

        A reason that names the layer's own value ends with it in ``(has …)``; the text before
        is the same for every layer left alone for that reason.

        The reasons: excluded by name, no rule of its kind, refused by the first rule of its
        kind (depthwise, fewer channels than ``min_channels``), or a structure that would
        reduce nothing (``c = C`` and ``n = N``).
        """
        reasons = {}
        for name, layer in structurable_layers(model):
            if name in self.layers and self.layers[name] is None:
                reasons[name] = "excluded by name in the plan"
                continue
            structure = self.structure_for(name, layer)
            if structure is not None:
                if structure.is_trivial:
                    reasons[name] = "its structure reduces nothing (c = C and n = N)"
                continue
            refusals = [r.refusal(layer) for r in self.rules]
            specific = [reason for reason in refusals if reason != "other kind"]
            reasons[name] = specific[0] if specific else f"no rule for {_kind(layer)}"
        return reasons

    def apply(self, model: nn.Module) -> Dict[str, Structure]:
        """``{module name: structure}`` for every layer of ``model`` the plan structures.

        Layers whose structure would reduce nothing are left out.

        Raises
        ------
        PlanError
            If a per-layer entry names no Conv2d or Linear of ``model``.
        """
        layers = dict(structurable_layers(model))
        unknown = sorted(set(self.layers) - set(layers))
        if unknown:
            raise PlanError(f"plan names layers the model does not have: {', '.join(unknown)}")
        planned = {}
        for name, layer in layers.items():
            structure = self.structure_for(name, layer)
            if structure is not None and not structure.is_trivial:
                planned[name] = structure
        return planned


def structurable_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, module)`` for every ``nn.Conv2d`` and ``nn.Linear`` of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield name, module


def _kind(layer: nn.Module) -> str:
    """``"3x3 convs"`` or ``"Linear layers"``: a layer's kind as plan rules name it."""
    if isinstance(layer, nn.Linear):
        return "Linear layers"
    height, width = layer.kernel_size
    return f"{height}x{width} convs"


def _parse_layer_entry(entry: Any, name: str, source: str) -> Optional[Tuple[int, Tuple[int, int]]]:
    """``{"c": 32, "n": [2, 2]}`` (or ``"n": 2``) → ``(32, (2, 2))``; ``null`` → ``None``."""
    if entry is None:
        return None
    where = f"{source}: layer {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"c", "n"}:
        raise PlanError(f"{where} must be {{'c': int, 'n': [h, w]}} or null, got {entry!r}")
    channels, kernel = entry["c"], entry["n"]
    if isinstance(kernel, int) and not isinstance(kernel, bool):
        kernel = [kernel, kernel]
    valid_kernel = (
        isinstance(kernel, list)
        and len(kernel) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel)
    )
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise PlanError(f"{where}: c must be a positive int, got {channels!r}")
    if not valid_kernel:
        raise PlanError(f"{where}: n must be a positive int or [h, w], got {entry['n']!r}")
    return channels, (kernel[0], kernel[1])


_KIND = re.compile(r"^(?:(\d+)x(\d+)|linear)$")


def _parse_pair(text: str, what: str) -> Tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match:
        raise PlanError(f"{what} must be an int or HxW, got {text!r}")
    first = int(match.group(1))
    return first, int(match.group(2) or first)


def _parse_rule(text: str) -> Rule:
    kind, _, options = text.partition(":")
    match = _KIND.match(kind.strip().lower())
    if not match:
        raise PlanError(f"rule {text!r}: kind must be HxW (e.g. 3x3) or 'linear', got {kind!r}")
    kernel = (int(match.group(1)), int(match.group(2))) if match.group(1) else None
    values: Dict[str, object] = {"kernel_size": kernel}
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise PlanError(f"rule {text!r}: option {option!r} is not key=value")
        if key == "c":
            if value == "C":
                values["channel_fraction"] = Fraction(1)
            elif value.startswith("C/"):
                divisor = value[2:]
                if not divisor.isdigit() or int(divisor) < 1:
                    raise PlanError(f"rule {text!r}: c={value!r} needs a positive divisor")
                values["channel_fraction"] = Fraction(1, int(divisor))
            elif value.isdigit() and int(value) >= 1:
                values["channels"] = int(value)
            else:
                raise PlanError(f"rule {text!r}: c must be C, C/k or a positive int, got {value!r}")
        elif key == "n":
            values["reduced_kernel_size"] = None if value == "N" else _parse_pair(value, "n")
        elif key == "min_channels":
            if not value.isdigit():
                raise PlanError(f"rule {text!r}: min_channels must be an int, got {value!r}")
            values["min_channels"] = int(value)
        elif key in ("depthwise", "grouped"):
            if value not in ("yes", "no"):
                raise PlanError(f"rule {text!r}: {key} must be yes or no, got {value!r}")
            values[key] = value == "yes"
        elif key == "min_expansion":
            try:
                values["min_expansion"] = Fraction(value)
            except (ValueError, ZeroDivisionError):
                raise PlanError(
                    f"rule {text!r}: min_expansion must be a number, got {value!r}"
                ) from None
        else:
            raise PlanError(
                f"rule {text!r}: unknown option {key!r} "
                "(known: c, n, min_channels, min_expansion, depthwise, grouped)"
            )
    return Rule(**values)  # type: ignore[arg-type]
