"""Shape inference over a ``Net``: every blob version's shape, every layer's weight shapes,
parameter count and MACs, computed as Caffe's Reshape/LayerSetUp would.

The per-type rules live with their layer types (``layers``, the ``shape`` facet); this module
walks the net in order, checks bottom/top counts, resolves the shapes of data
layers and wraps every problem in an error naming the layer.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod

from .errors import CaffeSurgeryError, GraphError, ShapeError, UnsupportedLayerError
from .graph import BlobVersion, Layer, Net
from . import layers
from .layers import DATA, NotApplicable, Rule, Shape, SourceContext

DataShapes = Callable[[Layer], list[Shape]]


@dataclass
class LayerShapes:
    """One layer's top shapes, expected weight shapes (None when unknown), parameter count and MACs."""

    top_shapes: list[Shape]
    param_shapes: list[Shape] | None
    params: int
    macs: int


@dataclass
class NetShapes:
    """The shapes of a net: by blob version and by layer name."""

    blobs: dict[BlobVersion, Shape] = field(default_factory=dict)
    layers: dict[str, LayerShapes] = field(default_factory=dict)
    shared: set[tuple[str, int]] = field(default_factory=set)

    def blob(self, version: BlobVersion) -> Shape:
        """The shape of one blob version."""
        try:
            return self.blobs[version]
        except KeyError:
            raise ShapeError(f"shape of blob '{version.key}' is not known", layer=version.producer) from None

    def layer(self, name: str) -> LayerShapes:
        """The shapes of the named layer."""
        try:
            return self.layers[name]
        except KeyError:
            raise ShapeError("shapes of this layer are not known", layer=name) from None

    def totals(self) -> tuple[int, int]:
        """(parameters, MACs) of the whole net; a blob shared by name (ParamSpec.name) counts once."""
        params = sum(prod(shape) for name, info in self.layers.items() if info.param_shapes is not None
                     for index, shape in enumerate(info.param_shapes) if (name, index) not in self.shared)
        params += sum(info.params for info in self.layers.values() if info.param_shapes is None)
        return params, sum(info.macs for info in self.layers.values())


def _check_count(layer: Layer, what: str, count: int, allowed: tuple[int, int | None]) -> None:
    low, high = allowed
    if count < low or (high is not None and count > high):
        wanted = str(low) if low == high else f"{low} or more" if high is None else f"{low} to {high}"
        raise GraphError(f"{layer.type} takes {wanted} {what}, got {count}")


def _rule(layer: Layer, bottoms: list[Shape], overrides: dict[str, Shape],
          data_shapes: DataShapes | None) -> Rule | None:
    """The declared rule's result for the layer, or None when its type has no rule."""
    declaration = layers.lookup(layer.type)
    if declaration is None or isinstance(declaration.shape, NotApplicable):
        return None
    _check_count(layer, "bottoms", len(bottoms), declaration.bottoms)
    _check_count(layer, "tops", len(layer.tops), declaration.tops)
    if declaration.kind == DATA:
        return Rule(declaration.shape(layer, SourceContext(layer, overrides, data_shapes)))
    return declaration.shape(layer, bottoms)


def _infer_layer(layer: Layer, bottoms: list[Shape], overrides: dict[str, Shape],
                 data_shapes: DataShapes | None, top_shapes: dict[str, list[Shape]]) -> LayerShapes:
    """Shapes of one layer; ``top_shapes`` gives (or overrides) its top shapes by layer name."""
    given = top_shapes.get(layer.name)
    result = _rule(layer, bottoms, overrides, data_shapes)
    if result is None:
        if given is None:
            raise UnsupportedLayerError(f"unknown layer type '{layer.type}': no shape rule for it "
                                        "(pass its top shapes, or declare the type in a --plugin)")
        tops, param_shapes = [tuple(s) for s in given], None
        params, macs = sum(int(b.size) for b in layer.blobs), 0
    else:
        tops = result.tops if given is None else [tuple(s) for s in given]
        param_shapes, params, macs = result.params, sum(prod(s) for s in result.params), result.macs
    if len(tops) != len(layer.tops):
        raise ShapeError(f"{len(tops)} top shapes for {len(layer.tops)} tops")
    for top, shape in zip(layer.tops, tops):
        if any(d < 1 for d in shape):
            raise ShapeError(f"top blob '{top.name}' would have shape {tuple(shape)}: every dimension must be "
                             "at least 1")
    return LayerShapes(tops, param_shapes, params, macs)


def _locate(exc: CaffeSurgeryError, layer: Layer, source: str | None) -> None:
    """Fill in the layer and the file an error from a rule does not know."""
    exc.layer = exc.layer or layer.name
    exc.file = exc.file or source
    exc.args = (exc.one_line(),)


def _shared_blobs(net: Net) -> set[tuple[str, int]]:
    """(layer, blob index) of every blob that reuses an earlier layer's blob by ParamSpec name."""
    owners, shared = set(), set()
    for layer in net.layers:
        for index, spec in enumerate(layer.param.param):
            if spec.name and spec.name in owners:
                shared.add((layer.name, index))
            elif spec.name:
                owners.add(spec.name)
    return shared


def infer_shapes(net: Net, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 top_shapes: dict[str, list[tuple[int, ...]]] | None = None,
                 data_shapes: DataShapes | None = None,
                 errors: list[CaffeSurgeryError] | None = None) -> NetShapes:
    """Infer every blob and layer shape of ``net``.

    ``input_shapes`` maps a data/input top blob name to its full shape
    (overriding the prototxt). ``top_shapes`` maps a layer name to its top
    shapes (needed for types without a rule, e.g. Python). ``data_shapes(layer)``
    tells, for a data layer whose prototxt does not (Data, HDF5Data, ...), the
    shape of one item per top (e.g. C, H, W); the layer's batch_size is
    prepended. Problems raise an error naming the layer, unless ``errors`` is
    given: then each is appended there and inference goes on with every layer
    that does not depend on a failed one.
    """
    overrides = {name: tuple(shape) for name, shape in (input_shapes or {}).items()}
    top_shapes = top_shapes or {}
    shapes = NetShapes(shared=_shared_blobs(net))
    failed: set[BlobVersion] = set()
    used: set[str] = set()
    for layer in net.layers:
        if any(b in failed for b in layer.bottoms):
            failed.update(layer.tops)
            continue
        try:
            info = _infer_layer(layer, [shapes.blobs[b] for b in layer.bottoms], overrides, data_shapes, top_shapes)
        except CaffeSurgeryError as exc:
            _locate(exc, layer, net.source)
            if errors is None:
                raise
            errors.append(exc)
            failed.update(layer.tops)
            continue
        if layers.is_data(layer.type):
            used.update(t.name for t in layer.tops)
        shapes.layers[layer.name] = info
        shapes.blobs.update(zip(layer.tops, info.top_shapes))
    unused = sorted(set(overrides) - used)
    if unused:
        exc = ShapeError(f"input shapes given for blobs no data or input layer produces: {', '.join(unused)}",
                         file=net.source)
        if errors is None:
            raise exc
        errors.append(exc)
    return shapes
