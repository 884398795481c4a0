"""Writing a ``Net`` back to Caffe files: a deploy prototxt and a caffemodel.

The caffemodel is streamed layer by layer as ``NetParameter.layer`` records:
each layer's parameters are serialized by protobuf, its blobs' values are
written straight from the arrays, so saving holds no copy of any weights.
"""
import os
from pathlib import Path

import numpy as np

from . import caffe_pb2
from .blobs import to_float32_blob
from .graph import Net
from .io import atomic_write, write_text
from .precision import halved, half_values, to_half_blob
from .wire import FIXED32, FIXED64, LENGTH, VARINT, decode_varint, encode_varint, field_key, length_delimited

_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number


def save_prototxt(net: Net, path: str | os.PathLike) -> None:
    """Write the net (no weights) as a current-format text prototxt, atomically."""
    write_text(path, net.to_proto())


_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_KNOWN_LAYER_FIELDS = frozenset(caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_number)
_DATA_KEY = field_key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number)
_RAW_TYPE_HALF = (field_key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["raw_data_type"].number, VARINT)
                  + encode_varint(caffe_pb2.FLOAT16))
_RAW_DATA_KEY = field_key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["raw_data"].number)
_SHAPE_KEY = field_key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["shape"].number)
_DIM_KEY = field_key(caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].number)
_BLOB_KEY = field_key(_BLOBS_FIELD)


def _blobs_position(serialized: bytes) -> int:
    """Where protobuf would put the ``blobs`` field in a serialized LayerParameter without blobs.

    Known fields come in field-number order, unknown ones last: the blobs go
    before the first field numbered above them or unknown to the schema.
    """
    pos = 0
    while pos < len(serialized):
        start = pos
        key, pos = decode_varint(serialized, pos)
        number, wire = key >> 3, key & 7
        if number > _BLOBS_FIELD or number not in _KNOWN_LAYER_FIELDS:
            return start
        if wire == VARINT:
            _, pos = decode_varint(serialized, pos)
        elif wire == FIXED64:
            pos += 8
        elif wire == LENGTH:
            length, pos = decode_varint(serialized, pos)
            pos += length
        elif wire == FIXED32:
            pos += 4
        else:
            return start
    return len(serialized)


def _blob_chunks(array, half: bool = False) -> tuple[list, int]:
    """The wire bytes of ``array_to_blob(array)`` as serialized, the values as a view: (chunks, size).

    ``half``: the values as half floats in ``raw_data`` after the shape, as shrinkCaffeModel writes them.
    """
    values = np.ascontiguousarray(array, dtype="<f4")
    dims = np.shape(array)
    packed = b"".join(encode_varint(int(d)) for d in dims)
    shape = _DIM_KEY + encode_varint(len(packed)) + packed if dims else b""
    tail = _SHAPE_KEY + encode_varint(len(shape)) + shape
    if half:
        raw = half_values(values)
        chunk = tail + _RAW_TYPE_HALF + _RAW_DATA_KEY + encode_varint(len(raw)) + raw
        return [chunk], len(chunk)
    if not values.size:
        return [tail], len(tail)
    head = _DATA_KEY + encode_varint(values.nbytes)
    view = memoryview(values.reshape(-1)).cast("B")
    return [head, view, tail], len(head) + values.nbytes + len(tail)


def _caffemodel_chunks(net: Net, precision: str = "fp32"):
    """The caffemodel's bytes, one layer record at a time; blob values are written from the arrays themselves.

    Byte for byte what serializing each layer with ``array_to_blob`` blobs gives,
    without copying any value: no BlobProto is built.
    """
    yield net.header.SerializeToString()
    for layer in net.layers:
        record = caffe_pb2.LayerParameter()
        record.CopyFrom(layer.param)
        del record.blobs[:]
        own = record.SerializeToString()
        split = _blobs_position(own)
        chunks, size = [own[:split]], split
        half = halved(precision, layer.type)
        for array in layer.blobs:
            blob, blob_size = _blob_chunks(array, half)
            head = _BLOB_KEY + encode_varint(blob_size)
            chunks += [head, *blob]
            size += len(head) + blob_size
        chunks.append(own[split:])
        size += len(own) - split
        yield field_key(_LAYER_FIELD) + encode_varint(size)
        yield from chunks


def caffemodel_bytes(net: Net) -> bytes:
    """The float32 caffemodel ``save_caffemodel`` writes, in memory (for loaders that take a buffer)."""
    return b"".join(_caffemodel_chunks(net, "fp32"))


def save_caffemodel(net: Net, path: str | os.PathLike, precision: str = "fp32") -> None:
    """Write the net with its weights as a binary caffemodel, atomically.

    ``precision``: "fp32" (float32 blobs) or "fp16" (Convolution/InnerProduct blobs as half floats,
    the format of OpenCV's shrinkCaffeModel; see ``precision``).
    """
    halved(precision, "")  # an unknown precision fails before anything is written
    atomic_write(path, _caffemodel_chunks(net, precision))


def save_pair(net: Net, prefix: str | os.PathLike, precision: str = "fp32") -> tuple[Path, Path]:
    """Write ``PREFIX.prototxt`` and ``PREFIX.caffemodel`` (``precision`` as in ``save_caffemodel``); return them."""
    paths = Path(f"{prefix}.prototxt"), Path(f"{prefix}.caffemodel")
    save_prototxt(net, paths[0])
    save_caffemodel(net, paths[1], precision)
    return paths


def save_float32_weights(weights: caffe_pb2.NetParameter, path: str | os.PathLike, precision: str = "fp32") -> None:
    """Write a caffemodel message with every blob as plain float32 ``data`` (what stock Caffe reads).

    Half-precision ``raw_data`` and ``double_data`` blobs are converted; the
    message passed in is left as it is. ``precision="fp16"`` then stores the
    Convolution/InnerProduct blobs as half floats, as OpenCV's shrinkCaffeModel does.
    """
    halved(precision, "")
    header = caffe_pb2.NetParameter()
    header.CopyFrom(weights)
    del header.layer[:]

    def chunks():
        yield header.SerializeToString()
        for layer in weights.layer:
            record = caffe_pb2.LayerParameter()
            record.CopyFrom(layer)
            del record.blobs[:]
            half = halved(precision, layer.type)
            for blob in layer.blobs:
                blob = to_float32_blob(blob)
                record.blobs.append(to_half_blob(blob) if half else blob)
            yield length_delimited(_LAYER_FIELD, record.SerializeToString())

    atomic_write(path, chunks())
