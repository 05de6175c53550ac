"""Hypothesis strategies for random layer structures."""

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
