"""The generated digits: deterministic per seed, balanced, and not trivially separable."""

import pytest
import torch

from tvm_structconv.nn.synthetic import GLYPHS, distorted_digits


def test_same_seed_same_images_other_seed_other_images():
    images, labels = distorted_digits(64, seed=3)
    again_images, again_labels = distorted_digits(64, seed=3)
    other_images, _ = distorted_digits(64, seed=4)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.allclose(images, other_images)
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9


def test_every_digit_drawn_and_distorted():
    images, labels = distorted_digits(400, seed=0, noise=0.0, clutter=0)
    assert torch.bincount(labels, minlength=10).min() > 20
    ones = images[labels == 1]
    # distortions: two images of the same digit differ well beyond rounding
    assert (ones[0] - ones[1]).abs().max() > 0.5
    assert len(GLYPHS) == 10 and all(len(glyph) == 7 for glyph in GLYPHS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="count >= 1"):
        distorted_digits(0, seed=0)
