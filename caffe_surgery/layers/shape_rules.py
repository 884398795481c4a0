"""Building blocks of the shape rules: the ``Rule`` a rule returns, errors, axes, data-layer shapes.

MAC rule: only matrix products count multiply-accumulates -- Convolution,
Deconvolution, InnerProduct, RNN and LSTM. Element-wise, normalisation,
pooling, data-movement, loss and SSD layers count 0 MACs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import ShapeError
from ..graph import Layer

Shape = tuple[int, ...]


@dataclass
class Rule:
    """What a layer makes: its top shapes, the shapes of its learned blobs, its MACs."""

    tops: list[Shape]
    params: list[Shape] = field(default_factory=list)
    macs: int = 0


def fail(problem: str) -> NoReturn:
    """Raise a ShapeError; the caller fills in the layer and the file."""
    raise ShapeError(problem)


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: -ndim <= axis < ndim, negatives count from the end."""
    if not -ndim <= axis < ndim:
        fail(f"axis {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


def same_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Top shape = bottom shape, no weights (element-wise and normalising layers)."""
    return Rule([bottoms[0]])


class SourceContext:
    """Resolves a data layer's top shapes: ``input_shapes`` > prototxt > resolver.

    The resolver (``data_shapes``) returns, for each top, the shape of ONE item
    (e.g. C, H, W) as the data source holds it; the batch axis comes from the
    layer's batch_size.
    """

    def __init__(self, layer: Layer, overrides: dict[str, Shape],
                 resolver: Callable[[Layer], list[Shape]] | None):
        self.layer = layer
        self.overrides = overrides
        self.resolver = resolver
        self._resolved: list[Shape] | None = None

    def top_shape(self, index: int, declared: Shape | None, batch: int | None = None) -> Shape:
        """Shape of top ``index``: the user's override, else ``declared``, else (batch, *item from the resolver)."""
        name = self.layer.tops[index].name
        if name in self.overrides:
            return tuple(self.overrides[name])
        if declared is not None:
            return tuple(declared)
        if self.resolver is not None and batch is not None:
            if self._resolved is None:
                self._resolved = [tuple(s) for s in self.resolver(self.layer)]
            if index < len(self._resolved):
                return (batch,) + self._resolved[index]
        fail(f"cannot tell the shape of data blob '{name}' from the prototxt; "
             f"pass --input {name}=N,C,H,W")
