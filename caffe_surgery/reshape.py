"""A new input shape written into a net: Input/DummyData/MemoryData shapes and data layers' batch sizes.

Legacy ``input``/``input_dim``/``input_shape`` headers are upgraded into an
Input layer first (as every writer of this tool writes the current format).
Data layers whose images come from a database (Data, HDF5Data, WindowData)
take only the batch from the new shape: their channels, height and width
are the database's. ImageData takes the height and width too (as
``new_height``/``new_width``) when it does not crop.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from . import caffe_pb2
from .dataflow import item_shapes
from .errors import CaffeSurgeryError, ShapeError
from .graph import TEST, Net, build_net, net_from_layers
from .io import atomic_write, write_text
from .model import attach_weights, read_stored_weights, read_upgraded_net
from .shapes import infer_shapes

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
BATCH_PARAMS = {"Data": "data_param", "HDF5Data": "hdf5_data_param", "WindowData": "window_data_param",
                "ImageData": "image_data_param", "MemoryData": "memory_data_param"}


def _set_shapes(shapes_field, tops: list[str], wanted: Mapping[str, Shape]) -> None:
    """A repeated BlobShape with one shape per top (expanded from a shared one), the wanted tops replaced."""
    current = [list(s.dim) for s in shapes_field]
    if len(current) == 1 and len(tops) > 1:
        current = current * len(tops)
    if len(current) != len(tops):
        current = [[] for _ in tops]
    del shapes_field[:]
    for top, dims in zip(tops, current):
        shapes_field.add().dim.extend(wanted.get(top, dims))


def _reshape_layer(layer: caffe_pb2.LayerParameter, wanted: Mapping[str, Shape]) -> None:
    tops = list(layer.top)
    shape = wanted[tops[0]] if tops and tops[0] in wanted else None
    if layer.type == "Input":
        _set_shapes(layer.input_param.shape, tops, wanted)
    elif layer.type == "DummyData":
        p = layer.dummy_data_param
        if not len(p.shape):
            legacy = [(p.num[i % len(p.num)], p.channels[i % len(p.channels)], p.height[i % len(p.height)],
                       p.width[i % len(p.width)]) for i in range(len(tops))] if len(p.num) else []
            for dims in legacy:
                p.shape.add().dim.extend(dims)
            for name in ("num", "channels", "height", "width"):
                p.ClearField(name)
        _set_shapes(p.shape, tops, wanted)
    elif layer.type in BATCH_PARAMS and shape is not None:
        param = getattr(layer, BATCH_PARAMS[layer.type])
        param.batch_size = shape[0]
        if layer.type == "MemoryData" and len(shape) == 4:
            param.channels, param.height, param.width = shape[1:]
        if layer.type == "ImageData" and len(shape) == 4 and not layer.transform_param.crop_size:
            param.new_height, param.new_width = shape[2:]


def reshape_param(net_param: caffe_pb2.NetParameter, wanted: Mapping[str, Shape],
                  source: str | None = None) -> caffe_pb2.NetParameter:
    """A copy of the (current-format) net with the wanted top shapes written into every layer making them.

    Every phase's layers are rewritten; a name no data or input layer makes is an error.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    made = set()
    for layer in out.layer:
        if not layer.bottom and any(top in wanted for top in layer.top):
            _reshape_layer(layer, wanted)
            made.update(top for top in layer.top if top in wanted)
    missing = sorted(set(wanted) - made)
    if missing:
        raise ShapeError(f"no data or input layer makes {', '.join(missing)}", file=source)
    return out


def reshape_net(net: Net, wanted: Mapping[str, Shape]) -> Net:
    """The net (weights kept) with the wanted input shapes written into its layers (itself when none)."""
    if not wanted:
        return net
    reshaped = net_from_layers(reshape_param(net.to_proto(), wanted, net.source), source=net.source)
    for layer in reshaped.layers:
        layer.blobs = net.layer(layer.name).blobs
    return reshaped


def check_written_shapes(net: Net, shapes, wanted: Mapping[str, Shape]) -> None:
    """The shapes inferred for the written net are the wanted ones (a database fixes C, H and W)."""
    for layer in net.layers:
        for top in layer.tops:
            if not layer.bottoms and top.name in wanted and tuple(shapes.blob(top)) != tuple(wanted[top.name]):
                raise CaffeSurgeryError(f"'{top.name}' would be {tuple(shapes.blob(top))}, not "
                                        f"{tuple(wanted[top.name])}: only the batch of a {layer.type} layer can "
                                        "change (its source fixes the rest)", file=net.source, layer=layer.name)


def reshape_command(prototxt: str | os.PathLike, weights: str | os.PathLike | None, wanted: Mapping[str, Shape],
                    output_prefix: str | os.PathLike, phase: int = TEST) -> list[Path]:
    """Write PREFIX.prototxt with the new input shapes (and a copy of the weights as PREFIX.caffemodel) once
    every layer of ``phase`` is known to fit them; return the paths written."""
    source = str(prototxt)
    written = reshape_param(read_upgraded_net(prototxt), wanted, source)
    net = build_net(written, phase=phase, level=written.state.level, stages=tuple(written.state.stage), source=source)
    items = {name: tuple(shape[1:]) for name, shape in wanted.items()}
    try:
        shapes = infer_shapes(net, data_shapes=item_shapes(prototxt, items))
    except CaffeSurgeryError as exc:
        raise exc.with_file(source)
    check_written_shapes(net, shapes, wanted)
    if weights is not None:
        for message in attach_weights(net, shapes, read_stored_weights(weights), str(weights)):
            log.warning(message)
    outputs = [Path(f"{output_prefix}.prototxt")]
    if weights is not None:
        outputs.append(Path(f"{output_prefix}.caffemodel"))
        atomic_write(outputs[1], [Path(weights).read_bytes()])
    write_text(outputs[0], written)
    return outputs
