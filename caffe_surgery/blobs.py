"""BlobProto <-> numpy, for every way Caffe files store a blob.

Shapes come from ``shape.dim`` or from the legacy num/channels/height/width
fields; values from ``data`` (float), ``double_data`` or NVIDIA's ``raw_data``
with ``raw_data_type``. Arrays are built from the packed fields in one call,
never element by element, and blobs are written by handing protobuf the packed
bytes so no per-element conversion runs in either direction.
"""
import numpy as np

from . import caffe_pb2, limits
from .errors import ParseError
from .wire import VARINT, encode_varint, field_key, length_delimited

_RAW_DTYPES = {
    caffe_pb2.DOUBLE: np.dtype("<f8"),
    caffe_pb2.FLOAT: np.dtype("<f4"),
    caffe_pb2.FLOAT16: np.dtype("<f2"),
    caffe_pb2.INT: np.dtype("<i4"),
    caffe_pb2.UINT: np.dtype("<u4"),
}


_LEGACY_DIMS = ("num", "channels", "height", "width")


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...] | None:
    """The blob's declared shape: ``shape.dim`` if present (``()`` for a scalar), else the
    legacy 4-D dims, else None.

    ParseError for a negative dimension, and for ``shape`` and legacy dims that
    disagree (Caffe reads the legacy dims then, so the blob means two things).
    """
    legacy = None
    if any(blob.HasField(f) for f in _LEGACY_DIMS):
        legacy = tuple(getattr(blob, f) for f in _LEGACY_DIMS)
    shape = tuple(int(d) for d in blob.shape.dim) if blob.HasField("shape") else None
    if shape is not None and legacy is not None and (
            len(shape) > 4 or legacy != (1,) * (4 - len(shape)) + shape):
        raise ParseError(f"blob declares shape {shape} and conflicting legacy dims {legacy}")
    declared = shape if shape is not None else legacy
    if declared is not None:
        limits.element_count(declared, "blob shape")
    return declared


def is_legacy_shape(blob: caffe_pb2.BlobProto) -> bool:
    """True when the shape is given by num/channels/height/width rather than ``shape``."""
    return not blob.HasField("shape")


def blob_to_array(blob: caffe_pb2.BlobProto, data: np.ndarray | None = None) -> np.ndarray:
    """Return the blob's values as a float32 array of its declared shape.

    ``data``: the blob's float ``data`` values when they were read apart from
    the message (see ``io.read_weight_layers``; the message's own ``data`` is
    then empty). Raises ParseError when the value count does not match the shape.
    """
    if blob.HasField("raw_data_type") or blob.HasField("raw_data"):
        dtype = _RAW_DTYPES.get(blob.raw_data_type)
        if dtype is None:
            raise ParseError(f"blob has unknown raw_data_type {blob.raw_data_type}")
        if len(blob.raw_data) % dtype.itemsize:
            raise ParseError(f"raw_data of {len(blob.raw_data)} bytes is not a whole number of {dtype.name} values")
        values = np.frombuffer(blob.raw_data, dtype=dtype).astype(np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    elif data is not None:
        values = np.asarray(data, dtype=np.float32).reshape(-1)
    else:
        values = np.array(blob.data, dtype=np.float32)
    shape = blob_shape(blob)
    if shape is None:
        return values
    expected = limits.element_count(shape)
    if values.size != expected:
        raise ParseError(f"blob of shape {shape} holds {values.size} values, expected {expected}")
    return values.reshape(shape)


def array_to_blob(array: np.ndarray, shape: tuple[int, ...] | None = None) -> caffe_pb2.BlobProto:
    """Build a float32 BlobProto (``shape`` + packed ``data``) from an array.

    ``shape`` overrides the array's own shape (same element count), e.g. to keep
    a legacy layout. The packed bytes go straight to protobuf's parser.
    """
    dims = tuple(np.shape(array) if shape is None else shape)
    values = np.ascontiguousarray(array, dtype="<f4")
    if int(np.prod(dims)) != values.size:
        raise ValueError(f"shape {dims} does not fit {values.size} values")
    shape_payload = length_delimited(1, b"".join(encode_varint(d) for d in dims)) if dims else b""
    payload = length_delimited(7, shape_payload) + length_delimited(5, values.tobytes())
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(payload)
    return blob


def to_float32_blob(blob: caffe_pb2.BlobProto) -> caffe_pb2.BlobProto:
    """The same blob with its values as float32 ``data``, keeping how its shape was given.

    Legacy num/channels/height/width dims stay legacy, so stock Caffe's loose
    shape check still accepts them where the layer's shape has fewer axes.
    """
    values = blob_to_array(blob)
    if not is_legacy_shape(blob):
        return array_to_blob(values)
    dims = b"".join(field_key(number, VARINT) + encode_varint(getattr(blob, name))
                    for number, name in ((1, "num"), (2, "channels"), (3, "height"), (4, "width")))
    out = caffe_pb2.BlobProto()
    out.ParseFromString(dims + length_delimited(5, np.ascontiguousarray(values, dtype="<f4").tobytes()))
    return out

