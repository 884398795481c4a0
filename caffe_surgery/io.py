"""Reading and writing Caffe files: text prototxts, binary caffemodels, binaryproto means.

Parsing is strict about where a problem is (file, line, column); writing is
atomic (a temporary file beside the target, then a rename), so a failed write
leaves nothing behind and never touches an input.
"""
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from google.protobuf import message, text_format

from . import caffe_pb2, textproto
from .blobs import blob_to_array
from .errors import ParseError


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror}", file=str(path)) from exc


def _parse_text(path, proto):
    text = _read_bytes(path).decode("utf-8", errors="replace")
    try:
        textproto.parse(text, proto)
    except text_format.ParseError as exc:
        raise ParseError(f"syntax error: {exc}", file=str(path)) from exc
    return proto


def read_net_text(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a net prototxt exactly as written (no upgrade)."""
    return _parse_text(path, caffe_pb2.NetParameter())


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt exactly as written (no upgrade)."""
    return _parse_text(path, caffe_pb2.SolverParameter())


def _parse_binary(path, proto, what: str):
    data = _read_bytes(path)
    try:
        proto.ParseFromString(data)
    except message.DecodeError as exc:
        raise ParseError(f"not a valid {what} (truncated or corrupt: {exc})", file=str(path)) from exc
    return proto


def read_weights(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a binary caffemodel (current or V1 layout) exactly as stored."""
    net = _parse_binary(path, caffe_pb2.NetParameter(), "caffemodel")
    if not len(net.layer) and not len(net.layers):
        raise ParseError("caffemodel holds no layers", file=str(path))
    return net


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.binaryproto`` mean image as a float32 array (C, H, W)."""
    blob = _parse_binary(path, caffe_pb2.BlobProto(), "binaryproto mean file")
    try:
        mean = blob_to_array(blob)
    except ParseError as exc:
        raise exc.with_file(str(path))
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise ParseError(f"mean blob has shape {mean.shape}, expected (1, C, H, W) or (C, H, W)", file=str(path))
    return mean


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write the chunks to ``path`` through a temporary file and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_name, 0o666 & ~umask)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, proto: message.Message) -> None:
    """Write a message as a text prototxt, atomically."""
    atomic_write(path, [textproto.to_text(proto).encode("utf-8")])


def write_binary(path: str | os.PathLike, proto: message.Message) -> None:
    """Write a message in protobuf binary form, atomically."""
    atomic_write(path, [proto.SerializeToString()])
