"""What a layer's blobs start as and how they learn: Caffe's default fillers and ParamSpecs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import layers
from ..errors import ShapeError, UnsupportedLayerError
from ..graph import Layer
from ..layers import Train
from .fillers import Filler, fill

DEFAULT_SEED = 1701
"""Seed of the fillers and of dropout when the solver sets no ``random_seed``."""


@dataclass(frozen=True)
class BlobRule:
    """How the solver treats one blob: multipliers, the shared name (ParamSpec.name) and trainability."""

    lr_mult: float
    decay_mult: float
    share_name: str
    trainable: bool


def _train_facet(layer: Layer) -> Train | None:
    declaration = layers.lookup(layer.type)
    return declaration.train if declaration is not None and isinstance(declaration.train, Train) else None


def _fillers(layer: Layer) -> list[Filler]:
    """The filler of each blob, with the layer's own defaults (Caffe's LayerSetUp), as its type declares."""
    facet = _train_facet(layer)
    if facet is None or facet.fillers is None:
        raise UnsupportedLayerError(f"no filler rule for the blobs of a {layer.type} layer", layer=layer.name)
    return facet.fillers(layer)


def initial_blobs(layer: Layer, shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    """The layer's loaded blobs, else fresh ones from its fillers (in blob order, drawing from ``rng``)."""
    if layer.blobs:
        if [tuple(b.shape) for b in layer.blobs] != [tuple(s) for s in shapes]:
            raise ShapeError(f"blobs have shapes {[tuple(b.shape) for b in layer.blobs]}, the layer expects "
                             f"{[tuple(s) for s in shapes]}", layer=layer.name)
        return [np.asarray(b, dtype=np.float32) for b in layer.blobs]
    if not shapes:
        return []
    return [fill(filler, shape, rng) for filler, shape in zip(_fillers(layer), shapes)]


def blob_rules(layer: Layer, count: int) -> list[BlobRule]:
    """The ParamSpec of each blob (lr_mult and decay_mult default 1); blobs a type declares as not learning
    (BatchNorm's statistics) never train."""
    facet = _train_facet(layer)
    learns = facet is None or facet.learns
    rules = []
    for index in range(count):
        spec = layer.param.param[index] if index < len(layer.param.param) else None
        lr_mult = spec.lr_mult if spec is not None else 1.0
        decay_mult = spec.decay_mult if spec is not None else 1.0
        trainable = learns and lr_mult != 0
        rules.append(BlobRule(lr_mult, decay_mult, spec.name if spec is not None else "", trainable))
    return rules
