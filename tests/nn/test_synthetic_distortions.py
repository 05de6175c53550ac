"""The generated digits' distortions, measured from what is drawn (nn mutation survivors).

The affine map of a drawing is read back from the rendered output: drawn through it, an image
whose channels are the glyph's own x and y coordinates (and ones) shows at every output pixel
inside the glyph the glyph point sampled there (bilinear interpolation of a linear function is
exact), so a least-squares fit gives the map. The rest of the pipeline (clutter, stroke blur,
contrast, noise, centring) is checked against a numpy model of the documented steps, with the
drawings themselves taken from the generator's own calls.
"""

import math

import numpy as np
import pytest
import torch

from tvm_structconv.nn import synthetic
from tvm_structconv.nn.synthetic import GLYPHS, distorted_digits

#: The documented distortion ranges: rotation ±0.45 rad (about ±26°), scale 0.8–1.25 per axis,
#: shear ±0.35 (both times the drawing's ``spread``), shift ±0.25 glyph heights times spread;
#: the glyph's half-height on the canvas is its scale over ZOOM (it spans about half of it).
ANGLE, SCALE, SHEAR, SHIFT, ZOOM = 0.45, (0.8, 1.25), 0.35, 0.25, 2.2


def _in_and_filling(values, low, high, slack=0.1):
    """Every value in ``[low, high]`` (to float32 rounding), and both ends of it reached."""
    values = np.asarray(values)
    tol = 1e-4 * max(1.0, abs(low), abs(high))
    span = high - low
    assert values.min() >= low - tol and values.max() <= high + tol, (values.min(), values.max())
    assert values.min() < low + slack * span and values.max() > high - slack * span, (
        values.min(),
        values.max(),
    )


def test_uniform_draws_fill_their_range_in_float64():
    generator = torch.Generator().manual_seed(0)
    draws = synthetic._uniform(generator, 4000, -0.45, 0.45)
    assert draws.dtype == torch.float64 and draws.shape == (4000,)
    _in_and_filling(draws.numpy(), -0.45, 0.45, slack=0.01)
    assert abs(draws.mean().item()) < 0.02  # uniform: centred on the middle of the range


def _coordinate_glyphs(count, side=8):
    """``(count, 3, side, side)``: each pixel's glyph-space x, y (pixel centres) and 1."""
    centres = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)]).expand(count, 3, side, side).contiguous()


def _measured_maps(drawn, size):
    """Per image, ``(A, t)`` with glyph point ``= A · canvas point + t``, fitted to ``drawn``."""
    centres = (2 * np.arange(size) + 1) / size - 1  # canvas pixel centres (align_corners=False)
    out_y, out_x = np.meshgrid(centres, centres, indexing="ij")
    maps = []
    for image in drawn.numpy().astype(np.float64):
        inside = np.abs(image[2] - 1) < 1e-5  # every bilinear tap inside the glyph
        assert inside.sum() >= 10
        design = np.stack([out_x[inside], out_y[inside], np.ones(inside.sum())], axis=1)
        target = np.stack([image[0][inside], image[1][inside]], axis=1)
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        assert np.abs(design @ solution - target).max() < 1e-4  # the map is affine
        maps.append((solution[:2].T, solution[2]))
    return maps


@pytest.mark.parametrize("spread", [1.0, 2.0])
def test_affine_draw_rotates_scales_shears_and_shifts_within_the_documented_ranges(spread):
    count, size = 400, 32
    generator = torch.Generator().manual_seed(7)
    drawn = synthetic._affine_draw(_coordinate_glyphs(count), size, generator, spread)
    assert drawn.shape == (count, 3, size, size)
    angles, scales_x, scales_y, shears, shifts = [], [], [], [], []
    for a, t in _measured_maps(drawn, size):
        # a = ZOOM · diag(1/sx, 1/sy) · [[cos, -sin + shear], [sin, cos]]
        angle = math.atan2(a[1, 0], a[1, 1])
        scale_y = ZOOM / math.hypot(a[1, 0], a[1, 1])
        scale_x = ZOOM * math.cos(angle) / a[0, 0]
        angles.append(angle)
        scales_x.append(scale_x)
        scales_y.append(scale_y)
        shears.append(a[0, 1] * scale_x / ZOOM + math.sin(angle))
        shifts.extend(t / (ZOOM * spread))
    _in_and_filling(angles, -ANGLE * spread, ANGLE * spread)
    _in_and_filling(scales_x, *SCALE)
    _in_and_filling(scales_y, *SCALE)
    _in_and_filling(shears, -SHEAR * spread, SHEAR * spread)
    _in_and_filling(shifts, -SHIFT, SHIFT)


def test_an_undistorted_symmetric_glyph_is_drawn_centred_and_symmetric():
    """``spread=0``: no rotation, shear or shift; the 8 (symmetric both ways) stays symmetric."""
    eight = synthetic._glyph_tensor()[8:9].expand(50, 1, 7, 5)
    drawn = synthetic._affine_draw(eight, 32, torch.Generator().manual_seed(1), spread=0.0)
    assert torch.isfinite(drawn).all() and drawn.amax() > 0.9
    assert torch.allclose(drawn, drawn.flip(-1), atol=1e-5)
    assert torch.allclose(drawn, drawn.flip(-2), atol=1e-5)
    # the glyph spans scale / ZOOM of the canvas's half-height, scale in 0.8-1.25
    rows = (drawn[:, 0] > 1e-6).any(dim=-1).sum(dim=-1).numpy() / 32
    assert rows.min() >= SCALE[0] / ZOOM - 2 / 32 and rows.max() <= SCALE[1] / ZOOM + 2 / 32


class _Spy:
    """Wraps ``synthetic._affine_draw``: each call's glyphs, spread and drawing."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.draw = synthetic._affine_draw
        monkeypatch.setattr(synthetic, "_affine_draw", self)

    def __call__(self, glyphs, size, generator, spread):
        drawn = self.draw(glyphs, size, generator, spread)
        self.calls.append((glyphs.clone(), spread, drawn.clone()))
        return drawn


def test_the_digit_is_drawn_with_spread_one_and_each_distractor_with_spread_two(monkeypatch):
    spy = _Spy(monkeypatch)
    images, labels = distorted_digits(32, seed=5)  # the default clutter: two distractors
    assert [spread for _, spread, _ in spy.calls] == [1.0, 2.0, 2.0]
    glyphs = synthetic._glyph_tensor()
    assert torch.equal(spy.calls[0][0], glyphs[labels])  # the digit is the label's glyph


def _window(part):
    """``(glyph, first row)`` of a part that is 3 consecutive rows of one glyph, else ``None``."""
    glyphs = synthetic._glyph_tensor()[:, 0]
    found = [
        (g, start)
        for g in range(10)
        for start in range(7)
        if torch.equal(part, torch.where(_rows(start), glyphs[g], torch.zeros(())))
    ]
    return found


def _rows(start):
    return ((torch.arange(7) >= start) & (torch.arange(7) < start + 3))[:, None]


def test_each_distractor_is_three_consecutive_rows_of_some_glyph(monkeypatch):
    """Rows 1-3 up to 4-6 (a "quarter-to-half" of a glyph), of every digit, 0 included."""
    spy = _Spy(monkeypatch)
    distorted_digits(300, seed=2, clutter=3)
    assert len(spy.calls) == 4
    starts, sources = set(), set()
    for parts, _, _ in spy.calls[1:]:
        for part in parts[:, 0]:
            matches = _window(part)
            assert matches, part
            starts.update(start for _, start in matches)
            if len(matches) == 1:
                sources.add(matches[0][0])
    assert starts == {1, 2, 3, 4}
    assert sources == set(range(10))


def _box3(images):
    """3×3 mean with zero padding (``avg_pool2d(·, 3, 1, 1)``, padding counted), numpy."""
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1)])
    h, w = images.shape[1:]
    return sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9


def test_clutter_blur_contrast_and_centring_follow_the_documented_steps(monkeypatch):
    """image = contrast · clip(G + 3·width·box3(G), 0, 1) − mean, G = max(digit, 0.8 · strokes),
    width in 0.1-0.4 and contrast in 0.6-1.4 per image (noise off)."""
    spy = _Spy(monkeypatch)
    images, _ = distorted_digits(200, seed=11, noise=0.0)
    images = images[:, 0].numpy().astype(np.float64)
    drawn = [d[:, 0].numpy().astype(np.float64) for _, _, d in spy.calls]
    assert len(drawn) == 3
    ink = np.maximum.reduce([drawn[0], 0.8 * drawn[1], 0.8 * drawn[2]])
    halo = 3 * _box3(ink)
    widths, contrasts, offsets = [], [], []
    for image, g, b in zip(images, ink, halo):
        free = g + 0.4 * b < 1 - 1e-6  # not saturated at any width of the range
        design = np.stack([g[free], b[free], np.ones(free.sum())], axis=1)
        (contrast, contrast_width, offset), *_ = np.linalg.lstsq(design, image[free], rcond=None)
        width = contrast_width / contrast
        model = contrast * np.clip(g + width * b, 0, 1) + offset
        assert np.abs(model - image).max() < 1e-4
        widths.append(width)
        contrasts.append(contrast)
        offsets.append(offset)
    _in_and_filling(widths, 0.1, 0.4)
    _in_and_filling(contrasts, 0.6, 1.4)
    assert np.ptp(offsets) < 1e-5  # one mean taken off the whole set
    assert abs(images.mean()) < 1e-5  # ... which is then zero-mean


@pytest.mark.parametrize("noise", [None, 0.1, 0.5])
def test_noise_is_gaussian_with_the_given_standard_deviation(noise):
    """The noise is drawn last: the same seed without it gives the same images but for it."""
    kwargs = {} if noise is None else {"noise": noise}
    expected = 0.3 if noise is None else noise  # the documented default
    noisy, labels = distorted_digits(64, seed=9, **kwargs)
    clean, clean_labels = distorted_digits(64, seed=9, noise=0.0)
    assert torch.equal(labels, clean_labels)
    difference = (noisy - clean).double()
    assert abs(difference.std().item() - expected) < 0.02 * expected
    assert abs(difference.mean().item()) < 1e-6  # centring takes the noise's mean off too
    kurtosis = ((difference - difference.mean()) ** 4).mean() / difference.var() ** 2
    assert abs(kurtosis.item() - 3) < 0.2  # Gaussian, not heavy-tailed


def test_the_default_clutter_is_two_distractors(monkeypatch):
    spy = _Spy(monkeypatch)
    distorted_digits(4, seed=0)
    assert len(spy.calls) == 1 + 2
    distorted_digits(4, seed=0, clutter=0)
    assert len(spy.calls) == 3 + 1


@pytest.mark.parametrize("count, size", [(1, 32), (3, 8)])
def test_the_smallest_sets_and_images_are_accepted(count, size):
    images, labels = distorted_digits(count, seed=0, size=size)
    assert images.shape == (count, 1, size, size) and labels.shape == (count,)


def test_images_smaller_than_8_are_refused():
    with pytest.raises(ValueError, match="size >= 8"):
        distorted_digits(2, seed=0, size=7)
    assert len(GLYPHS) == 10
