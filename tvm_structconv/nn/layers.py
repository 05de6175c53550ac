"""Structured layers that hold and train the small kernel ``alpha`` directly.

:class:`StructuredConv2d` and :class:`StructuredLinear` are drop-in replacements for
``nn.Conv2d`` and ``nn.Linear`` whose weight is always exactly structured: the only weight
parameter is ``alpha`` and the forward pass is the fast path of
:mod:`tvm_structconv.nn.functional` (sum-pool, then the reduced conv or linear), so it never
forms the full kernel. This is the paper's direct training of ``alpha`` (step 3 of training).
``from_conv`` / ``to_conv`` (``from_linear`` / ``to_linear``) convert from and to the ordinary
layers: ``alpha = A⁺ W`` one way, ``W = A alpha`` the other.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from tvm_structconv.nn.functional import (
    METHODS,
    Method,
    method_pieces,
    structured_conv2d,
    structured_linear,
)
from tvm_structconv.structure import IntPair, Structure, as_pair, banded_ones

__all__ = [
    "StructuredConv2d",
    "StructuredLinear",
    "precondition_alpha_gradients",
    "structured_parameter_groups",
]

ConvPadding = Union[str, int, Tuple[int, int]]


#: The initializations of ``alpha`` (see :func:`_initialize`).
INITS = ("projected", "matched", "pooled")


def _initialize(
    alpha: torch.Tensor, bias: Optional[torch.Tensor], structure: Structure, init: str
) -> None:
    """Initialize ``alpha`` by ``init`` and ``bias`` like the ordinary layer's.

    ``"projected"`` (the default of the layers): draw the ordinary layer's default kernel
    ``W₀`` (``nn.Conv2d`` / ``nn.Linear``: Kaiming-uniform with ``a = √5``, bound
    ``1/√(fan_in)`` of the full layer) and project it: ``alpha = A⁺ W₀``, so the composed
    kernel ``A · alpha = P W₀`` is what the two-step method's projection makes of an untrained
    kernel. It is an isotropic random kernel of the structured subspace (covariance ∝ the
    projector ``P = A A⁺``) whose entry variance is ``ρ`` times ``nn.Conv2d``'s, with ``ρ =
    (c·nh·nw) / (C·kh·kw)`` the fraction of the kernel space that is structured (0.22 at
    ``c = C/2, n = 2`` of a 3×3 kernel, 0.5 at ``n = 3``). Behind a BatchNorm the smaller norm
    raises the effective learning rate (``∝ lr / ‖W‖²``) by ``1/ρ``. Trained directly with
    :func:`precondition_alpha_gradients` it matches or beats the two-step method
    (regularize, then project) on the same budget (``docs/experiments.md`` section (e):
    77.9 ± 1.0 % against 73.3 ± 0.5 % at ``c = C/2, n = 2``, 76.3 ± 0.6 % against
    75.4 ± 1.1 % at ``n = 3``; ``"matched"`` 75.4 and 74.7 %). With plain SGD it is worse
    than ``"pooled"`` (25.6 % against 29.4 % at ``n = 2``): the larger effective rate on the
    ill-conditioned step ``A Aᵀ ∇_W``. Precondition.

    ``"matched"``: the same, rescaled so that ``A · alpha`` has ``W₀``'s norm, hence
    ``nn.Conv2d``'s entry variance.

    ``"pooled"`` (the layers' initialization before issue 17): ``nn.Conv2d``'s default on
    ``alpha`` itself (bound ``1/√(fan_in)`` of the reduced conv), divided by ``√(D·Mh·Mw)``.
    Its composed kernel has the entry variance of ``W₀`` too, but covariance ∝ ``A Aᵀ``:
    neighbouring weights share most of their ``alpha`` terms, so the kernel is nearly
    constant over its channel window (about 5 effective directions of 128 at ``c = C/2, n =
    2`` of a 64-channel 3×3 layer), and on the non-negative activations of a ReLU network the
    layer's outputs start 5–7 times larger than an ordinary layer's; trained directly, even
    preconditioned, it stays 8–15 points below the two-step method.

    ``bias`` is uniform in ``±1/√(fan_in)`` of the full layer, as the ordinary layer's.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "pooled":
        nn.init.kaiming_uniform_(alpha, a=math.sqrt(5))
        with torch.no_grad():
            alpha.div_(math.sqrt(math.prod(structure.pool_window)))
    else:
        out_channels = alpha.shape[0]
        shape = (
            structure.weight_shape(out_channels)
            if alpha.dim() == 4
            else (out_channels, structure.in_channels)
        )
        # float32 at least: the projection's solve factors are poor in half precision
        dtype = torch.promote_types(alpha.dtype, torch.float32)
        with torch.no_grad():
            weight = torch.empty(shape, dtype=dtype, device=alpha.device)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            projected = structure.decompose(weight)
            if init == "matched":
                composed_norm = torch.linalg.vector_norm(structure.compose(projected))
                projected = projected * (
                    torch.linalg.vector_norm(weight)
                    / composed_norm.clamp_min(torch.finfo(dtype).tiny)
                )
            alpha.copy_(projected)
    if bias is not None:
        bound = 1.0 / math.sqrt(structure.group_channels * math.prod(structure.kernel_size))
        nn.init.uniform_(bias, -bound, bound)


class StructuredConv2d(nn.Module):
    """A 2-D convolution whose kernel is structured: ``W = A · alpha``, trained through ``alpha``.

    The arguments mirror ``nn.Conv2d``, plus the structure.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, dilation, groups, bias, device, dtype
        As in ``nn.Conv2d``.
    reduced_channels
        ``c`` in total over all groups (``alpha`` is the weight of
        ``nn.Conv2d(reduced_channels, out_channels, reduced_kernel_size, groups=groups)``).
    reduced_kernel_size
        ``n`` or ``(nh, nw)``, the kernel size of ``alpha``.
    padding
        As in ``nn.Conv2d``: an int, a pair, ``"valid"`` or ``"same"`` (stride 1 only).
    padding_mode
        Only ``"zeros"`` is supported.
    init
        How ``alpha`` is initialized. ``"projected"`` (default): ``alpha = A⁺ W₀``, the
        projection of ``nn.Conv2d``'s default kernel ``W₀``, spread evenly over the structured
        kernels. ``"matched"``: the same rescaled to ``W₀``'s norm (``nn.Conv2d``'s variance).
        ``"pooled"``: ``nn.Conv2d``'s default on ``alpha`` divided by ``√(D·Mh·Mw)`` (the
        default before issue 17), whose composed kernels are nearly constant over the channel
        window; trained from scratch it loses 10–40 accuracy points (see :func:`_initialize`
        and ``docs/experiments.md`` section (e)). For direct training use ``"projected"``
        together with :func:`precondition_alpha_gradients`.
    method
        How the forward pass computes (:func:`~tvm_structconv.nn.functional.structured_conv2d`):
        ``"auto"`` (default) picks by the layer's shape
        (:func:`~tvm_structconv.nn.functional.choose_method`), ``"pooled"`` sum-pools then
        convolves with ``alpha``, ``"composed"`` convolves with ``W = A · alpha``, a triple of
        these picks per conv (forward, input gradient, alpha gradient). All give the same
        output and gradients up to rounding.

    Attributes
    ----------
    alpha : nn.Parameter
        The small kernel, shape ``structure.alpha_shape(out_channels)``.
    bias : nn.Parameter or None
        ``(out_channels,)``.

    Raises
    ------
    ValueError
        For a non-zero ``padding_mode``, ``"same"`` padding with stride > 1, a structure that
        does not fit (see :class:`~tvm_structconv.structure.Structure`), an unknown ``init``
        or ``method``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        reduced_channels: int,
        reduced_kernel_size: IntPair,
        stride: IntPair = 1,
        padding: ConvPadding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        init: str = "projected",
        method: Method = "auto",
    ) -> None:
        super().__init__()
        self.method = _checked_method(method)
        if padding_mode != "zeros":
            raise ValueError(
                f"StructuredConv2d supports only padding_mode='zeros', got {padding_mode!r}"
            )
        if out_channels % groups:
            raise ValueError(f"out_channels={out_channels} is not divisible by groups={groups}")
        self._structure = Structure(
            in_channels, kernel_size, reduced_channels, reduced_kernel_size, groups
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = self._structure.kernel_size
        self.stride = as_pair(stride, "stride")
        self.dilation = as_pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else as_pair(padding, "padding")
        self.groups = groups
        self._padding_lrtb = self._explicit_padding()
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.empty(self._structure.alpha_shape(out_channels), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        _initialize(self.alpha, self.bias, self._structure, init)

    @property
    def structure(self) -> Structure:
        """The layer's :class:`~tvm_structconv.structure.Structure`."""
        return self._structure

    @property
    def learning_rate_scale(self) -> float:
        """``1 / (D·Mh·Mw)``: the factor for ``alpha``'s SGD learning rate (see
        :func:`~tvm_structconv.nn.structured_parameter_groups`)."""
        return 1.0 / math.prod(self._structure.pool_window)

    @property
    def reduced_channels(self) -> int:
        """``c`` in total over all groups."""
        return self._structure.reduced_channels

    @property
    def reduced_kernel_size(self) -> Tuple[int, int]:
        """``(nh, nw)``, the kernel size of ``alpha``."""
        return self._structure.reduced_kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv with ``W = A · alpha``, computed as :attr:`method` says."""
        return structured_conv2d(
            x,
            self.alpha,
            self._structure,
            self.bias,
            stride=self.stride,
            padding=self._padding_lrtb,
            dilation=self.dilation,
            method=self.method,
        )

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, reduced_channels: int, reduced_kernel_size: IntPair
    ) -> StructuredConv2d:
        """The structured layer closest to ``conv``: ``alpha = A⁺ · conv.weight``, same bias.

        Exact (same output) when ``conv.weight`` is structured; otherwise the layer computes
        ``conv`` with its weight projected onto the structured kernels.

        Raises
        ------
        ValueError
            If ``conv`` pads with a non-zero mode or the structure does not fit it.
        """
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            tuple(conv.kernel_size),
            reduced_channels,
            reduced_kernel_size,
            stride=tuple(conv.stride),
            padding=_conv_padding(conv),
            dilation=tuple(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.alpha.copy_(layer.structure.decompose(conv.weight.detach()))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def to_conv(self) -> nn.Conv2d:
        """An ordinary ``nn.Conv2d`` with the composed kernel ``W = A · alpha`` (same output)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            device=self.alpha.device,
            dtype=self.alpha.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self._structure.compose(self.alpha.detach()))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"reduced_channels={self.reduced_channels}, "
            f"reduced_kernel_size={self.reduced_kernel_size}, stride={self.stride}, "
            f"padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.method != "auto":
            text += f", method={self.method!r}"
        return text

    def _explicit_padding(self) -> Tuple[int, int, int, int]:
        """Padding as ``(left, right, top, bottom)``, resolving ``"valid"`` and ``"same"``."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            if self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            (total_h, total_w) = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
            return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        if isinstance(self.padding, str):
            raise ValueError(
                f"padding must be an int, a pair, 'valid' or 'same', got {self.padding!r}"
            )
        pad_h, pad_w = self.padding
        return (pad_w, pad_w, pad_h, pad_h)


def _checked_method(method: Method, linear: bool = False) -> Method:
    if method != "auto" and (linear or isinstance(method, str)) and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(method, str):
        method_pieces(method)  # raises for a bad triple
    return method


def _conv_padding(conv: nn.Conv2d) -> ConvPadding:
    return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)


class StructuredLinear(nn.Module):
    """A linear layer whose weight is structured along its input features, trained via ``alpha``.

    The weight ``(out_features, in_features)`` is ``A · alpha`` for ``alpha`` of shape
    ``(out_features, reduced_features)``: a sliding sum over ``in_features − reduced_features
    + 1`` consecutive inputs, then a smaller linear layer.

    Parameters
    ----------
    in_features, out_features, bias, device, dtype
        As in ``nn.Linear``.
    reduced_features
        ``c``: the input features of ``alpha``.
    init
        ``"projected"`` (default), ``"matched"`` or ``"pooled"``, as for
        :class:`StructuredConv2d` with ``nn.Linear``'s default weight as ``W₀``.
    method
        ``"auto"`` (default), ``"pooled"`` (sliding sum, then the small linear) or
        ``"composed"`` (the linear with ``W = A · alpha``), as for :class:`StructuredConv2d`.

    Attributes
    ----------
    alpha : nn.Parameter
        ``(out_features, reduced_features)``.
    bias : nn.Parameter or None
        ``(out_features,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        reduced_features: int,
        bias: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        init: str = "projected",
        method: str = "auto",
    ) -> None:
        super().__init__()
        self.method = _checked_method(method, linear=True)
        self._structure = Structure(in_features, 1, reduced_features, 1)
        self.in_features = in_features
        self.out_features = out_features
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.empty((out_features, reduced_features), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        _initialize(self.alpha, self.bias, self._structure, init)

    @property
    def structure(self) -> Structure:
        """The layer's :class:`~tvm_structconv.structure.Structure` (1×1 kernel)."""
        return self._structure

    @property
    def learning_rate_scale(self) -> float:
        """``1 / D``: the factor for ``alpha``'s SGD learning rate (see
        :func:`~tvm_structconv.nn.structured_parameter_groups`)."""
        return 1.0 / self._structure.pool_window[0]

    @property
    def reduced_features(self) -> int:
        """``c``: the input features of ``alpha``."""
        return self._structure.reduced_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear map with ``W = A · alpha``, computed as :attr:`method` says."""
        return structured_linear(x, self.alpha, self._structure, self.bias, method=self.method)

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduced_features: int) -> StructuredLinear:
        """The structured layer closest to ``linear``: ``alpha = A⁺ · linear.weight``, same bias."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            reduced_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.alpha.copy_(layer.structure.decompose(linear.weight.detach()))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def to_linear(self) -> nn.Linear:
        """An ordinary ``nn.Linear`` with the composed weight ``W = A · alpha`` (same output)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.alpha.device,
            dtype=self.alpha.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self._structure.compose(self.alpha.detach()))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"reduced_features={self.reduced_features}, bias={self.bias is not None}"
        )


def structured_parameter_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, optimizer: str = "sgd"
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups that train ``alpha`` at the pace of an ordinary layer.

    Each pooled value sums ``K = D·Mh·Mw`` inputs, so the gradient of ``alpha`` is about
    ``√K`` times that of an ordinary kernel while ``alpha`` itself is initialized ``√K`` times
    smaller (to keep the output's variance): one SGD step changes ``alpha`` by ``K`` times more,
    relative to its size, than it changes an ordinary kernel. Behind a BatchNorm only that
    relative change matters, so plain SGD trains ``alpha`` with an effective learning rate ``K``
    times too large (132 for a 64-channel 3×3 layer at ``c = C/2, n = 2``). These groups give
    every structured layer's ``alpha`` the learning rate ``lr / K`` and the weight decay
    ``weight_decay · K`` (the same decay per step); that is SGD on ``alpha = alpha₀ / √K`` with
    ``alpha₀`` initialized like an ordinary kernel (the "equalized learning rate" of Karras et
    al., 2018). Adaptive optimizers (Adam …) normalize the gradient away, which leaves the
    ``√K`` smaller size: ``optimizer="adam"`` scales by ``1/√K`` (decay unchanged).

    This one scalar per layer was derived for the ``init="pooled"`` initialization and does
    not fix what direct training lacks: the step ``A Aᵀ ∇_W`` of plain SGD stays as
    ill-conditioned (eigenvalues of ``AᵀA`` from 0.5 to 6512 in that layer), with either init
    (on the 32×32 digits of ``benchmarks/direct_training.py``, seed 0: 29.9 % with the pooled
    init, 42.4 % with ``init="matched"``, against 74.3 % for ``"matched"`` and 76.9 % for
    ``"projected"`` with :func:`precondition_alpha_gradients`). Use that function for direct
    training.

    Parameters
    ----------
    model
        The model holding :class:`StructuredConv2d` / :class:`StructuredLinear` layers.
    lr, weight_decay
        The optimizer's learning rate and weight decay for every other parameter.
    optimizer
        ``"sgd"`` (with or without momentum) or ``"adam"``.

    Returns
    -------
    list of dict
        For ``torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, ...)``: one group of
        all other parameters, one per structured layer's ``alpha``.

    Raises
    ------
    ValueError
        For an unknown ``optimizer``.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    groups: List[Dict[str, Any]] = []
    structured = set()
    for module in model.modules():
        if isinstance(module, (StructuredConv2d, StructuredLinear)):
            scale = module.learning_rate_scale
            if optimizer == "adam":
                group = {"lr": lr * math.sqrt(scale), "weight_decay": weight_decay}
            else:
                group = {"lr": lr * scale, "weight_decay": weight_decay / scale}
            groups.append({"params": [module.alpha], **group})
            structured.add(id(module.alpha))
    others = [p for p in model.parameters() if id(p) not in structured]
    return [{"params": others, "lr": lr, "weight_decay": weight_decay}, *groups]


def _gram_inverse_factors(structure: Structure, like: torch.Tensor) -> List[torch.Tensor]:
    """``(BᵀB)⁻¹`` of the channel, height and width factors of ``A``, like ``like``."""
    (height, width), (reduced_h, reduced_w) = structure.kernel_size, structure.reduced_kernel_size
    sizes = (
        (structure.group_channels, structure.group_reduced_channels),
        (height, reduced_h),
        (width, reduced_w),
    )
    factors = []
    for full, reduced in sizes:
        band = banded_ones(full, reduced)
        factors.append(like.new_tensor(np.linalg.inv(band.T @ band)))
    return factors


def precondition_alpha_gradients(model: nn.Module) -> List[torch.utils.hooks.RemovableHandle]:
    """Make any optimizer step on ``alpha`` the projected step on the composed kernel ``W``.

    Registers on every structured layer's ``alpha`` a gradient hook ``g ← (AᵀA)⁻¹ g`` (one
    small matrix per kernel axis, the Kronecker factors of ``A``). Plain SGD on ``alpha``
    moves ``W = A·alpha`` by ``−lr·A Aᵀ ∇_W``: the Gram matrix ``AᵀA`` is far from the
    identity (with ``c = C/2`` its channel factor's eigenvalues span from about 1 to
    ``D·c``), so some directions of ``W`` learn hundreds of times faster than others. With the
    hook the step is ``−lr·A (AᵀA)⁻¹ Aᵀ ∇_W = −lr·P ∇_W``, the orthogonal projection of the
    ordinary layer's step onto the structured kernels (weight decay and momentum, applied
    by the optimizer after the hook, stay those of ``W``): direct training then follows the
    ordinary model restricted to its structure.

    Returns
    -------
    list of RemovableHandle
        One per ``alpha``; ``handle.remove()`` undoes it.
    """
    handles = []
    for module in model.modules():
        if isinstance(module, (StructuredConv2d, StructuredLinear)):
            alpha, structure = module.alpha, module.structure
            channel, rows, columns = _gram_inverse_factors(structure, alpha.detach())
            linear = alpha.dim() == 2

            def hook(grad, channel=channel, rows=rows, columns=columns, linear=linear):
                grad4 = grad[:, :, None, None] if linear else grad
                solved = torch.einsum("ij,ojhw,kh,lw->oikl", channel, grad4, rows, columns)
                return solved[:, :, 0, 0] if linear else solved

            handles.append(alpha.register_hook(hook))
    return handles
