"""The structure of one structured convolution layer: compose, decompose, residual, cost.

A conv kernel ``W`` of shape ``(Cout, C, Nh, Nw)`` (``C`` input channels per group) is
*structured* with reduced size ``(c, nh, nw)`` when ``W = A · alpha`` for a small kernel
``alpha`` of shape ``(Cout, c, nh, nw)``, where ``A = B_C ⊗ B_Nh ⊗ B_Nw`` and ``B_K`` is the
banded ``K × k`` 0/1 matrix ``B[j, i] = 1 iff i <= j < i + K - k + 1`` (Bhalgat et al.,
NeurIPS 2020). Every operation here goes through the small Kronecker factors, one tensor axis
at a time, never through a dense ``C·N² × c·n²`` matrix.

All array operations accept numpy arrays and torch tensors alike; the torch versions are
differentiable and run on the tensor's device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Tuple, TypeVar, Union

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
IntPair = Union[int, Tuple[int, int]]

__all__ = ["Structure", "LayerCost", "banded_ones", "as_pair", "default_tolerance"]


def as_pair(value: IntPair, name: str) -> Tuple[int, int]:
    """Return ``value`` as a pair of ints; an int ``k`` becomes ``(k, k)``.

    Raises
    ------
    ValueError
        If ``value`` is neither an int nor a sequence of two ints.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        pair = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair
    ):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


@functools.lru_cache(maxsize=512)
def default_tolerance(dtype: Union[str, np.dtype, torch.dtype]) -> float:
    """Residual tolerance for weights of ``dtype``: 100 × its machine epsilon (fp32: 1.2e-5).

    What the compiler accepts as structured, and what ``export()`` checks. A structured fp32
    kernel, rounded once to fp32 and scaled per output channel (BatchNorm folding), has a
    residual near ``eps``; a kernel that merely resembles a structured one has one many orders
    of magnitude larger.
    """
    if isinstance(dtype, torch.dtype):
        return 100.0 * torch.finfo(dtype).eps
    return 100.0 * float(np.finfo(np.dtype(dtype)).eps)


def banded_ones(full: int, reduced: int) -> np.ndarray:
    """The ``full × reduced`` banded 0/1 matrix ``B[j, i] = 1 iff i <= j < i + full - reduced + 1``.

    Column ``i`` is a box of ``full - reduced + 1`` ones starting at row ``i``. The matrix has
    full column rank, so its pseudo-inverse is a left inverse.
    """
    window = full - reduced + 1
    rows = np.arange(full)[:, None]
    cols = np.arange(reduced)[None, :]
    matrix = ((rows >= cols) & (rows < cols + window)).astype(np.float64)
    matrix.flags.writeable = False
    return matrix


@functools.lru_cache(maxsize=512)
def _banded_pinv(full: int, reduced: int) -> np.ndarray:
    band = banded_ones(full, reduced)
    # full column rank: the pseudo-inverse is (BᵀB)⁻¹Bᵀ, a solve instead of an SVD
    pinv = np.linalg.solve(band.T @ band, band.T)
    pinv.flags.writeable = False
    return pinv


def _factor_like(matrix: np.ndarray, like: Array) -> Array:
    """``matrix`` as the same kind of array as ``like`` (dtype and, for torch, device)."""
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if like.is_floating_point() else torch.float64
        return torch.tensor(matrix, dtype=dtype, device=like.device)
    dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
    return matrix.astype(dtype, copy=False)


def _apply_factors(tensor: Array, channel: Array, height: Array, width: Array) -> Array:
    """Multiply axes 1, 2, 3 of a ``(Cout, k, u, v)`` tensor by the three factor matrices.

    One axis at a time (three batched matrix products, BLAS in numpy and torch alike), never
    the dense Kronecker product.
    """
    tensor = height @ (tensor @ width.T)  # (o, k, u, v) -> (o, k, h, w)
    out_channels, channels, rows, columns = tensor.shape
    # channels first, so the channel product is one large matrix product
    flat = tensor.swapaxes(0, 1).reshape(channels, out_channels * rows * columns)
    tensor = (channel @ flat).reshape(channel.shape[0], out_channels, rows, columns)
    return tensor.swapaxes(0, 1)


@dataclass(frozen=True)
class LayerCost:
    """Multiply-accumulates and parameters of one layer, original and structured.

    Attributes
    ----------
    original_macs, structured_macs
        MACs of the ordinary conv and of the reduced conv, for the whole output.
    original_params, structured_params
        Weight parameters (bias excluded) of ``W`` and of ``alpha``.
    pool_adds
        Additions of the sum-pool computed with running (separable) sums: about two adds per
        pooled element and pooled axis (an axis with window 1 costs nothing).
    """

    original_macs: int
    structured_macs: int
    original_params: int
    structured_params: int
    pool_adds: int

    @property
    def mac_ratio(self) -> float:
        """Theoretical speedup: original MACs over structured MACs."""
        return self.original_macs / self.structured_macs


@dataclass(frozen=True, init=False)
class Structure:
    """The structure of one conv (or linear) layer, with ``torch.nn.Conv2d``'s conventions.

    Parameters
    ----------
    in_channels
        Input channels of the layer, in total (as ``nn.Conv2d.in_channels``).
    kernel_size
        ``N`` or ``(Nh, Nw)``, the full kernel size; ``1`` for a Linear layer.
    reduced_channels
        ``c`` in total over all groups: ``alpha`` is the weight of
        ``nn.Conv2d(reduced_channels, out_channels, reduced_kernel_size, groups=groups)``.
    reduced_kernel_size
        ``n`` or ``(nh, nw)``, the kernel size of ``alpha``.
    groups
        Conv groups; the channel pool window never crosses a group boundary.

    Raises
    ------
    ValueError
        If a value is out of range or channels do not divide into groups; the message names it.
    """

    in_channels: int
    kernel_size: Tuple[int, int]
    reduced_channels: int
    reduced_kernel_size: Tuple[int, int]
    groups: int

    def __init__(
        self,
        in_channels: int,
        kernel_size: IntPair,
        reduced_channels: int,
        reduced_kernel_size: IntPair,
        groups: int = 1,
    ) -> None:
        for name, value in (
            ("in_channels", in_channels),
            ("reduced_channels", reduced_channels),
            ("groups", groups),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        kernel = as_pair(kernel_size, "kernel_size")
        reduced_kernel = as_pair(reduced_kernel_size, "reduced_kernel_size")
        if min(kernel) < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel}")
        if min(reduced_kernel) < 1:
            raise ValueError(f"reduced_kernel_size must be >= 1, got {reduced_kernel}")
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}")
        if reduced_channels % groups:
            raise ValueError(
                f"reduced_channels={reduced_channels} is not divisible by groups={groups}"
            )
        if reduced_channels > in_channels:
            raise ValueError(
                f"reduced_channels={reduced_channels} is larger than in_channels={in_channels}"
            )
        for axis, (full, reduced) in zip("hw", zip(kernel, reduced_kernel)):
            if reduced > full:
                raise ValueError(
                    f"reduced_kernel_size={reduced_kernel} is larger than kernel_size={kernel} "
                    f"along {axis}"
                )
        object.__setattr__(self, "in_channels", int(in_channels))
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "reduced_channels", int(reduced_channels))
        object.__setattr__(self, "reduced_kernel_size", reduced_kernel)
        object.__setattr__(self, "groups", int(groups))

    # ----------------------------------------------------------------- shapes and windows
    @property
    def group_channels(self) -> int:
        """``C``: input channels per group."""
        return self.in_channels // self.groups

    @property
    def group_reduced_channels(self) -> int:
        """``c``: reduced channels per group."""
        return self.reduced_channels // self.groups

    @property
    def pool_window(self) -> Tuple[int, int, int]:
        """``(D, Mh, Mw)``: the sum-pool window over (channel, height, width)."""
        (nh_full, nw_full), (nh, nw) = self.kernel_size, self.reduced_kernel_size
        return (
            self.group_channels - self.group_reduced_channels + 1,
            nh_full - nh + 1,
            nw_full - nw + 1,
        )

    @property
    def is_trivial(self) -> bool:
        """True when nothing is reduced (``c = C`` and ``n = N``): the pool is the identity."""
        return self.pool_window == (1, 1, 1)

    def weight_shape(self, out_channels: int) -> Tuple[int, int, int, int]:
        """Shape of the full kernel ``W`` for ``out_channels`` outputs."""
        return (out_channels, self.group_channels, *self.kernel_size)

    def alpha_shape(self, out_channels: int) -> Tuple[int, int, int, int]:
        """Shape of the small kernel ``alpha`` for ``out_channels`` outputs."""
        return (out_channels, self.group_reduced_channels, *self.reduced_kernel_size)

    # ----------------------------------------------------------------- the linear maps
    def compose(self, alpha: Array) -> Array:
        """``W = A · alpha``: the full kernel whose structure is ``alpha``.

        ``alpha`` has shape ``(Cout, c/groups, nh, nw)`` (or ``(Cout, c)`` for a Linear layer,
        giving a ``(Cout, C)`` weight).
        """
        squeeze = self._check(alpha, "alpha", self.alpha_shape)
        alpha4 = alpha[:, :, None, None] if squeeze else alpha
        weight = _apply_factors(alpha4, *self._factors(alpha4, banded_ones))
        return weight[:, :, 0, 0] if squeeze else weight

    def decompose(self, weight: Array) -> Array:
        """``alpha = A⁺ · W``: the small kernel closest to ``W`` (exact if ``W`` is structured)."""
        squeeze = self._check(weight, "weight", self.weight_shape)
        weight4 = weight[:, :, None, None] if squeeze else weight
        alpha = _apply_factors(weight4, *self._factors(weight4, _banded_pinv))
        return alpha[:, :, 0, 0] if squeeze else alpha

    def project(self, weight: Array) -> Array:
        """``A A⁺ W``: the orthogonal projection of ``W`` onto the structured kernels."""
        return self.compose(self.decompose(weight))

    def residual(self, weight: Array) -> Union[float, torch.Tensor]:
        """Relative projection error ``‖W − A A⁺ W‖_F / ‖W‖_F`` (0 for a zero kernel).

        Returns a Python float for numpy input and a differentiable 0-d tensor for torch input.
        """
        difference = weight - self.project(weight)
        if isinstance(weight, torch.Tensor):
            norm = torch.linalg.vector_norm(weight)
            return torch.linalg.vector_norm(difference) / norm.clamp_min(
                torch.finfo(norm.dtype).tiny
            )
        norm = float(np.linalg.norm(weight))
        return float(np.linalg.norm(difference) / norm) if norm > 0 else 0.0

    # ----------------------------------------------------------------- cost
    def cost(self, out_channels: int, output_size: IntPair = 1, batch: int = 1) -> LayerCost:
        """MACs and parameters of the layer producing ``batch × out_channels × output_size``.

        ``output_size`` is the conv's output ``(Ho, Wo)``; the pooled tensor is as large as the
        reduced conv's receptive field over it with stride 1, so ``pool_adds`` is an estimate
        computed on the output grid (exact for stride 1).
        """
        height, width = as_pair(output_size, "output_size")
        pixels = batch * height * width
        original_params = int(np.prod(self.weight_shape(out_channels)))
        structured_params = int(np.prod(self.alpha_shape(out_channels)))
        pooled_axes = sum(window > 1 for window in self.pool_window)
        return LayerCost(
            original_macs=original_params * pixels,
            structured_macs=structured_params * pixels,
            original_params=original_params,
            structured_params=structured_params,
            pool_adds=2 * pooled_axes * self.reduced_channels * pixels,
        )

    # ----------------------------------------------------------------- helpers
    def _factors(self, like: Array, make) -> Tuple[Array, Array, Array]:
        (height, width), (reduced_h, reduced_w) = self.kernel_size, self.reduced_kernel_size
        return (
            _factor_like(make(self.group_channels, self.group_reduced_channels), like),
            _factor_like(make(height, reduced_h), like),
            _factor_like(make(width, reduced_w), like),
        )

    def _check(self, tensor: Array, name: str, expected_shape) -> bool:
        """Validate ``tensor``'s shape; return True for a 2-D (Linear) tensor."""
        if not isinstance(tensor, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(tensor)}")
        shape = tuple(tensor.shape)
        if len(shape) == 2 and self.kernel_size == (1, 1) and self.reduced_kernel_size == (1, 1):
            expected = expected_shape(shape[0])[:2]
            squeeze = True
        elif len(shape) == 4:
            expected = expected_shape(shape[0])
            squeeze = False
        else:
            raise ValueError(
                f"{name} must be 4-D (or 2-D for a 1x1/Linear layer), got shape {shape}"
            )
        if shape != expected:
            raise ValueError(f"{name} has shape {shape}, expected {expected} for {self}")
        if self.groups > 1 and shape[0] % self.groups:
            raise ValueError(
                f"{name} has {shape[0]} output channels, not divisible by groups={self.groups}"
            )
        return squeeze

    def __str__(self) -> str:
        (height, width), (reduced_h, reduced_w) = self.kernel_size, self.reduced_kernel_size
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return (
            f"Structure(C={self.in_channels}, N={height}x{width} -> "
            f"c={self.reduced_channels}, n={reduced_h}x{reduced_w}{groups})"
        )
