"""Validate a net + weights pair as strictly as Caffe's loader, listing every problem.

Each problem is one line ``file: layer: problem``. Unlike loading, checking
does not stop at the first problem: a layer with a broken wiring is left out
(and so are the layers that read only what it would have made), shape
inference goes on past failed layers, and every weighted layer is compared
with the caffemodel.
"""
from __future__ import annotations

import os

from . import caffe_pb2
from .blobs import is_legacy_shape
from .errors import CaffeSurgeryError
from .graph import TEST, BlobVersion, Layer, Net, included_layers, net_state
from .io import read_net_text
from .model import StoredLayers, fit_blobs, legacy_fits, read_stored_weights, stored_array
from .shapes import DataShapes, NetShapes, infer_shapes
from .upgrade import upgrade_net


def _line(source: str | None, layer: str | None, problem: str) -> str:
    return ": ".join(part for part in (source, layer, problem) if part)


def _structure_problems(net: Net, source: str | None) -> list[str]:
    """Blobs written twice but not in place (duplicate names and missing bottoms never reach a built net:
    ``build_net`` refuses them and ``_lenient_net`` reports and leaves them out)."""
    problems = []
    latest: dict[str, BlobVersion] = {}
    for layer in net.layers:
        bottom_names = {b.name for b in layer.bottoms}
        for top in layer.tops:
            previous = latest.get(top.name)
            if previous is not None and top.name not in bottom_names:
                problems.append(_line(source, layer.name, f"top blob '{top.name}' is already produced by layer "
                                                          f"'{previous.producer}' (only in-place layers may rewrite a blob)"))
            latest[top.name] = top
    return problems


def _weight_problems(net: Net, shapes: NetShapes, source: str | None) -> list[str]:
    """Each layer's attached blobs against the shapes its type and bottoms call for."""
    problems = []
    for layer in net.layers:
        info = shapes.layers.get(layer.name)
        if info is None or info.param_shapes is None:
            continue
        expected, blobs = info.param_shapes, layer.blobs
        if expected and not blobs:
            problems.append(_line(source, layer.name, f"no weights in the caffemodel; the {layer.type} layer needs "
                                                      f"{len(expected)} blobs of shapes {', '.join(map(str, expected))}"))
        elif len(blobs) != len(expected):
            what = " (mean, variance, moving-average factor)" if layer.type == "BatchNorm" else ""
            problems.append(_line(source, layer.name, f"the caffemodel has {len(blobs)} blobs, the {layer.type} layer "
                                                      f"needs {len(expected)}{what}"))
        else:
            problems += [_line(source, layer.name, f"blob {index} has shape {tuple(blob.shape)}, the layer expects {want}")
                         for index, (blob, want) in enumerate(zip(blobs, expected))
                         if blob is not None and tuple(blob.shape) != want]
    return problems


def check_model(net: Net, shapes: NetShapes | None = None, source: str | None = None,
                weights_source: str | None = None) -> list[str]:
    """Every problem of ``net`` and the weights attached to its layers (``layer.blobs``).

    ``shapes`` are inferred (collecting every inference problem) when not given;
    net problems name ``source`` (default: the net's), weight problems
    ``weights_source`` (default: ``source``).
    """
    source = source or net.source
    problems = _structure_problems(net, source)
    if shapes is None:
        errors: list[CaffeSurgeryError] = []
        shapes = infer_shapes(net, errors=errors)
        problems += [_line(e.file or source, e.layer, e.problem) for e in errors]
    return problems + _weight_problems(net, shapes, weights_source or source)


def _lenient_net(net_param: caffe_pb2.NetParameter, phase: int, source: str, problems: list[str]) -> Net:
    """Like ``build_net``, but a layer with a duplicate name or a missing bottom is reported and left out
    (and silently so are the layers reading only what it would have made); a blob written twice is kept
    as a rewrite, for ``check_model`` to report."""
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net_param)
    del header.layer[:]
    params = included_layers(net_param, net_state(net_param, phase), source)
    producers = {top: p.name for p in params for top in p.top}
    current: dict[str, BlobVersion] = {}
    dropped: set[str] = set()
    names: set[str] = set()
    layers = []
    for param in params:
        missing = [b for b in param.bottom if b not in current]
        if param.name in names:
            problems.append(_line(source, param.name, "layer name is used twice (this layer is left out of the check)"))
        for name in missing:
            if name in dropped:
                continue
            later = producers.get(name)
            problems.append(_line(source, param.name, f"bottom blob '{name}' is produced only later, by layer '{later}'"
                                  if later and later != param.name else
                                  f"bottom blob '{name}' is not produced by any earlier layer"))
        if param.name in names or missing:
            dropped.update(param.top)
            continue
        names.add(param.name)
        tops = []
        for name in param.top:
            previous = current.get(name)
            tops.append(BlobVersion(name, 0 if previous is None else previous.version + 1, param.name))
        layer_param = caffe_pb2.LayerParameter()
        layer_param.CopyFrom(param)
        layers.append(Layer(param=layer_param, bottoms=[current[b] for b in param.bottom], tops=tops))
        current.update((top.name, top) for top in tops)
    return Net(header, layers, source)


def _attach_stored(net: Net, shapes: NetShapes, stored: StoredLayers,
                   source: str, problems: list[str]) -> None:
    """Give each layer its last stored copy of blobs as arrays (every earlier copy must fit too, as in Caffe);
    legacy 4-D dims that Caffe accepts take the expected shape."""
    for layer in net.layers:
        info = shapes.layers.get(layer.name)
        expected = info.param_shapes if info is not None and info.param_shapes is not None else []
        copies = stored.get(layer.name, [[]])
        for number, blobs in enumerate(copies[:-1], 1):
            try:
                fit_blobs(layer.name, info.param_shapes if info is not None else None, blobs, source)
            except CaffeSurgeryError as exc:
                problems.append(_line(source, layer.name, f"stored copy {number} of {len(copies)} "
                                                          f"(Caffe copies each in turn): {exc.problem}"))
        arrays = []
        for index, stored_blob in enumerate(copies[-1]):
            try:
                blob, array = stored_array(stored_blob)
            except CaffeSurgeryError as exc:
                problems.append(_line(source, layer.name, f"blob {index}: {exc.problem}"))
                arrays.append(None)
                continue
            if (index < len(expected) and array.shape != expected[index] and is_legacy_shape(blob)
                    and legacy_fits(array.shape, expected[index])):
                array = array.reshape(expected[index])
            arrays.append(array)
        layer.blobs = arrays


def check_files(prototxt: str | os.PathLike, weights: str | os.PathLike,
                input_shapes: dict[str, tuple[int, ...]] | None = None, *, phase: int = TEST,
                data_shapes: DataShapes | None = None) -> list[str]:
    """Read, upgrade, build and shape-check a prototxt/caffemodel pair; return every problem found."""
    net_source, weights_source = str(prototxt), str(weights)
    try:
        net_param = upgrade_net(read_net_text(prototxt))
    except CaffeSurgeryError as exc:
        return [exc.with_file(net_source).one_line()]
    problems: list[str] = []
    try:
        net = _lenient_net(net_param, phase, net_source, problems)
    except CaffeSurgeryError as exc:
        return [exc.one_line()]
    errors: list[CaffeSurgeryError] = []
    shapes = infer_shapes(net, input_shapes, data_shapes=data_shapes, errors=errors)
    problems += _structure_problems(net, net_source)
    problems += [_line(e.file or net_source, e.layer, e.problem) for e in errors]
    try:
        stored = read_stored_weights(weights)
    except CaffeSurgeryError as exc:
        return problems + [exc.with_file(weights_source).one_line()]
    _attach_stored(net, shapes, stored, weights_source, problems)
    return problems + _weight_problems(net, shapes, weights_source)
