"""Writing samples to a Caffe-compatible LMDB of Datum records."""

import os
import shutil
import tempfile

import lmdb
import numpy as np

from caffe_surgery import guard
from caffe_surgery.data.base import Source
from caffe_surgery.data.datum import array_to_datum
from caffe_surgery.data.prefetch import prefetch
from caffe_surgery.data.spec import parse_data_spec
from caffe_surgery.errors import DataError
from caffe_surgery.io import TEMP_MARK, remove_stale_temporaries
from caffe_surgery.progress import progress

RECORDS_PER_TXN = 1000  # as Caffe's convert tools commit
MAP_SLACK = 64 << 20


def convert_to_lmdb(source: Source, out_path: str, *, limit: int | None = None,
                    overwrite: bool = False) -> int:
    """Write the source's untransformed samples as Datum records keyed ``'%08d' % index``.

    The LMDB is built in a temporary directory beside ``out_path`` and renamed into
    place, so a failure leaves nothing behind. Returns the number of records written.
    """
    guard.refuse_input(out_path)
    if os.path.lexists(out_path) and not overwrite:
        raise DataError("output exists; pass --force (overwrite=True) to replace it", file=out_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    count = len(source) if limit is None else max(0, min(limit, len(source)))
    remove_stale_temporaries(parent)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.{os.getpid()}.", suffix=TEMP_MARK, dir=parent)
    try:
        written = _write(source, count, work)
        os.chmod(work, 0o755)
        if os.path.lexists(out_path):
            _remove(out_path)
        os.rename(work, out_path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return written


def convert_data(spec: str, out_path: str, limit: int | None = None, overwrite: bool = False) -> int:
    """Convert the data a spec names (e.g. ``idx:IMAGES:LABELS``) to an LMDB; return the count."""
    return convert_to_lmdb(parse_data_spec(spec), out_path, limit=limit, overwrite=overwrite)


def _write(source: Source, count: int, path: str) -> int:
    """Write ``count`` records into a new LMDB at ``path``; return how many were written."""
    sample_bytes = int(np.prod(source.raw_shape))  # uint8; float data grows the map on demand
    env = lmdb.open(path, map_size=2 * count * (sample_bytes + 64) + MAP_SLACK, sync=False)
    try:
        index = 0
        with progress(count, "convert") as bar:
            for images, labels in prefetch(source.iter_raw(RECORDS_PER_TXN, 0, count)):
                records = [(b"%08d" % (index + i), array_to_datum(image, label).SerializeToString())
                           for i, (image, label) in enumerate(zip(images, labels))]
                _commit(env, records)
                index += len(records)
                bar.update(len(records))
        env.sync(True)
    finally:
        env.close()
    return index


def _commit(env: lmdb.Environment, records: list[tuple[bytes, bytes]]) -> None:
    """Write records in one transaction, doubling the map whenever it is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in records:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
