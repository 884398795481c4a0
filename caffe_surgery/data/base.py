"""The common behaviour of data sources: windows, shards and transformed batches."""

import copy
from collections.abc import Iterator

import numpy as np

from caffe_surgery.data.prefetch import prefetch
from caffe_surgery.data.transform import Transformer, format_shape
from caffe_surgery.errors import DataError

Batch = tuple[np.ndarray, np.ndarray]


class Source:
    """Samples read the way a Caffe data layer reads them in the TEST phase.

    Subclasses give the sample count, the untransformed sample shape and
    ``_read(lo, hi, batch_size)``, which yields raw ``(N×C×H×W array, int64
    labels)`` batches over absolute sample indexes ``[lo, hi)``.
    """

    has_labels = True
    """False when the samples carry no labels (they read as 0)."""

    def __init__(self, count: int, raw_shape: tuple[int, int, int],
                 transformer: Transformer | None, name: str):
        self.name = name
        self.raw_shape = tuple(int(d) for d in raw_shape)
        self.transformer = transformer or Transformer()
        try:
            self.shape = self.transformer.output_shape(self.raw_shape)
        except DataError as exc:
            raise exc.with_file(name)
        self._lo, self._hi = 0, count

    def __len__(self) -> int:
        return self._hi - self._lo

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} [{self._lo}:{self._hi}] shape={self.shape}>"

    def shard(self, index: int, count: int) -> "Source":
        """Return a view over the ``index``-th of ``count`` contiguous, near-equal slices."""
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard index {index} is not in range for {count} shards")
        total = len(self)
        view = copy.copy(self)
        view._lo = self._lo + total * index // count
        view._hi = self._lo + total * (index + 1) // count
        return view

    def head(self, count: int) -> "Source":
        """Return a view over the first ``count`` samples of this view."""
        view = copy.copy(self)
        view._hi = min(self._hi, self._lo + max(count, 0))
        return view

    def skip(self, count: int) -> "Source":
        """Return a view without the first ``count`` samples of this view."""
        view = copy.copy(self)
        view._lo = min(self._hi, self._lo + max(count, 0))
        return view

    def iter_raw(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield untransformed batches over samples ``[start, stop)`` of this view (slice rules)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        start, stop, _ = slice(start, stop).indices(len(self))
        if start >= stop:
            return iter(())
        return self._read(self._lo + start, self._lo + stop, batch_size)

    def iter_batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Yield ``(float32 N×C×H×W images, int64 labels)``, decoded and transformed on a prefetch thread."""
        transformed = ((self.transformer(images), labels)
                       for images, labels in self.iter_raw(batch_size, start, stop))
        return prefetch(transformed)

    def _read(self, lo: int, hi: int, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def _check_shape(self, sample: np.ndarray, where: str) -> None:
        """Raise when one sample's shape differs from the first sample's."""
        if sample.shape != self.raw_shape:
            raise DataError(f"{where} is {format_shape(sample.shape)} but the first sample is "
                            f"{format_shape(self.raw_shape)}; all samples must have one size", file=self.name)
