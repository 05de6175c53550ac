"""The layers a plan chooses for, and each one's candidate structures.

A layer is a conv or Linear weight of the imported model, in the order the compiled model calls
its kernels. Its candidates form a small grid around the structures the compiler turns into
speed: reduced channels per group ``c ∈ {C, C/2, C/4}`` and reduced kernel ``n ∈ {N, N − 1}``
(spatial axes of size 1 stay 1), the first of them (``c = C, n = N``) being "leave it".

The grid is read as a few *families* (``c = C/2, n = N − 1`` …): one family gives every layer
its member of the family, so the latency table compiles one whole-model variant per family and
takes each layer's kernel from it (:mod:`tvm_structconv.planner.table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Tuple

from tvm_structconv.structure import Structure

__all__ = ["FAMILIES", "Candidate", "Family", "Layer"]


@dataclass(frozen=True)
class Family:
    """A relative candidate: ``c = fraction · C`` (per group, at least 1), ``n = N − shrink``.

    Attributes
    ----------
    fraction
        Reduced channels per group as a fraction of the layer's.
    shrink
        How much each spatial kernel axis larger than 1 shrinks (never below 1).
    """

    fraction: Fraction
    shrink: int

    @property
    def label(self) -> str:
        """``"c=C/2,n=N-1"``."""
        channels = "C" if self.fraction == 1 else f"C/{self.fraction.denominator}"
        kernel = "N" if self.shrink == 0 else f"N-{self.shrink}"
        return f"c={channels},n={kernel}"


#: The grid, "leave it" first.
FAMILIES: Tuple[Family, ...] = tuple(
    Family(Fraction(1, denominator), shrink) for denominator in (1, 2, 4) for shrink in (0, 1)
)


@dataclass(frozen=True)
class Candidate:
    """One choice for one layer: its structure (trivial for "leave it") and the family's label."""

    structure: Structure
    family: str

    @property
    def is_leave(self) -> bool:
        """Whether this is "leave it" (the ordinary conv)."""
        return self.structure.is_trivial

    def weight_bytes(self, out_channels: int, itemsize: int = 4) -> int:
        """Bytes of the kernel's weights (``alpha``, or ``W`` for "leave it")."""
        return math.prod(self.structure.alpha_shape(out_channels)) * itemsize

    def describe(self) -> str:
        """``"leave"`` or ``"c=32,n=2x2"`` (``c`` in total, over all groups)."""
        if self.is_leave:
            return "leave"
        kernel = "x".join(map(str, self.structure.reduced_kernel_size))
        return f"c={self.structure.reduced_channels},n={kernel}"


@dataclass(frozen=True)
class Layer:
    """A conv or Linear layer of the model, as the compiled model calls it.

    Attributes
    ----------
    name
        The weight's name (``layer1.0.conv1.weight``).
    kind
        ``"conv2d"`` or ``"linear"``.
    weight_shape
        ``(Cout, C/groups, Nh, Nw)`` (``(Cout, C)`` for a Linear layer).
    groups
        Conv groups.
    output_shape
        Shape of the compiled kernel's output (NHWC on CPUs).
    """

    name: str
    kind: str
    weight_shape: Tuple[int, ...]
    groups: int
    output_shape: Tuple[int, ...]

    @property
    def module_name(self) -> str:
        """The module's name (the weight's without ``.weight``), as plans name layers."""
        return self.name[: -len(".weight")] if self.name.endswith(".weight") else self.name

    @property
    def kernel_size(self) -> Tuple[int, int]:
        """``(Nh, Nw)``; ``(1, 1)`` for a Linear layer."""
        return (1, 1) if len(self.weight_shape) == 2 else tuple(self.weight_shape[2:4])

    @property
    def in_channels(self) -> int:
        """Input channels in total."""
        return self.weight_shape[1] * self.groups

    def candidate(self, family: Family) -> Candidate:
        """This layer's member of ``family`` (it may equal another family's member)."""
        per_group = self.weight_shape[1]
        reduced = max(1, int(per_group * family.fraction))
        kernel = tuple(k if k == 1 else max(1, k - family.shrink) for k in self.kernel_size)
        structure = Structure(
            self.in_channels, self.kernel_size, reduced * self.groups, kernel, self.groups
        )
        return Candidate(structure, family.label)

    def candidates(self) -> List[Candidate]:
        """The distinct candidates of :data:`FAMILIES`, "leave it" first."""
        found: List[Candidate] = []
        for family in FAMILIES:
            candidate = self.candidate(family)
            if all(other.structure != candidate.structure for other in found):
                found.append(candidate)
        return found
