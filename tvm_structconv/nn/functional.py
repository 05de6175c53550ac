"""Structured ops in torch: sum-pool then the reduced conv or linear, or the composed kernel.

Two ways compute the same function. ``"pooled"`` sum-pools the input and convolves with
``alpha``: it never forms the full kernel ``W``, has the structured layer's MACs, and is the
oracle for the compiler's tests. ``"composed"`` forms ``W = A·alpha`` (a few adds in weight
space) and runs the ordinary conv or linear; its backward gives ``∇alpha = Aᵀ ∇W`` through the
window sums. Which one is faster for training depends on the layer's shape: see
:func:`choose_method`.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from tvm_structconv.structure import IntPair, Structure, as_pair

__all__ = [
    "METHODS",
    "window_sum",
    "window_sum_adjoint",
    "sum_pool",
    "compose_kernel",
    "choose_method",
    "method_pieces",
    "structured_conv2d",
    "structured_linear",
]

Padding = Union[int, Tuple[int, int], Tuple[int, int, int, int]]

#: How :func:`structured_conv2d` / :func:`structured_linear` compute (see :func:`choose_method`).
METHODS = ("auto", "pooled", "composed")
#: A method name, or per conv of :func:`structured_conv2d` (forward, input gradient, alpha
#: gradient) ``"pooled"`` or ``"composed"``.
Method = Union[str, Tuple[str, str, str]]


def _padding_lrtb(padding: Padding) -> Tuple[int, int, int, int]:
    """Padding as ``(left, right, top, bottom)``, the order of ``torch.nn.functional.pad``."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(padding)
    if len(padding) == 2:
        return (padding[1], padding[1], padding[0], padding[0])
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(
        f"padding must be an int, (ph, pw) or (left, right, top, bottom), got {padding!r}"
    )


def window_sum(x: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """Sums of ``size`` elements of ``x`` spaced ``dilation`` apart along ``dim``, stride 1.

    ``y[i] = Σ_{k<size} x[i + k·dilation]``, so ``dim`` shrinks by ``dilation·(size − 1)``.
    Differentiable; its backward is :func:`window_sum_adjoint` (and the other way round), not
    autograd through the slices, which would zero-fill a full-size gradient for each.
    See :func:`_window_sum` for how it sums.
    """
    return x if size == 1 else _WindowSum.apply(x, dim, size, dilation)


def window_sum_adjoint(grad: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """The adjoint of :func:`window_sum`: ``dim`` grows back by ``dilation·(size − 1)``.

    ``x̄[j] = Σ_{k<size} ȳ[j − k·dilation]``: the same window sum over ``ȳ`` zero-padded by
    ``dilation·(size − 1)`` on both sides. Differentiable (its backward is the window sum).
    """
    return grad if size == 1 else _WindowSumAdjoint.apply(grad, dim, size, dilation)


class _WindowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, size, dilation):  # type: ignore[override]
        ctx.window = (dim, size, dilation)
        return _window_sum(x, dim, size, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return window_sum_adjoint(grad, *ctx.window), None, None, None


class _WindowSumAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, dim, size, dilation):  # type: ignore[override]
        ctx.window = (dim, size, dilation)
        return _window_sum_adjoint(grad, dim, size, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return window_sum(grad, *ctx.window), None, None, None


def _window_sum(x: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """Sums of ``size`` elements of ``x`` spaced ``dilation`` apart along ``dim``, stride 1.

    ``y[i] = Σ_{k<size} x[i + k·dilation]``, so ``dim`` shrinks by ``dilation·(size − 1)``. Done
    with running sums by doubling (sums of 1, 2, 4 … elements, then the binary digits of
    ``size``): about ``2·log2(size)`` strided adds, whatever the window, and no rounding
    error that grows with the window as a cumulative-sum difference would have.
    """
    if size == 1:
        return x
    length = x.shape[dim] - dilation * (size - 1)
    block, span, total, offset = x, 1, None, 0  # block[i] = Σ_{k<span} x[i + k·dilation]
    remaining = size
    while True:
        if remaining & 1:
            part = block.narrow(dim, offset * dilation, length)
            total = part if total is None else total + part
            offset += span
        remaining >>= 1
        if not remaining:
            return total
        shift = span * dilation
        block = block.narrow(dim, 0, block.shape[dim] - shift) + block.narrow(
            dim, shift, block.shape[dim] - shift
        )
        span *= 2


def _window_sum_adjoint(grad: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    if size == 1:
        return grad
    margin = dilation * (size - 1)
    length = grad.shape[dim]
    if size == 2 and length >= margin:
        # one pass, no padded copy: the ends are the gradient's, the middle one add
        shape = list(grad.shape)
        shape[dim] += margin
        out = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=_format(grad))
        out.narrow(dim, 0, margin).copy_(grad.narrow(dim, 0, margin))
        out.narrow(dim, length, margin).copy_(grad.narrow(dim, length - margin, margin))
        inner = length - margin
        torch.add(
            grad.narrow(dim, margin, inner),
            grad.narrow(dim, 0, inner),
            out=out.narrow(dim, margin, inner),
        )
        return out
    pad = [0, 0] * (grad.dim() - 1 - dim % grad.dim()) + [margin, margin]
    return _window_sum(F.pad(grad, pad), dim, size, dilation)


def _format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor laid out so (and not also contiguous)."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _pool_channels(x: torch.Tensor, structure: Structure, adjoint: bool) -> torch.Tensor:
    """Window sum (or its adjoint) over the channels of ``x``, inside each group."""
    depth = structure.pool_window[0]
    if depth == 1:
        return x
    batch, channels, height, width = x.shape
    grouped = x.reshape(batch, structure.groups, channels // structure.groups, height, width)
    pooled = (_window_sum_adjoint if adjoint else _window_sum)(grouped, 2, depth)
    return pooled.reshape(batch, -1, height, width)


def _pool(x: torch.Tensor, structure: Structure, dilation: Tuple[int, int]) -> torch.Tensor:
    """Window sums of ``x`` over height, width (dilated) and the channels of each group."""
    _, window_h, window_w = structure.pool_window
    x = _window_sum(x, 2, window_h, dilation[0])
    x = _window_sum(x, 3, window_w, dilation[1])
    return _pool_channels(x, structure, adjoint=False)


def _pool_backward(
    grad: torch.Tensor,
    structure: Structure,
    dilation: Tuple[int, int],
    padding: Tuple[int, int, int, int],
) -> torch.Tensor:
    """The gradient of ``x`` from that of ``sum_pool(zero_pad(x, padding))``.

    Along a spatial axis the adjoint is a window sum of the gradient zero-padded by
    ``m = dilation·(window − 1)`` on both sides, then cropped by the input's padding: one
    ``F.pad`` by ``m − padding`` (negative: a crop), nothing when the input was padded by
    ``m`` (a 3×3 conv with padding 1 pooled by 2×2), so the result is a contiguous window sum.
    """
    left, right, top, bottom = padding
    _, window_h, window_w = structure.pool_window
    for dim, window, step, (before, after) in (
        (2, window_h, dilation[0], (top, bottom)),
        (3, window_w, dilation[1], (left, right)),
    ):
        margin = step * (window - 1)
        if (before, after) != (margin, margin):
            pad = [0, 0] * (3 - dim) + [margin - before, margin - after]
            grad = F.pad(grad, pad)
        grad = _window_sum(grad, dim, window, step)
    return _pool_channels(grad, structure, adjoint=True)


class _PaddedSumPool(torch.autograd.Function):
    """``sum_pool(zero_pad(x))`` with a hand-written backward: window sums of the gradient.

    Autograd through the strided adds would zero-fill a full-size gradient for every slice;
    the adjoint is the same few adds on the gradient instead (:func:`_pool_backward`).
    """

    @staticmethod
    def forward(ctx, x, structure, dilation, padding):  # type: ignore[override]
        ctx.structure, ctx.dilation, ctx.padding = structure, dilation, padding
        padded = F.pad(x, padding) if any(padding) else x
        return _pool(padded, structure, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _pool_backward(grad, ctx.structure, ctx.dilation, ctx.padding), None, None, None


def sum_pool(
    x: torch.Tensor, structure: Structure, dilation: IntPair = 1, padding: Padding = 0
) -> torch.Tensor:
    """Sum-pool ``x`` over (channel, height, width) with the window ``structure.pool_window``.

    The channel window slides within each group of ``structure.group_channels`` channels and
    never crosses into the next group; the spatial window is dilated by ``dilation``, stride 1,
    after zero ``padding`` (as in :func:`structured_conv2d`). ``x`` of shape
    ``(B, in_channels, H, W)`` gives ``(B, reduced_channels, H' − dh·(Mh−1), W' − dw·(Mw−1))``
    for the padded size ``H' × W'``. Separable running sums (:func:`window_sum`), forward and
    backward, in any memory format.
    """
    if x.dim() != 4 or x.shape[1] != structure.in_channels:
        raise ValueError(
            f"input must be (B, {structure.in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    return _PaddedSumPool.apply(x, structure, as_pair(dilation, "dilation"), _padding_lrtb(padding))


def compose_kernel(alpha: torch.Tensor, structure: Structure) -> torch.Tensor:
    """``W = A · alpha`` by adjoint window sums, differentiable with ``∇alpha = Aᵀ ∇W``.

    ``W`` is the full 3-D convolution of each ``alpha[o]`` with a ``D × Mh × Mw`` box of ones,
    i.e. the adjoint window sum (:func:`window_sum_adjoint`) along the channel, height and
    width axes in turn; its backward is the window sums of ``∇W``. It equals
    :meth:`Structure.compose <tvm_structconv.structure.Structure.compose>` but costs a few
    adds per weight instead of products with the ``C × c`` band (the identity when ``c = C``).
    A 2-D ``alpha`` ``(out_features, c)`` gives the ``(out_features, C)`` weight of a linear
    layer.
    """
    depth, height, width = structure.pool_window
    weight = window_sum_adjoint(alpha, 1, depth)
    if alpha.dim() == 2:
        return weight
    return window_sum_adjoint(window_sum_adjoint(weight, 2, height), 3, width)


def _alpha_gradient(weight_grad: torch.Tensor, structure: Structure) -> torch.Tensor:
    """``Aᵀ ∇W``: window sums of the full kernel's gradient over its three axes."""
    depth, height, width = structure.pool_window
    return _window_sum(_window_sum(_window_sum(weight_grad, 1, depth), 2, height), 3, width)


class _MixedConv(torch.autograd.Function):
    """``conv2d(x, A·alpha)`` whose three convs each run pooled or composed.

    ``pooled = (forward, input gradient, alpha gradient)``: True runs that conv on the pooled
    tensor ``S`` with ``alpha`` (then the pool's adjoint for the input gradient), False on
    ``x`` with the composed kernel ``W`` (then ``Aᵀ`` for the alpha gradient). All eight are
    the same linear map and its exact adjoints: they differ in rounding and speed only.
    ``padding`` is symmetric ``(ph, pw)``. ``S`` is kept from the forward when it ran pooled,
    otherwise formed again from ``x`` in the backward if a pooled gradient needs it.
    """

    @staticmethod
    def forward(ctx, x, alpha, bias, structure, stride, padding, dilation, pooled):  # type: ignore[override]
        ctx.structure, ctx.geometry, ctx.pooled = structure, (stride, padding, dilation), pooled
        ctx.has_bias = bias is not None
        weight = None if all(pooled) else compose_kernel(alpha, structure)
        if pooled[0]:
            s = _padded_pool(x, structure, padding, dilation)
            out = F.conv2d(s, alpha, bias, stride, 0, dilation, structure.groups)
        else:
            s = None
            out = F.conv2d(x, weight, bias, stride, padding, dilation, structure.groups)
        ctx.save_for_backward(x, alpha, weight, s)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, alpha, weight, s = ctx.saved_tensors
        structure, (stride, padding, dilation), pooled = ctx.structure, ctx.geometry, ctx.pooled
        want = ctx.needs_input_grad[:2]  # (x, alpha)
        grads = {}  # (ran pooled, 0: input / 1: weight) -> gradient
        for use_pooled in (True, False):
            mask = [want[0] and pooled[1] == use_pooled, want[1] and pooled[2] == use_pooled]
            if not any(mask):
                continue
            if use_pooled and s is None:
                s = _padded_pool(x, structure, padding, dilation)
            source, kernel, pad = (s, alpha, (0, 0)) if use_pooled else (x, weight, padding)
            result = torch.ops.aten.convolution_backward(
                grad, source, kernel, None, stride, pad, dilation, False, [0, 0],
                structure.groups, [*mask, False],
            )  # fmt: skip
            grads[use_pooled, 0], grads[use_pooled, 1] = result[0], result[1]
        grad_x = grad_alpha = grad_bias = None
        if want[0]:
            grad_x = grads[pooled[1], 0]
            if pooled[1]:
                lrtb = (padding[1], padding[1], padding[0], padding[0])
                grad_x = _pool_backward(grad_x, structure, dilation, lrtb)
        if want[1]:
            grad_alpha = grads[pooled[2], 1]
            if not pooled[2]:
                grad_alpha = _alpha_gradient(grad_alpha, structure)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_alpha, grad_bias, None, None, None, None, None


def _padded_pool(
    x: torch.Tensor, structure: Structure, padding: Tuple[int, int], dilation: Tuple[int, int]
) -> torch.Tensor:
    """``S``: the sum-pool of ``x`` zero-padded by the symmetric ``(ph, pw)``.

    Along an axis padded by exactly ``dilation·(window − 1)`` (a 3×3 conv's padding 1 pooled
    by 2) that is the adjoint window sum, done without a padded copy.
    """
    _, window_h, window_w = structure.pool_window
    for dim, window, step, pad in (
        (2, window_h, dilation[0], padding[0]),
        (3, window_w, dilation[1], padding[1]),
    ):
        if pad and pad == step * (window - 1):
            x = _window_sum_adjoint(x, dim, window, step)
        else:
            x = _window_sum(
                F.pad(x, [0, 0] * (3 - dim) + [pad, pad]) if pad else x, dim, window, step
            )
    return _pool_channels(x, structure, adjoint=False)


def choose_method(structure: Structure, x: torch.Tensor, alpha: torch.Tensor) -> Method:
    """How :func:`structured_conv2d` computes a layer when asked for ``"auto"``.

    A fixed rule from the structure, measured on ResNet-18's 3×3 convs with ``c = C, n = 2``
    (``benchmarks/training_speed.py``, ``docs/experiments.md`` section (e)); no timing at
    run time:

    * ``c = C`` (a spatial window only): ``"pooled"``. Forward + backward at batch 32 it was
      1.01–1.52× as fast as ``nn.Conv2d`` on the four stride-1 3×3 layers of ResNet-18 and
      0.86–1.49× on the three strided ones (runs on a loaded machine, noise about ±20 %),
      and a ResNet-18 training step 1.33–1.42× faster. Mixing per conv
      (``("pooled", "composed", "pooled")`` at 56², ``("composed", "composed", "pooled")`` at
      stride 2, each piece the faster one when timed alone) lost at stride 2 (0.74–0.86×):
      two separate oneDNN backward calls each convert the gradient to their blocked layout,
      and ``S`` is formed again in the backward;
    * a conv with a channel window (``c < C``), while training: ``"composed"``. Sliding sums
      over ``D = C − c + 1`` channels cost ``~2·log2(D)`` passes over the input, forward and
      backward (section (c): a small CNN trained through the pooled layers took 2.5–3.8× an
      ordinary step; not measured on ResNet-18); composed costs one ``nn.Conv2d``;
    * a linear layer (a 2-D ``alpha``): ``"pooled"``, training or not. The sliding sums run
      over the input's ``batch × C`` features, composing runs them over the ``out × C``
      weight, and the pooled product has half the MACs at ``c = C/2``: forward + backward,
      one thread, ``c = C/2``, pooled took 0.71× of ``nn.Linear`` (512→1000, batch 32),
      0.50× (4096→4096, batch 32) and 0.59× (512→1000, batch 4096); composed 2.4×, 15× and
      1.0× (``benchmarks/training_speed.py``, part ``linear``);
    * no gradient wanted (inference): ``"pooled"``, the structured op itself.

    ``x`` and ``alpha`` say whether a gradient is wanted.
    """
    wants_gradient = torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad)
    if wants_gradient and structure.pool_window[0] > 1 and alpha.dim() == 4:
        return "composed"
    return "pooled"


def method_pieces(method: Method) -> Tuple[bool, bool, bool]:
    """``method`` as (forward, input gradient, alpha gradient), True where it runs pooled.

    Raises
    ------
    ValueError
        Unless ``method`` is ``"pooled"``, ``"composed"`` or a triple of those.
    """
    names = (method,) * 3 if isinstance(method, str) else tuple(method)
    if len(names) != 3 or any(name not in ("pooled", "composed") for name in names):
        raise ValueError(
            f"method must be one of {METHODS} or a triple of 'pooled'/'composed', got {method!r}"
        )
    return tuple(name == "pooled" for name in names)  # type: ignore[return-value]


def structured_conv2d(
    x: torch.Tensor,
    alpha: torch.Tensor,
    structure: Structure,
    bias: Optional[torch.Tensor] = None,
    *,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    method: Method = "auto",
) -> torch.Tensor:
    """``conv2d(x, structure.compose(alpha), bias, stride, padding, dilation, groups)``, fast.

    ``method="pooled"`` computes ``conv2d(S, alpha, bias, stride, dilation, groups)`` with
    ``S = sum_pool(zero_pad(x, padding))``, which is the same by linearity, and its gradients
    the same way (the input's through the pool's adjoint); ``method="composed"`` convolves
    ``x`` with :func:`compose_kernel` (the alpha gradient is ``Aᵀ ∇W``). A triple such as
    ``("composed", "composed", "pooled")`` picks per conv: the forward, the input gradient
    and the alpha gradient. ``"auto"`` asks :func:`choose_method`. All give the same values
    and gradients up to rounding.

    Parameters
    ----------
    x
        Input ``(B, in_channels, H, W)``.
    alpha
        Small kernel ``(Cout, reduced_channels / groups, nh, nw)``.
    structure
        The layer's structure.
    bias
        Optional ``(Cout,)`` bias.
    stride, dilation
        As in ``torch.nn.functional.conv2d``.
    padding
        ``p``, ``(ph, pw)`` or asymmetric ``(left, right, top, bottom)`` zero padding.
    method
        ``"auto"``, ``"pooled"``, ``"composed"`` or a triple of the last two.

    Raises
    ------
    ValueError
        For an input or ``alpha`` of the wrong shape, a bad ``padding`` or ``method``.
    """
    if x.dim() != 4 or x.shape[1] != structure.in_channels:
        raise ValueError(
            f"input must be (B, {structure.in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    if tuple(alpha.shape) != structure.alpha_shape(alpha.shape[0]):
        raise ValueError(
            f"alpha has shape {tuple(alpha.shape)}, expected "
            f"{structure.alpha_shape(alpha.shape[0])} for {structure}"
        )
    if method == "auto":
        method = choose_method(structure, x, alpha)
    pieces = method_pieces(method)
    left, right, top, bottom = _padding_lrtb(padding)
    if (left, top) != (right, bottom):
        x, left, top = F.pad(x, (left, right, top, bottom)), 0, 0
    geometry = (as_pair(stride, "stride"), (top, left), as_pair(dilation, "dilation"))
    return _MixedConv.apply(x, alpha, bias, structure, *geometry, pieces)


def structured_linear(
    x: torch.Tensor,
    alpha: torch.Tensor,
    structure: Structure,
    bias: Optional[torch.Tensor] = None,
    method: str = "auto",
) -> torch.Tensor:
    """``linear(x, structure.compose(alpha), bias)``, fast.

    ``method="pooled"``: a sliding sum over the features, then a small linear with ``alpha``;
    ``"composed"``: the ordinary linear with :func:`compose_kernel`; ``"auto"`` picks by
    :func:`choose_method`. ``x`` has ``structure.in_channels`` features in its last axis;
    ``alpha`` is ``(out_features, reduced_channels)``.
    """
    if structure.kernel_size != (1, 1) or structure.groups != 1:
        raise ValueError(f"a linear layer needs a 1x1 structure with groups=1, got {structure}")
    if x.shape[-1] != structure.in_channels:
        raise ValueError(f"input has {x.shape[-1]} features, expected {structure.in_channels}")
    if tuple(alpha.shape) != (alpha.shape[0], structure.reduced_channels):
        raise ValueError(
            f"alpha has shape {tuple(alpha.shape)}, expected "
            f"(out_features, {structure.reduced_channels})"
        )
    if method == "auto":
        method = choose_method(structure, x, alpha)
    if method == "composed":
        return F.linear(x, compose_kernel(alpha, structure), bias)
    if method != "pooled":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    leading = x.shape[:-1]
    pooled = sum_pool(x.reshape(-1, structure.in_channels, 1, 1), structure)
    return F.linear(pooled.reshape(*leading, structure.reduced_channels), alpha, bias)
