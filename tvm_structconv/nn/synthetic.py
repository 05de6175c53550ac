"""A generated image task for training experiments: distorted digit glyphs in clutter, 32×32.

Nothing is downloaded and no data package is needed: ten 5×7 bitmap glyphs (the digits 0–9)
are drawn onto a 32×32 canvas through a random affine map (rotation, anisotropic scale, shear,
translation), blurred to a random stroke width, on a background of random strokes (parts of
other glyphs) with random contrast and Gaussian noise. The same ``seed`` always gives the same
images. It is harder than scikit-learn's 8×8 digits (which a small CNN classifies at about
99 %): the glyph is a fifth of the image, the clutter is made of glyph parts, and the input
is 16 times larger, so the convs see real spatial structure.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["GLYPHS", "distorted_digits"]

#: The digits 0–9 as 7 rows of 5 pixels.
GLYPHS: Tuple[Tuple[str, ...], ...] = (
    ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
)


def _glyph_tensor() -> torch.Tensor:
    """``(10, 1, 7, 5)`` float images of the glyphs."""
    rows = [[[float(pixel) for pixel in row] for row in glyph] for glyph in GLYPHS]
    return torch.tensor(rows)[:, None]


def _uniform(generator: torch.Generator, count: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def _affine_draw(
    glyphs: torch.Tensor, size: int, generator: torch.Generator, spread: float
) -> torch.Tensor:
    """Draw each glyph onto a ``size × size`` canvas through a random affine map."""
    count = len(glyphs)
    angle = _uniform(generator, count, -0.45, 0.45) * spread  # radians, about ±26°
    scale_x = _uniform(generator, count, 0.8, 1.25)
    scale_y = _uniform(generator, count, 0.8, 1.25)
    shear = _uniform(generator, count, -0.35, 0.35) * spread
    shift = (torch.rand((count, 2), generator=generator, dtype=torch.float64) - 0.5) * 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output → glyph coordinates (affine_grid's convention); the glyph spans ~ half the canvas
    zoom = 2.2
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = zoom * cos / scale_x
    theta[:, 0, 1] = zoom * (-sin + shear) / scale_x
    theta[:, 1, 0] = zoom * sin / scale_y
    theta[:, 1, 1] = zoom * cos / scale_y
    theta[:, :, 2] = shift * zoom * spread
    grid = F.affine_grid(theta.float(), [count, 1, size, size], align_corners=False)
    return F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def distorted_digits(
    count: int, seed: int, size: int = 32, noise: float = 0.3, clutter: int = 2
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count`` generated images of the digits 0–9, and their labels.

    Parameters
    ----------
    count
        Number of images.
    seed
        Fixes everything: the labels, the distortions, the clutter and the noise.
    size
        Height and width of the images.
    noise
        Standard deviation of the Gaussian pixel noise (the glyph's strokes are about 1).
    clutter
        Number of distractor strokes (random parts of random glyphs) per image.

    Returns
    -------
    images : torch.Tensor
        ``(count, 1, size, size)`` float32, roughly zero-mean.
    labels : torch.Tensor
        ``(count,)`` int64 in ``0 … 9``.
    """
    if count < 1 or size < 8:
        raise ValueError(f"need count >= 1 and size >= 8, got count={count}, size={size}")
    generator = torch.Generator().manual_seed(seed)
    glyphs = _glyph_tensor()
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = _affine_draw(glyphs[labels], size, generator, spread=1.0)
    for _ in range(clutter):
        # a random quarter-to-half of another glyph, drawn small and anywhere
        parts = glyphs[torch.randint(0, 10, (count,), generator=generator)].clone()
        keep_rows = torch.randint(0, 4, (count,), generator=generator)
        for index, row in enumerate(keep_rows.tolist()):
            parts[index, :, : row + 1] = 0.0
            parts[index, :, row + 4 :] = 0.0
        strokes = _affine_draw(parts, size, generator, spread=2.0)
        images = torch.maximum(images, 0.8 * strokes)
    # a random stroke width: blur with a random 3×3 kernel weight, then re-saturate
    width = 0.1 + 0.3 * torch.rand((count, 1, 1, 1), generator=generator)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1)
    images = torch.clamp(images + width * blurred * 3.0, 0.0, 1.0)
    contrast = 0.6 + 0.8 * torch.rand((count, 1, 1, 1), generator=generator)
    images = contrast * images + noise * torch.randn(images.shape, generator=generator)
    return (images - images.mean()).float(), labels
