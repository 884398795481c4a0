"""Reading and writing Caffe files: text prototxts, binary caffemodels, binaryproto means.

Parsing is strict about where a problem is (file, line, column); writing is
atomic (a temporary file beside the target, then a rename), so a failed write
leaves nothing behind and never touches an input.
"""
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from google.protobuf import message, text_format

from . import caffe_pb2, guard, limits, schema, textproto
from .blobs import blob_to_array
from .errors import ParseError
from .wire import FIXED32, FIXED64, LENGTH, VARINT, encode_varint


PROTOBUF_LIMIT = 2**31 - 1
"""The most bytes Caffe's protobuf reader accepts in one message (caffemodel, binaryproto)."""


def _read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    return limits.read_file(path, what, limit=PROTOBUF_LIMIT)


def _parse_text(path, proto):
    text = _read_bytes(path, "text prototxt").decode("utf-8", errors="replace")
    fork = schema.active()
    target = fork.message_class(proto.DESCRIPTOR.full_name)() if fork else proto
    try:
        textproto.parse(text, target)
    except text_format.ParseError as exc:
        raise ParseError(f"syntax error: {exc}", file=str(path)) from exc
    return fork.from_fork(target, proto) if fork else proto


def read_net_text(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a net prototxt exactly as written (no upgrade)."""
    return _parse_text(path, caffe_pb2.NetParameter())


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt exactly as written (no upgrade)."""
    return _parse_text(path, caffe_pb2.SolverParameter())


def _parse_binary(path, proto, what: str):
    data = _read_bytes(path, what)
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


class _NotPlain(Exception):
    """The file is not a plain current-format caffemodel the streaming reader handles."""


_NET_LAYER = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_NET_V1_LAYERS = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number
_LAYER_BLOBS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_BLOB_DATA = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number
_BLOB_DIFF = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["diff"].number


class _Wire:
    """Protobuf wire-format fields read from a file, with the position counted."""

    def __init__(self, handle, size: int):
        self.handle, self.size, self.pos = handle, size, 0

    def varint(self) -> int:
        result = shift = 0
        while shift < 64:
            byte = self.handle.read(1)
            if not byte:
                raise _NotPlain
            self.pos += 1
            result |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                return result
            shift += 7
        raise _NotPlain

    def take(self, count: int) -> bytes:
        if count > self.size - self.pos:
            raise _NotPlain
        data = self.handle.read(count)
        if len(data) != count:
            raise _NotPlain
        self.pos += count
        return data

    def skip(self, count: int) -> None:
        if count > self.size - self.pos:
            raise _NotPlain
        self.handle.seek(count, os.SEEK_CUR)
        self.pos += count

    def fill(self, array: np.ndarray) -> None:
        """Read exactly the array's bytes into it (no intermediate copy)."""
        view = memoryview(array).cast("B")
        if len(view) > self.size - self.pos:
            raise _NotPlain
        done = 0
        while done < len(view):
            count = self.handle.readinto(view[done:])
            if not count:
                raise _NotPlain
            done += count
        self.pos += done

    def field(self) -> tuple[int, int, bytes]:
        """(field number, wire type, the key's bytes as they are re-encoded)."""
        key = self.varint()
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (VARINT, FIXED64, LENGTH, FIXED32):
            raise _NotPlain  # groups (deprecated) and garbage: let protobuf judge
        return number, wire, encode_varint(key)

    def rest_of_field(self, wire: int) -> bytes:
        """The value bytes of a field whose key was just read, as stored."""
        if wire == VARINT:
            return encode_varint(self.varint())
        if wire == FIXED64:
            return self.take(8)
        if wire == FIXED32:
            return self.take(4)
        length = self.varint()
        return encode_varint(length) + self.take(length)


def _read_blob(wire: _Wire, end: int) -> tuple[caffe_pb2.BlobProto, np.ndarray | None]:
    """One BlobProto up to ``end``: its packed float ``data`` read straight into an array, the rest parsed."""
    rest, chunks = [], []
    while wire.pos < end:
        number, kind, key = wire.field()
        if number == _BLOB_DATA:
            if kind != LENGTH:
                raise _NotPlain
            length = wire.varint()
            if length % 4 or length > wire.size - wire.pos:
                raise _NotPlain
            chunk = np.empty(length // 4, dtype="<f4")
            wire.fill(chunk)
            chunks.append(chunk)
        elif number == _BLOB_DIFF and kind == LENGTH:
            wire.skip(wire.varint())  # gradients: never used, never kept
        else:
            rest.append(key + wire.rest_of_field(kind))
    if wire.pos != end:
        raise _NotPlain
    try:
        header = caffe_pb2.BlobProto.FromString(b"".join(rest))
    except message.DecodeError:
        raise _NotPlain from None
    if not chunks:
        return header, None
    values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return header, values.astype(np.float32, copy=False)


def _read_layer(wire: _Wire, end: int) -> tuple[caffe_pb2.LayerParameter, list]:
    rest, blobs = [], []
    while wire.pos < end:
        number, kind, key = wire.field()
        if number == _LAYER_BLOBS and kind == LENGTH:
            length = wire.varint()
            blobs.append(_read_blob(wire, wire.pos + length))
        else:
            rest.append(key + wire.rest_of_field(kind))
    if wire.pos != end:
        raise _NotPlain
    try:
        return caffe_pb2.LayerParameter.FromString(b"".join(rest)), blobs
    except message.DecodeError:
        raise _NotPlain from None


def read_weight_layers(path: str | os.PathLike):
    """Stream a current-format caffemodel: ``(header, [(layer, [(blob, values), ...]), ...])``, or None.

    ``header`` is the NetParameter without its layers; each layer comes
    without its blobs, each blob without its float ``data``, whose values are
    read from the file straight into a float32 array (``values``; None when
    the blob has no ``data``, e.g. raw or double values, which stay in the
    message). Memory holds the arrays and one small message at a time: the
    file's bytes are never held whole and no value is converted one by one.

    None means the file is not such a caffemodel (V1/V0 ``layers``, no layer,
    unpacked values, anything malformed): read it with ``read_weights``,
    which also gives the precise error.
    """
    size = limits.regular_file_size(path, "caffemodel")
    limits.check_allocation(size, "the caffemodel's values", file=str(path))
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror}", file=str(path)) from exc
    with handle:
        wire = _Wire(handle, size)
        rest, layers = [], []
        try:
            while wire.pos < size:
                number, kind, key = wire.field()
                if number == _NET_V1_LAYERS:
                    return None
                if number == _NET_LAYER and kind == LENGTH:
                    length = wire.varint()
                    layers.append(_read_layer(wire, wire.pos + length))
                else:
                    rest.append(key + wire.rest_of_field(kind))
            header = caffe_pb2.NetParameter.FromString(b"".join(rest))
        except (_NotPlain, message.DecodeError):
            return None
    if not layers:
        return None
    return header, layers


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.binaryproto`` mean image as a float32 array (C, H, W)."""
    blob = _parse_binary(path, caffe_pb2.BlobProto(), "binaryproto mean file")
    try:
        mean = blob_to_array(blob)
    except ParseError as exc:
        raise exc.with_file(str(path))
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.size == 0:
        raise ParseError(f"mean blob has shape {mean.shape}, expected (1, C, H, W) or (C, H, W)", file=str(path))
    return mean


TEMP_MARK = ".caffe-surgery-tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+" + re.escape(TEMP_MARK) + "$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of our own naming left in ``folder`` by writers that died; return them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or entry.is_symlink() or _process_alive(int(match["pid"])):
            continue
        if entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write the chunks to ``path`` through a temporary file, fsync and a rename.

    A kill at any moment leaves the old file or the complete new one; the
    temporary file (``.NAME.PID.XXXX.caffe-surgery-tmp``) of a killed writer
    is removed by the next write into the same folder. An input of the
    running command is never replaced (``guard``).
    """
    target = Path(path)
    guard.refuse_input(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.",
                                         suffix=TEMP_MARK)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_name, 0o666 & ~umask)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (where the platform lets a folder be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_text(path: str | os.PathLike, proto: message.Message) -> None:
    """Write a message as a text prototxt, atomically."""
    fork = schema.active()
    atomic_write(path, [textproto.to_text(fork.to_fork(proto) if fork else proto).encode("utf-8")])


def write_binary(path: str | os.PathLike, proto: message.Message) -> None:
    """Write a message in protobuf binary form, atomically."""
    atomic_write(path, [proto.SerializeToString()])
