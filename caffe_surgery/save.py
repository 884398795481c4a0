"""Writing a ``Net`` back to Caffe files: a deploy prototxt and a caffemodel.

The caffemodel is streamed layer by layer (each layer's blobs are serialized
on their own and appended as a ``NetParameter.layer`` record), so saving holds
one layer's bytes at a time on top of the arrays themselves.
"""
import os

from . import caffe_pb2
from .blobs import array_to_blob, to_float32_blob
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


def _caffemodel_chunks(net: Net):
    yield net.header.SerializeToString()
    for layer in net.layers:
        record = caffe_pb2.LayerParameter()
        record.CopyFrom(layer.param)
        del record.blobs[:]
        for array in layer.blobs:
            record.blobs.append(array_to_blob(array))
        yield _layer_record(record.SerializeToString())


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
