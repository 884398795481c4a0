"""Caffe Data layer input: an LMDB of Datum records, read in cursor (key) order."""

import os
from collections.abc import Iterator

import lmdb
import numpy as np

from caffe_surgery import caffe_pb2
from caffe_surgery.data.base import Batch, Source
from caffe_surgery.data.datum import datum_to_array
from caffe_surgery.data.transform import Transformer
from caffe_surgery.errors import DataError

LEVELDB_UNSUPPORTED = "LevelDB is not supported, convert to LMDB"


def looks_like_leveldb(path: str) -> bool:
    """Whether ``path`` is a LevelDB directory (a CURRENT file and no data.mdb)."""
    return (os.path.isfile(os.path.join(path, "CURRENT"))
            and not os.path.exists(os.path.join(path, "data.mdb")))


_OPEN: dict[tuple, lmdb.Environment] = {}


def _environment(path: str) -> lmdb.Environment:
    """One read-only environment per LMDB file and process (the lmdb package refuses to open one twice);
    a database replaced on disk since is opened afresh."""
    data = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    status = os.stat(data) if os.path.exists(data) else None
    key = (os.path.realpath(path), status and status.st_ino, status and status.st_mtime_ns)
    if key not in _OPEN:
        _OPEN[key] = lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path))
    return _OPEN[key]


class LmdbSource(Source):
    """Datum records of an LMDB directory (or bare data file), opened read-only without locking."""

    def __init__(self, path: str, transformer: Transformer | None = None):
        if not os.path.exists(path):
            raise DataError("no such LMDB", file=path)
        if looks_like_leveldb(path):
            raise DataError(LEVELDB_UNSUPPORTED, file=path)
        try:
            self._env = _environment(path)
        except lmdb.Error as exc:
            raise DataError(f"cannot open LMDB: {exc}", file=path) from None
        transformer = transformer or Transformer()
        self._force = (transformer.force_color, transformer.force_gray)
        count = self._env.stat()["entries"]
        if count == 0:
            raise DataError("LMDB holds no records", file=path)
        with self._env.begin() as txn:
            key, value = next(iter(txn.cursor()))
            first = self._decode(key, value)[0]
        super().__init__(count, first.shape, transformer, path)

    def _decode(self, key: bytes, value: bytes) -> tuple[np.ndarray, int]:
        try:
            return datum_to_array(caffe_pb2.Datum.FromString(value), *self._force)
        except DataError as exc:
            raise DataError(f"record {key!r}: {exc.problem}", file=self.name) from None
        except Exception as exc:  # protobuf's DecodeError
            raise DataError(f"record {key!r} is not a Datum: {exc}", file=self.name) from None

    def _read(self, lo: int, hi: int, batch_size: int) -> Iterator[Batch]:
        with self._env.begin() as txn:
            cursor = txn.cursor()
            cursor.first()
            for _ in range(lo):
                cursor.next()
            records = cursor.iternext()
            for start in range(lo, hi, batch_size):
                samples, labels = [], []
                for _ in range(min(batch_size, hi - start)):
                    key, value = next(records)
                    sample, label = self._decode(key, value)
                    self._check_shape(sample, f"record {key!r}")
                    samples.append(sample)
                    labels.append(label)
                yield np.stack(samples), np.asarray(labels, dtype=np.int64)
