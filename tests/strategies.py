"""Hypothesis strategies for random layer structures and conv geometries."""

from dataclasses import dataclass
from typing import Tuple

from hypothesis import strategies as st

from tvm_structconv.structure import Structure


@st.composite
def structures(draw, max_channels: int = 8, max_kernel: int = 4, allow_groups: bool = True):
    """A random valid :class:`Structure` (rectangular kernels, groups and depthwise included)."""
    groups = draw(st.integers(1, 3)) if allow_groups else 1
    per_group = draw(st.integers(1, max_channels))
    reduced = draw(st.integers(1, per_group))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    reduced_kernel = (draw(st.integers(1, kernel[0])), draw(st.integers(1, kernel[1])))
    return Structure(per_group * groups, kernel, reduced * groups, reduced_kernel, groups)


#: The drawn arguments of a ``gradcheck`` of ``structured_conv2d``, small enough for float64
#: finite differences: structure, stride, padding ``(left, right, top, bottom)``, dilation and
#: whether the input is channels-last.
GRADCHECK_CONVS = (
    structures(max_channels=3, max_kernel=3),
    st.integers(1, 2),
    st.tuples(*[st.integers(0, 2)] * 4),
    st.integers(1, 2),
    st.booleans(),
)


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding and dilation of a conv, each drawn per axis, and the input's extra size.

    Attributes
    ----------
    stride, dilation
        ``(height, width)``.
    padding
        ``(top, left, bottom, right)``, as in Relax's ``conv2d`` attributes.
    extra
        Input rows and columns beyond the fewest that give one output without padding.
    """

    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    extra: Tuple[int, int]

    def input_size(self, kernel_size: Tuple[int, int]) -> Tuple[int, int]:
        """``(H, W)`` of an input for a conv of ``kernel_size`` with this geometry."""
        return tuple(d * (k - 1) + 1 + e for d, k, e in zip(self.dilation, kernel_size, self.extra))


@st.composite
def conv_geometries(
    draw, max_stride: int = 3, max_padding: int = 2, max_dilation: int = 2, max_extra: int = 4
):
    """A :class:`ConvGeometry` whose two axes are drawn independently (``(2, 1)`` strides …)."""

    def pair(low: int, high: int) -> Tuple[int, int]:
        return draw(st.tuples(st.integers(low, high), st.integers(low, high)))

    return ConvGeometry(
        stride=pair(1, max_stride),
        padding=draw(st.tuples(*[st.integers(0, max_padding)] * 4)),
        dilation=pair(1, max_dilation),
        extra=pair(0, max_extra),
    )


def output_channels(groups: int):
    """Output channel counts of a conv with ``groups``: a few per group, and counts of 6 to 36
    that are mostly not whole vectors of 4, 8 or 16 lanes (the vector block's remainder)."""
    return st.sampled_from([1, 2, 3, 5, 6, 12]).map(lambda per_group: per_group * groups)
