"""The recorded structure of a model: a versioned JSON manifest keyed by weight name.

Format (``structconv/1``)::

    {"format": "structconv/1",
     "layers": {"layer1.0.conv1.weight": {"reduced_channels": 32,
                                          "reduced_kernel_size": [2, 2]}}}

Keys are weight names as in the torch ``state_dict``; ``reduced_channels`` is the total over
all groups, as in :class:`~tvm_structconv.structure.Structure`. A manifest travels as a sidecar
JSON file or inside an ONNX model's ``metadata_props`` under the key ``structconv``. Weights
whose names were lost (an exporter renamed them) are matched by value with :func:`detect`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from tvm_structconv.structure import Structure, banded_ones

__all__ = [
    "FORMAT",
    "ONNX_METADATA_KEY",
    "LayerSpec",
    "Manifest",
    "ManifestError",
    "detect",
]

FORMAT = "structconv/1"
ONNX_METADATA_KEY = "structconv"
_LAYER_KEYS = {"reduced_channels", "reduced_kernel_size"}

PathLike = Union[str, "os.PathLike[str]"]


class ManifestError(ValueError):
    """A malformed manifest, or one that does not fit its model. The message names the key."""


@dataclass(frozen=True)
class LayerSpec:
    """The recorded structure of one weight: reduced channels (total) and reduced kernel size."""

    reduced_channels: int
    reduced_kernel_size: Tuple[int, int]

    def structure(self, weight_shape: Tuple[int, ...], groups: int = 1) -> Structure:
        """The :class:`Structure` of a conv (4-D) or linear (2-D) weight with this spec.

        Raises
        ------
        ValueError
            If the spec does not fit the weight's shape.
        """
        if len(weight_shape) == 4:
            kernel = tuple(weight_shape[2:])
        elif len(weight_shape) == 2:
            kernel = (1, 1)
        else:
            raise ValueError(f"weight of shape {tuple(weight_shape)} is neither conv nor linear")
        return Structure(
            weight_shape[1] * groups,
            kernel,
            self.reduced_channels,
            self.reduced_kernel_size,
            groups,
        )

    @classmethod
    def of(cls, structure: Structure) -> LayerSpec:
        """The spec recording ``structure``."""
        return cls(structure.reduced_channels, structure.reduced_kernel_size)


@dataclass(frozen=True)
class Manifest:
    """The recorded structure of a model: ``{weight name: LayerSpec}``.

    Attributes
    ----------
    layers
        Per-weight specs, keyed by ``state_dict`` name (``layer1.0.conv1.weight``).
    source
        Where it was read from, for error messages.
    """

    layers: Mapping[str, LayerSpec]
    source: str = "<manifest>"

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_structures(cls, structures: Mapping[str, Structure]) -> Manifest:
        """A manifest from ``{weight name: Structure}``."""
        return cls({name: LayerSpec.of(s) for name, s in structures.items()})

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Manifest:
        """Parse the JSON object of a manifest, checking every key and type.

        Raises
        ------
        ManifestError
            On a wrong format tag, an unknown key, or a value of the wrong type; the message
            names the offending key and ``source``.
        """
        if not isinstance(data, dict):
            raise ManifestError(
                f"{source}: a manifest must be a JSON object, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {"format", "layers"})
        if unknown:
            raise ManifestError(f"{source}: unknown top-level key {unknown[0]!r}")
        if data.get("format") != FORMAT:
            raise ManifestError(
                f"{source}: 'format' must be {FORMAT!r}, got {data.get('format')!r}"
            )
        layers = data.get("layers")
        if not isinstance(layers, dict):
            raise ManifestError(f"{source}: 'layers' must be an object of weight name -> entry")
        return cls(
            {name: _parse_layer(name, entry, source) for name, entry in layers.items()}, source
        )

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> Manifest:
        """Parse manifest JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{source}: not valid JSON: {error}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: PathLike) -> Manifest:
        """Read a manifest JSON file."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ManifestError(
                f"cannot read manifest {os.fspath(path)}: {error.strerror}"
            ) from None
        return cls.loads(text, os.fspath(path))

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> Dict[str, Any]:
        """The JSON object of this manifest."""
        return {
            "format": FORMAT,
            "layers": {
                name: {
                    "reduced_channels": spec.reduced_channels,
                    "reduced_kernel_size": list(spec.reduced_kernel_size),
                }
                for name, spec in sorted(self.layers.items())
            },
        }

    def dumps(self) -> str:
        """Manifest JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: PathLike) -> None:
        """Write the manifest as a JSON file."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.dumps() + "\n")

    def embed_onnx(self, model: onnx.ModelProto) -> None:  # noqa: F821
        """Store the manifest in ``model.metadata_props`` under ``structconv`` (replacing any)."""
        for index in reversed(range(len(model.metadata_props))):
            if model.metadata_props[index].key == ONNX_METADATA_KEY:
                del model.metadata_props[index]
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(self.to_dict())

    @classmethod
    def from_onnx(cls, model: Union[onnx.ModelProto, PathLike]) -> Optional[Manifest]:  # noqa: F821
        """The manifest embedded in an ONNX model (or file), or ``None`` if it has none."""
        if not hasattr(model, "metadata_props"):
            import onnx

            source = os.fspath(model)
            model = onnx.load(source, load_external_data=False)
        else:
            source = "<onnx model>"
        for entry in model.metadata_props:
            if entry.key == ONNX_METADATA_KEY:
                return cls.loads(entry.value, f"{source} (metadata '{ONNX_METADATA_KEY}')")
        return None

    # ----------------------------------------------------------------- checking against a model
    def structures(self, model: nn.Module) -> Dict[str, Structure]:
        """Validate against ``model``; return ``{weight name: Structure}``.

        Every entry must name the weight of an ``nn.Conv2d`` or ``nn.Linear`` of ``model`` and
        its ``(c, n)`` must fit that layer.

        Raises
        ------
        ManifestError
            Naming the offending key and the manifest's source.
        """
        modules = dict(model.named_modules())
        result = {}
        for name in self.layers:
            module_name, _, attribute = name.rpartition(".")
            module = modules.get(module_name)
            if attribute != "weight" or not isinstance(module, (nn.Conv2d, nn.Linear)):
                raise ManifestError(
                    f"{self.source}: {name!r} is not the weight of a Conv2d or Linear layer"
                )
            groups = module.groups if isinstance(module, nn.Conv2d) else 1
            result[name] = self._structure(name, tuple(module.weight.shape), groups)
        return result

    def structures_for_shapes(
        self, shapes: Mapping[str, Tuple[int, ...]], groups: Optional[Mapping[str, int]] = None
    ) -> Dict[str, Structure]:
        """Validate against ``{weight name: shape}`` (and optional groups); return structures.

        Raises
        ------
        ManifestError
            If an entry names no weight in ``shapes`` or does not fit its shape.
        """
        groups = groups or {}
        result = {}
        for name in self.layers:
            if name not in shapes:
                raise ManifestError(f"{self.source}: {name!r} names no weight of the model")
            result[name] = self._structure(name, tuple(shapes[name]), groups.get(name, 1))
        return result

    def unmatched(self, weights: Mapping[str, Tuple[np.ndarray, int]], tol: float) -> List[str]:
        """The entries that match none of ``weights`` by name, nor any unnamed one by value.

        An entry whose name is not a key of ``weights`` (an exporter renamed the weight) is
        matched when some weight whose name no entry holds satisfies the entry's structure
        within relative residual ``tol``; a 2-D weight also transposed (an exporter's
        ``MatMul`` of a Linear layer). What is left over is a manifest written for another
        model, or for weights that were never projected.

        Parameters
        ----------
        weights
            ``{name: (weight, groups)}`` of the model: conv ``(Cout, C/groups, N, N)`` or
            linear weights (groups 1).
        tol
            Largest accepted relative residual (as in :func:`detect`).
        """
        candidates = [
            (array, groups, float(np.linalg.norm(array)))
            for name, (weight, groups) in weights.items()
            if name not in self.layers and np.ndim(weight) in (2, 4)
            for array in _orientations(np.asarray(weight, dtype=np.float64))
        ]
        unmatched = []
        for name, spec in self.layers.items():
            if name in weights:
                continue
            # the likeliest first: c = C plans record the layer's own channel count
            ordered = sorted(
                candidates, key=lambda c: abs(c[0].shape[1] * c[1] - spec.reduced_channels)
            )
            if not any(_satisfies(spec, *candidate, tol) for candidate in ordered):
                unmatched.append(name)
        return unmatched

    def _structure(self, name: str, shape: Tuple[int, ...], groups: int) -> Structure:
        try:
            return self.layers[name].structure(shape, groups)
        except ValueError as error:
            raise ManifestError(
                f"{self.source}: {name!r} does not fit its weight of shape {shape}: {error}"
            ) from None


def _parse_layer(name: Any, entry: Any, source: str) -> LayerSpec:
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: layer key {name!r} must be a non-empty string")
    if not isinstance(entry, dict):
        raise ManifestError(
            f"{source}: layers[{name!r}] must be an object, got {type(entry).__name__}"
        )
    unknown = sorted(set(entry) - _LAYER_KEYS)
    if unknown:
        raise ManifestError(f"{source}: layers[{name!r}] has unknown key {unknown[0]!r}")
    missing = sorted(_LAYER_KEYS - set(entry))
    if missing:
        raise ManifestError(f"{source}: layers[{name!r}] is missing {missing[0]!r}")
    channels = entry["reduced_channels"]
    if not _is_positive_int(channels):
        raise ManifestError(
            f"{source}: layers[{name!r}].reduced_channels must be a positive int, got {channels!r}"
        )
    kernel = entry["reduced_kernel_size"]
    if _is_positive_int(kernel):
        kernel = [kernel, kernel]
    if not (isinstance(kernel, list) and len(kernel) == 2 and all(map(_is_positive_int, kernel))):
        raise ManifestError(
            f"{source}: layers[{name!r}].reduced_kernel_size must be a positive int or "
            f"[nh, nw], got {entry['reduced_kernel_size']!r}"
        )
    return LayerSpec(channels, (kernel[0], kernel[1]))


def _orientations(weight: np.ndarray) -> List[np.ndarray]:
    """A weight as a conv or Linear layer sees it: a 2-D one also transposed."""
    return [weight, weight.T] if weight.ndim == 2 else [weight]


def _satisfies(spec: LayerSpec, weight: np.ndarray, groups: int, norm: float, tol: float) -> bool:
    """Whether ``weight`` (of Frobenius norm ``norm``) has ``spec``'s structure within relative
    residual ``tol``.

    The structure acts on each output filter alone, so a few filters are checked first: their
    residual can only be smaller than the whole weight's, and a weight of another layer fails
    there at a fraction of the cost.
    """
    try:
        structure = spec.structure(weight.shape, groups)
    except ValueError:  # the spec does not fit this shape
        return False
    kernel = weight.reshape(structure.weight_shape(weight.shape[0]))
    few = kernel[: groups * -(-4 // groups)]  # 4 or more filters, a multiple of the groups
    if structure.residual(few) * float(np.linalg.norm(few)) > tol * norm:
        return False
    return structure.residual(kernel) <= tol


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# --------------------------------------------------------------------- detection by value
def _axis_residuals(gram: np.ndarray, sizes: Iterable[int]) -> Dict[int, float]:
    """Squared projection error along one axis for each reduced size ``k``.

    ``gram = M Mᵀ`` where ``M`` is the weight with the axis moved first and flattened
    (``K × rest``). The error of projecting the columns of ``M`` onto ``range(B_K(k))`` is
    ``tr G − tr((BᵀB)⁻¹ BᵀGB)``; ``BᵀGB`` is read from 2-D prefix sums of ``G`` (columns of
    ``B`` are boxes), so each size costs ``O(k³)`` and never a ``K × K`` projector.
    """
    full = gram.shape[0]
    prefix = np.zeros((full + 1, full + 1))
    prefix[1:, 1:] = gram.cumsum(0).cumsum(1)
    total = float(np.trace(gram))
    errors = {}
    for reduced in sizes:
        window = full - reduced + 1
        starts = np.arange(reduced)
        ends = starts + window
        box = (
            prefix[np.ix_(ends, ends)]
            - prefix[np.ix_(starts, ends)]
            - prefix[np.ix_(ends, starts)]
            + prefix[np.ix_(starts, starts)]
        )
        basis = banded_ones(full, reduced)
        kept = float(np.trace(np.linalg.solve(basis.T @ basis, box)))
        errors[reduced] = max(total - kept, 0.0)
    return errors


def _channel_sizes_by_folding(array: np.ndarray, tol: float, probes: int = 2) -> List[int]:
    """Channel sizes ``c < C`` that the weight may satisfy, ascending: a necessary test, ``O(C²)``.

    A channel fibre ``v`` (length ``C``) of a structured weight is a box sum of length
    ``L = C − c + 1`` of some ``a``: as polynomials ``V(z) = A(z)·(1 + z + … + z^{L−1})``, which
    holds exactly when ``V`` vanishes at the ``L``-th roots of unity other than 1, i.e. when the
    sums of ``v`` over the residue classes modulo ``L`` are all equal. A fibre off the subspace
    by ``e`` moves those sums by at most ``sqrt(⌈C/L⌉)·‖e‖``. Random combinations of all fibres
    (``probes`` of them, fixed seed) stand in for the fibres; a size passes when every probe's
    class sums are that close to equal (with a factor 4 of slack for the combination).
    """
    channels = array.shape[1]
    fibres = np.moveaxis(array, 1, -1).reshape(-1, channels)
    mixed = np.random.default_rng(0).standard_normal((probes, fibres.shape[0])) @ fibres
    norms = np.linalg.norm(mixed, axis=1)
    positions = np.arange(channels)
    sizes = []
    for window in range(channels, 1, -1):  # c = C - L + 1 ascending
        classes = np.stack(
            [np.bincount(positions % window, weights=probe, minlength=window) for probe in mixed]
        )
        spread = np.linalg.norm(classes - classes.mean(axis=1, keepdims=True), axis=1)
        bound = 4.0 * tol * np.sqrt(-(-channels // window)) * norms
        if np.all(spread <= bound):
            sizes.append(channels - window + 1)
    return sizes


def _axis_gram(weight: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(weight, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return flat @ flat.T


def detect(
    weight: Union[np.ndarray, torch.Tensor],
    tol: float = 1e-4,
    groups: int = 1,
    channel_search: int = 32,
) -> Optional[Structure]:
    """The cheapest structure that ``weight`` satisfies within relative residual ``tol``.

    The structured kernels of ``(c, nh, nw)`` are a tensor product of one subspace per axis, so
    a weight's residual is at least its residual along any one axis. Per axis, the candidate
    sizes are those whose axis residual is under ``tol``. Along channels, a size must pass a
    necessary test that costs ``O(C²)`` for all sizes together (the box-sum subspace of size
    ``c`` is the polynomials divisible by ``1 + z + … + z^{C−c}``; see
    :func:`_channel_sizes_by_folding`); at most ``channel_search`` of those sizes are checked
    exactly, the first that fits is kept, and ``c = C`` is the fallback. A weight with fewer
    outputs than ``c`` (a Linear layer ``4C → C`` with ``c = 2C``, whose rank over the channel
    axis says nothing) is found as well as any other. The candidates are
    tried in order of MACs (``c·nh·nw``) and the first whose full residual is under ``tol`` is
    returned.

    Parameters
    ----------
    weight
        A conv weight ``(Cout, C/groups, Nh, Nw)`` or a linear weight ``(Cout, C)``.
    tol
        Largest accepted relative residual ``‖W − A A⁺ W‖ / ‖W‖``.
    groups
        The conv's groups (channel windows never cross a group).
    channel_search
        How many channel sizes that pass the necessary test are checked exactly.

    Returns
    -------
    Structure or None
        ``None`` when only the trivial structure (nothing reduced) fits, or ``weight`` is zero.
    """
    array = (
        weight.detach().cpu().double().numpy()
        if isinstance(weight, torch.Tensor)
        else (np.asarray(weight, dtype=np.float64))
    )
    if array.ndim == 2:
        array = array[:, :, None, None]
    if array.ndim != 4:
        raise ValueError(f"weight must be 2-D or 4-D, got shape {array.shape}")
    norm_squared = float(np.sum(array * array))
    if norm_squared == 0.0:
        return None
    budget = tol * tol * norm_squared
    channels, height, width = array.shape[1:]

    channel_sizes = [channels]
    possible = _channel_sizes_by_folding(array, tol)
    channel_gram = _axis_gram(array, 1) if possible else None
    for reduced in possible[:channel_search]:
        if _axis_residuals(channel_gram, [reduced])[reduced] <= budget:
            channel_sizes.insert(0, reduced)
            break
    spatial = []
    for axis, full in ((2, height), (3, width)):
        errors = _axis_residuals(_axis_gram(array, axis), range(1, full + 1))
        spatial.append([k for k, error in errors.items() if error <= budget])

    candidates = sorted(
        ((c, nh, nw) for c in channel_sizes for nh in spatial[0] for nw in spatial[1]),
        key=lambda size: (size[0] * size[1] * size[2], size),
    )
    for reduced, reduced_h, reduced_w in candidates:
        if (reduced, reduced_h, reduced_w) == (channels, height, width):
            return None
        structure = Structure(
            channels * groups, (height, width), reduced * groups, (reduced_h, reduced_w), groups
        )
        if structure.residual(array) <= tol:
            return structure
    return None
