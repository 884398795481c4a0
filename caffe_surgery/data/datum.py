"""Conversion between Caffe ``Datum`` records and numpy arrays."""

import cv2
import numpy as np

from caffe_surgery import caffe_pb2
from caffe_surgery.errors import DataError


def decode_image(buffer: bytes, force_color: bool = False, force_gray: bool = False) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) to a C×H×W uint8 array, BGR channel order.

    Like Caffe, ``force_color`` gives 3 channels, ``force_gray`` 1 channel, and
    neither keeps the image's own colour mode.
    """
    if force_color and force_gray:
        raise DataError("force_color and force_gray cannot both be set")
    if force_color:
        flag = cv2.IMREAD_COLOR
    elif force_gray:
        flag = cv2.IMREAD_GRAYSCALE
    else:
        flag = cv2.IMREAD_ANYCOLOR
    image = cv2.imdecode(np.frombuffer(buffer, dtype=np.uint8), flag)
    if image is None:
        raise DataError("encoded image cannot be decoded")
    return hwc_to_chw(image)


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """Turn an OpenCV image (H×W or H×W×C) into a C×H×W array."""
    if image.ndim == 2:
        return image[np.newaxis]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def datum_to_array(datum: caffe_pb2.Datum, force_color: bool = False,
                   force_gray: bool = False) -> tuple[np.ndarray, int]:
    """Return the Datum's sample as a C×H×W array (uint8, or float32 for float_data) and its label.

    Raw uint8 data comes back as a read-only view of the Datum's bytes.
    """
    if datum.encoded:
        return decode_image(datum.data, force_color, force_gray), datum.label
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if datum.data:
        values = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        values = np.asarray(datum.float_data, dtype=np.float32)
    if values.size != size:
        raise DataError(f"Datum holds {values.size} values, its shape "
                        f"{shape[0]}x{shape[1]}x{shape[2]} needs {size}")
    return values.reshape(shape), datum.label


def array_to_datum(array: np.ndarray, label: int = 0, encoding: str | None = None) -> caffe_pb2.Datum:
    """Build a Datum from a C×H×W (or H×W) array.

    uint8 arrays go to ``data``, float arrays to ``float_data``; with ``encoding``
    (an OpenCV extension such as ``".png"``) a uint8 array is stored encoded.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise DataError(f"a Datum holds a C×H×W array, got shape {array.shape}")
    datum = caffe_pb2.Datum(label=int(label))
    if encoding is not None:
        if array.dtype != np.uint8:
            raise DataError(f"only uint8 images can be encoded, got {array.dtype}")
        ok, buffer = cv2.imencode(encoding, array.transpose(1, 2, 0))
        if not ok:
            raise DataError(f"OpenCV cannot encode to {encoding}")
        datum.data = buffer.tobytes()
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = array.shape
    if array.dtype == np.uint8:
        datum.data = array.tobytes()
    else:
        datum.float_data.extend(array.astype(np.float32).ravel().tolist())
    return datum
