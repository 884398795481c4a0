"""Writing a ``Net`` back to Caffe files: a deploy prototxt and a caffemodel.

The caffemodel is streamed layer by layer as ``NetParameter.layer`` records:
each layer's parameters are serialized by protobuf, its blobs' values are
written straight from the arrays, so saving holds no copy of any weights.
"""
import os

import numpy as np

from . import caffe_pb2
from .blobs import to_float32_blob
from .graph import Net
from .io import atomic_write, write_text

_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _layer_record(payload: bytes) -> bytes:
    return _varint(_LAYER_FIELD << 3 | 2) + _varint(len(payload)) + payload


def save_prototxt(net: Net, path: str | os.PathLike) -> None:
    """Write the net (no weights) as a current-format text prototxt, atomically."""
    write_text(path, net.to_proto())


_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_KNOWN_LAYER_FIELDS = frozenset(caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_number)
_DATA_KEY = _varint(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number << 3 | 2)
_SHAPE_KEY = _varint(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["shape"].number << 3 | 2)
_DIM_KEY = _varint(caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].number << 3 | 2)
_BLOB_KEY = _varint(_BLOBS_FIELD << 3 | 2)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _blobs_position(serialized: bytes) -> int:
    """Where protobuf would put the ``blobs`` field in a serialized LayerParameter without blobs.

    Known fields come in field-number order, unknown ones last: the blobs go
    before the first field numbered above them or unknown to the schema.
    """
    pos = 0
    while pos < len(serialized):
        start = pos
        key, pos = _read_varint(serialized, pos)
        number, wire = key >> 3, key & 7
        if number > _BLOBS_FIELD or number not in _KNOWN_LAYER_FIELDS:
            return start
        if wire == 0:
            _, pos = _read_varint(serialized, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(serialized, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            return start
    return len(serialized)


def _blob_chunks(array) -> tuple[list, int]:
    """The wire bytes of ``array_to_blob(array)`` as serialized, the values as a view: (chunks, size)."""
    values = np.ascontiguousarray(array, dtype="<f4")
    dims = np.shape(array)
    packed = b"".join(_varint(int(d)) for d in dims)
    shape = _DIM_KEY + _varint(len(packed)) + packed if dims else b""
    tail = _SHAPE_KEY + _varint(len(shape)) + shape
    if not values.size:
        return [tail], len(tail)
    head = _DATA_KEY + _varint(values.nbytes)
    view = memoryview(values.reshape(-1)).cast("B")
    return [head, view, tail], len(head) + values.nbytes + len(tail)


def _caffemodel_chunks(net: Net):
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
        for array in layer.blobs:
            blob, blob_size = _blob_chunks(array)
            head = _BLOB_KEY + _varint(blob_size)
            chunks += [head, *blob]
            size += len(head) + blob_size
        chunks.append(own[split:])
        size += len(own) - split
        yield _varint(_LAYER_FIELD << 3 | 2) + _varint(size)
        yield from chunks


def save_caffemodel(net: Net, path: str | os.PathLike) -> None:
    """Write the net with its weights as a binary caffemodel (float32 blobs), atomically."""
    atomic_write(path, _caffemodel_chunks(net))


def save_float32_weights(weights: caffe_pb2.NetParameter, path: str | os.PathLike) -> None:
    """Write a caffemodel message with every blob as plain float32 ``data`` (what stock Caffe reads).

    Half-precision ``raw_data`` and ``double_data`` blobs are converted; the
    message passed in is left as it is.
    """
    header = caffe_pb2.NetParameter()
    header.CopyFrom(weights)
    del header.layer[:]

    def chunks():
        yield header.SerializeToString()
        for layer in weights.layer:
            record = caffe_pb2.LayerParameter()
            record.CopyFrom(layer)
            del record.blobs[:]
            for blob in layer.blobs:
                record.blobs.append(to_float32_blob(blob))
            yield _layer_record(record.SerializeToString())

    atomic_write(path, chunks())
