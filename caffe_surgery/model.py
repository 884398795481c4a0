"""Loading a Caffe model: prototxt (+ caffemodel) -> upgraded, filtered, weighted ``Net``.

Weights attach to layers by name, as Caffe does. Blob shapes are checked
against what each layer expects for its inferred input sizes; legacy 4-D blob
dims (e.g. an InnerProduct weight stored as 1x1xOxI) are accepted where Caffe
accepts them and reshaped to the layer's shape.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from . import caffe_pb2, limits
from .blobs import blob_shape, blob_to_array, is_legacy_shape
from .errors import CaffeSurgeryError, ParseError, ShapeError
from .graph import TEST, Net, build_net
from .io import read_net_text, read_weight_layers, read_weights
from .shapes import DataShapes, NetShapes, infer_shapes
from .upgrade import needs_upgrade, upgrade_net

log = logging.getLogger(__name__)


@dataclass
class Model:
    """A net with its weights, its inferred shapes and what loading noticed."""

    net: Net
    shapes: NetShapes
    warnings: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list:
        """The net's layers, in order."""
        return self.net.layers

    @property
    def params(self) -> int:
        """Parameters of the net (a blob shared by name counts once)."""
        return self.shapes.totals()[0]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass at the net's input shapes."""
        return self.shapes.totals()[1]

    def __repr__(self) -> str:
        inputs = ", ".join(f"{t.name} {'x'.join(map(str, self.shapes.blob(t)))}"
                           for layer in self.net.layers if not layer.bottoms for t in layer.tops)
        weights = "with weights" if any(layer.blobs for layer in self.net.layers) else "no weights"
        return (f"Model({self.net.name!r}: {len(self.net.layers)} layers, input {inputs or '-'}, "
                f"{self.params:,} parameters, {self.macs:,} MACs, {weights})")


def legacy_fits(stored: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Caffe's legacy rule: 4-D num/channels/height/width equal the expected shape padded with 1s."""
    if len(expected) > 4:
        return False
    return tuple(stored) == (1,) * (4 - len(expected)) + tuple(expected)


StoredBlob = caffe_pb2.BlobProto | tuple[caffe_pb2.BlobProto, np.ndarray | None]
"""A stored blob: its message, or (message without ``data``, the ``data`` values read apart)."""

StoredLayers = dict[str, list[list[StoredBlob]]]
"""Layer name -> every copy of that layer stored in the caffemodel, in file order, each its list of blobs."""


def weights_by_layer(weights: caffe_pb2.NetParameter, source: str) -> StoredLayers:
    """Map layer name -> the stored copies of its blobs of an (upgraded) caffemodel.

    A layer stored twice keeps both copies: Caffe copies every stored layer
    into its namesake in file order, so each copy must fit and the last wins.
    """
    found: StoredLayers = {}
    for layer in weights.layer:
        found.setdefault(_layer_name(layer, source), []).append(list(layer.blobs))
    return found


def read_stored_weights(path: str | os.PathLike) -> StoredLayers:
    """``weights_by_layer`` of a caffemodel, upgraded: what ``load_model`` attaches.

    A current-format file is streamed (``io.read_weight_layers``): its float
    values go from the file straight into arrays, and no copy of the whole
    message is made. Other files (V1/V0, malformed) are parsed whole and
    upgraded, which also reports their errors.
    """
    streamed = read_weight_layers(path)
    if streamed is None:
        weights = read_weights(path)
        if needs_upgrade(weights):
            weights = upgrade_net(weights)
        return weights_by_layer(weights, str(path))
    header, layers = streamed
    if needs_upgrade(header):
        upgrade_net(header)  # the header's own errors (e.g. input_dim not 4 per input), as a whole read gives
    found: StoredLayers = {}
    for layer, blobs in layers:
        found.setdefault(_layer_name(layer, path), []).append(blobs)
    return found


def _layer_name(layer, path) -> str:
    """The layer's name; ParseError when it is not UTF-8 text (protobuf then hands back bytes)."""
    if isinstance(layer.name, bytes):
        raise ParseError(f"a layer name is not UTF-8 text: {layer.name!r}", file=str(path))
    return layer.name


def stored_array(stored_blob: StoredBlob) -> tuple[caffe_pb2.BlobProto, np.ndarray]:
    """A stored blob's message (for its shape style) and its values as an array of its declared shape.

    ParseError for a blob that declares no shape at all (Caffe refuses to copy it).
    """
    blob, data = stored_blob if isinstance(stored_blob, tuple) else (stored_blob, None)
    if blob_shape(blob) is None:
        raise ParseError("blob declares no shape (neither shape nor num/channels/height/width)")
    return blob, blob_to_array(blob, data)


def fit_blobs(layer: str, expected: list[tuple[int, ...]] | None, blobs: list[StoredBlob],
              source: str) -> list[np.ndarray]:
    """One stored copy of a layer's blobs as arrays of the shapes the layer expects (Caffe's copy rules).

    Raises ShapeError naming both shapes when a blob does not fit its layer.
    """
    if expected is not None and len(blobs) != len(expected):
        raise ShapeError(f"caffemodel has {len(blobs)} blobs, the layer expects {len(expected)}",
                         file=source, layer=layer)
    arrays = []
    for index, stored_blob in enumerate(blobs):
        try:
            blob, array = stored_array(stored_blob)
        except CaffeSurgeryError as exc:
            raise ShapeError(f"blob {index}: {exc.problem}", file=source, layer=layer) from exc
        if expected is not None and array.shape != tuple(expected[index]):
            if not (is_legacy_shape(blob) and legacy_fits(array.shape, expected[index])):
                raise ShapeError(f"blob {index} has shape {array.shape}, the layer expects {tuple(expected[index])}",
                                 file=source, layer=layer)
            array = array.reshape(expected[index])
        arrays.append(array)
    return arrays


def attach_weights(net: Net, shapes: NetShapes, stored: StoredLayers, source: str) -> list[str]:
    """Give every layer of ``net`` the stored blobs of its namesake; return warnings.

    Every stored copy of a layer must fit it (as in Caffe, where a mismatched
    copy is fatal); the last copy wins. Raises ShapeError naming both shapes
    when a blob does not fit its layer.
    """
    warnings = []
    for layer in net.layers:
        copies = stored.get(layer.name)
        if not copies:
            continue
        expected = shapes.layer(layer.name).param_shapes
        for number, blobs in enumerate(copies, 1):
            try:
                arrays = fit_blobs(layer.name, expected, blobs, source)
            except ShapeError as exc:
                if len(copies) > 1:
                    exc.problem = f"stored copy {number} of {len(copies)}: {exc.problem}"
                    exc.args = (exc.one_line(),)
                raise
        layer.blobs = arrays
    extra = sorted(name for name, copies in stored.items()
                   if any(copies) and not net.has_layer(name))
    if extra:
        warnings.append(f"{source}: weights for layers not in the net are ignored: {', '.join(extra)}")
    return warnings


def read_upgraded_net(prototxt: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a net prototxt and upgrade it to the current format (every phase kept)."""
    try:
        net_param = read_net_text(prototxt)
        return upgrade_net(net_param) if needs_upgrade(net_param) else net_param
    except CaffeSurgeryError as exc:
        raise exc.with_file(str(prototxt))


def require_weights(net: Net, shapes: NetShapes, stored: StoredLayers, source: str, partial: bool = False) -> list[str]:
    """Refuse weights that leave a weighted layer of the net without blobs (all of them: the weights of
    another net). ``partial``: allow some, for a caller that fills them itself; return a warning naming them."""
    weighted = [layer for layer in net.layers if shapes.layer(layer.name).param_shapes]
    missing = [layer for layer in weighted if not layer.blobs]
    if missing and len(missing) == len(weighted):
        raise ShapeError(f"no weighted layer of the net has weights in the caffemodel (none of "
                         f"{', '.join(l.name for l in missing[:5])}{', ...' if len(missing) > 5 else ''} is "
                         f"stored; it holds {len(stored)} other layers): weights of another net?", file=source)
    if missing and not partial:
        layer = missing[0]
        expected = shapes.layer(layer.name).param_shapes
        raise ShapeError(f"no weights in the caffemodel; the {layer.type} layer needs {len(expected)} blobs of "
                         f"shapes {', '.join(map(str, expected))}", file=source, layer=layer.name)
    return [f"{source}: no weights for {', '.join(l.name for l in missing)} (left empty)"] if missing else []


def check_weight_sizes(net: Net, shapes: NetShapes, source: str | None) -> None:
    """Refuse, before anything is allocated, a layer whose weights would exceed the memory limit."""
    total = 0
    for layer in net.layers:
        expected = shapes.layer(layer.name).param_shapes or []
        nbytes = 4 * sum(limits.element_count(shape) for shape in expected)
        limits.check_allocation(nbytes, f"the {layer.type} layer's weights {', '.join(map(str, expected))}",
                                file=source, layer=layer.name)
        total += nbytes
    limits.check_allocation(total, "the net's weights", file=source)


def load_net(prototxt: str | os.PathLike, phase: int = TEST, stages: tuple[str, ...] = ()) -> Net:
    """Parse, upgrade and phase-filter a net prototxt (no weights)."""
    source = str(prototxt)
    try:
        return build_net(read_upgraded_net(prototxt), phase=phase, stages=stages, source=source)
    except CaffeSurgeryError as exc:
        raise exc.with_file(source)


def load_model(prototxt: str | os.PathLike, weights: str | os.PathLike | None = None, *,
               phase: int = TEST, input_shapes: dict[str, tuple[int, ...]] | None = None,
               stages: tuple[str, ...] = (), data_shapes: DataShapes | None = None,
               top_shapes: dict[str, list[tuple[int, ...]]] | None = None, partial_weights: bool = False) -> Model:
    """Load a prototxt and optionally its caffemodel into a checked ``Model``.

    Every weighted layer must find its blobs in the caffemodel, unless
    ``partial_weights`` (then those without are left empty, with a warning).

    ``data_shapes`` tells the item shape behind a Data layer; ``top_shapes``
    gives the output shapes of layers without a shape rule (see ``shapes``).
    """
    net = load_net(prototxt, phase=phase, stages=stages)
    try:
        shapes = infer_shapes(net, input_shapes, top_shapes=top_shapes, data_shapes=data_shapes)
    except CaffeSurgeryError as exc:
        raise exc.with_file(str(prototxt))
    log.info("read %s: %d layers", prototxt, len(net.layers))
    check_weight_sizes(net, shapes, str(prototxt))
    warnings = []
    if weights is not None:
        stored = read_stored_weights(weights)
        warnings = attach_weights(net, shapes, stored, str(weights))
        log.info("read %s: weights for %d layers", weights, len(stored))
        warnings += require_weights(net, shapes, stored, str(weights), partial_weights)
    for message in warnings:
        log.warning(message)
    return Model(net=net, shapes=shapes, warnings=warnings)


def layer_weights_nbytes(net: Net) -> int:
    """Bytes of float32 weights the net carries."""
    return int(sum(np.asarray(b).size * 4 for layer in net.layers for b in layer.blobs))
