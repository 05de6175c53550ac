"""Why direct training of ``alpha`` lagged: the composed kernels at initialization, per init.

Writes ``benchmarks/results/init_statistics.md``; ``docs/experiments.md`` section (e) quotes
it::

    python benchmarks/init_statistics.py

For each structured conv of the small CNN of ``direct_training.py`` (32×32 generated digits)
and each ``StructuredConv2d`` init, against the ``nn.Conv2d`` it replaces (its default
Kaiming-uniform kernel): the composed kernel's entry std, the layer's output std on the
activations that reach it in the untrained ordinary CNN (256 images), the mean |cos| between
the kernels of different output channels (how alike the initial filters are), and for the
structure itself the participation ratio ``(Σλ)²/Σλ²`` of ``A Aᵀ`` (the number of directions
the ``"pooled"`` init, whose covariance is ``∝ A Aᵀ``, effectively uses; ``"projected"`` and
``"matched"`` use all ``c·nh·nw`` evenly) and the eigenvalue span of ``AᵀA`` (the
conditioning of plain SGD's step ``A Aᵀ ∇_W`` on the composed kernel).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
from paper_questions import small_cnn  # benchmarks/ is sys.path[0]

from tvm_structconv.nn import StructuredConv2d
from tvm_structconv.nn.synthetic import distorted_digits
from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure, banded_ones

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLANS = ("3x3:c=C/2,n=2", "3x3:c=C/2,n=3")
INITS = ("pooled", "projected", "matched")
POOL_AFTER = (0, 1)


def mean_abs_cosine(kernels: torch.Tensor) -> float:
    """Mean |cos| between the flattened kernels of different output channels."""
    flat = kernels.flatten(1)
    unit = flat / flat.norm(dim=1, keepdim=True)
    cosines = (unit @ unit.T).abs()
    return float(cosines[~torch.eye(len(flat), dtype=torch.bool)].mean())


def gram_spectrum(structure: Structure) -> np.ndarray:
    """The non-zero eigenvalues of ``A Aᵀ`` (those of ``AᵀA``), from the Kronecker factors."""
    (kh, kw), (nh, nw) = structure.kernel_size, structure.reduced_kernel_size
    factors = [
        banded_ones(structure.group_channels, structure.group_reduced_channels),
        banded_ones(kh, nh),
        banded_ones(kw, nw),
    ]
    eigen = [np.linalg.eigvalsh(factor.T @ factor) for factor in factors]
    return np.kron(eigen[0], np.kron(eigen[1], eigen[2]))


def rows_for(plan_text: str, images: torch.Tensor, seed: int) -> List[str]:
    plan = Plan.parse(plan_text)
    torch.manual_seed(seed)
    model = small_cnn(pool_after=POOL_AFTER)
    structures = plan.apply(model)
    rows = []
    activations = images
    for index, module in enumerate(model):
        structure = structures.get(str(index))
        if structure is not None:
            conv = module
            with torch.no_grad():
                conv_out = conv(activations).std()
            cells = []
            for init in INITS:
                torch.manual_seed(seed + 1)
                layer = StructuredConv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    structure.reduced_channels,
                    structure.reduced_kernel_size,
                    padding=conv.padding,
                    bias=False,
                    init=init,
                )
                with torch.no_grad():
                    composed = structure.compose(layer.alpha)
                    out = layer(activations).std()
                cells.append(
                    f"{float(composed.std() / conv.weight.detach().std()):.2f} / "
                    f"{float(out / conv_out):.2f} / {mean_abs_cosine(composed):.2f}"
                )
            spectrum = gram_spectrum(structure)
            participation = spectrum.sum() ** 2 / (spectrum**2).sum()
            dims = int(np.prod(structure.alpha_shape(1)))
            rows.append(
                f"| `{plan_text}` | {conv.in_channels}→{conv.out_channels} | "
                f"{structure.pool_window} | {dims} | {participation:.1f} | "
                f"{spectrum.min():.2f} … {spectrum.max():.0f} | "
                f"{mean_abs_cosine(conv.weight.detach()):.2f} | " + " | ".join(cells) + " |"
            )
        with torch.no_grad():
            activations = module(activations)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images, _ = distorted_digits(256, seed=args.seed)
    header = (
        "Composed kernels at initialization, per structured conv of the small CNN (seed "
        f"{args.seed}, 256 generated 32×32 digits through the untrained ordinary CNN). Per "
        "init: kernel std / output std (both relative to the `nn.Conv2d` it replaces) / mean "
        "\\|cos\\| between output channels' kernels."
    )
    lines = [
        header,
        "",
        "| plan | layer | pool (D, Mh, Mw) | structured dims c·n² | participation ratio of AAᵀ "
        "| eig(AᵀA) | nn.Conv2d mean \\|cos\\| | " + " | ".join(f"`{i}`" for i in INITS) + " |",
        "|---" * (7 + len(INITS)) + "|",
    ]
    for plan_text in PLANS:
        lines += rows_for(plan_text, images, args.seed)
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "init_statistics.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
