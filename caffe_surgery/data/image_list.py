"""Caffe ImageData layer input: a list file of ``path label`` lines."""

from collections.abc import Iterator

import cv2
import numpy as np

from caffe_surgery import limits
from caffe_surgery.data.base import Batch, Source
from caffe_surgery.data.datum import hwc_to_chw
from caffe_surgery.data.paths import resolve_path
from caffe_surgery.data.transform import Transformer
from caffe_surgery.errors import DataError


def read_image_list(list_file: str) -> list[tuple[str, int]]:
    """Parse a list file; the label follows the last space of each non-blank line."""
    try:
        lines = limits.read_file(list_file, "image list", error=DataError).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"image list is not UTF-8 text: {exc}", file=list_file) from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        try:
            entries.append((parts[0], int(parts[1])))
        except (IndexError, ValueError):
            raise DataError(f"line {number}: expected 'path label', got {line.strip()!r}",
                            file=list_file) from None
    if not entries:
        raise DataError("image list is empty", file=list_file)
    return entries


class ImageListSource(Source):
    """Images named in a list file, read with OpenCV as ImageData reads them.

    ``root_folder`` is prefixed to every path as a plain string, as Caffe does;
    ``new_height``/``new_width`` resize (bilinear), ``is_color=False`` reads grayscale.
    """

    def __init__(self, list_file: str, root_folder: str = "", new_height: int = 0,
                 new_width: int = 0, is_color: bool = True,
                 transformer: Transformer | None = None, base_dir: str | None = None):
        if (new_height > 0) != (new_width > 0):
            raise DataError("new_height and new_width must be set together", file=list_file)
        self._size = (new_width, new_height) if new_height > 0 else None
        self._flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
        self._entries = [(resolve_path(root_folder + path, base_dir), label)
                         for path, label in read_image_list(list_file)]
        first = self._load(self._entries[0][0])
        super().__init__(len(self._entries), first.shape, transformer, list_file)

    def _load(self, path: str) -> np.ndarray:
        image = cv2.imread(path, self._flag)
        if image is None:
            raise DataError("image is missing or cannot be decoded", file=path)
        if self._size is not None:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_LINEAR)
        return hwc_to_chw(image)

    def _read(self, lo: int, hi: int, batch_size: int) -> Iterator[Batch]:
        for start in range(lo, hi, batch_size):
            entries = self._entries[start:min(start + batch_size, hi)]
            samples = []
            for path, _ in entries:
                sample = self._load(path)
                self._check_shape(sample, f"image {path}")
                samples.append(sample)
            yield np.stack(samples), np.array([label for _, label in entries], dtype=np.int64)
