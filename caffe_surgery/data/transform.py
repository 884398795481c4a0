"""Caffe's DataTransformer at TEST time: centre crop, mean subtraction, scale."""

import numpy as np

from caffe_surgery import caffe_pb2
from caffe_surgery.data.paths import resolve_path
from caffe_surgery.errors import DataError
from caffe_surgery.io import read_mean


class Transformer:
    """The TEST-phase transformation of one data layer (``mirror`` has no effect at TEST)."""

    def __init__(self, param: caffe_pb2.TransformationParameter | None = None,
                 base_dir: str | None = None):
        param = param or caffe_pb2.TransformationParameter()
        if param.force_color and param.force_gray:
            raise DataError("force_color and force_gray cannot both be set")
        if param.mean_file and len(param.mean_value):
            raise DataError("cannot specify mean_file and mean_value at the same time")
        self.scale = np.float32(param.scale)
        self.crop_size = param.crop_size
        self.force_color = param.force_color
        self.force_gray = param.force_gray
        self.mean_file = resolve_path(param.mean_file, base_dir) if param.mean_file else None
        if self.mean_file:
            self.mean = read_mean(self.mean_file)
        elif len(param.mean_value):
            self.mean = np.asarray(param.mean_value, dtype=np.float32)
        else:
            self.mean = None

    def output_shape(self, raw_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Check that samples of ``raw_shape`` (C, H, W) can be transformed; return the result's shape."""
        channels, height, width = raw_shape
        if self.mean_file and self.mean.shape != tuple(raw_shape):
            raise DataError(f"mean image is {format_shape(self.mean.shape)}, the data is {format_shape(raw_shape)}",
                            file=self.mean_file)
        if self.mean is not None and self.mean.ndim == 1 and self.mean.size not in (1, channels):
            raise DataError(f"{self.mean.size} mean_value entries for {channels} channels; "
                            "give 1 or one per channel")
        if not self.crop_size:
            return tuple(raw_shape)
        if self.crop_size > height or self.crop_size > width:
            raise DataError(f"crop_size {self.crop_size} is larger than the {height}x{width} data")
        return (channels, self.crop_size, self.crop_size)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Transform an N×C×H×W batch to float32: centre crop, then ``(x - mean) * scale``."""
        mean = self.mean
        if self.crop_size:
            h_off = (batch.shape[2] - self.crop_size) // 2
            w_off = (batch.shape[3] - self.crop_size) // 2
            window = (slice(h_off, h_off + self.crop_size), slice(w_off, w_off + self.crop_size))
            batch = batch[(slice(None), slice(None)) + window]
            if self.mean_file:
                mean = mean[(slice(None),) + window]
        out = batch.astype(np.float32)
        if mean is not None:
            out -= mean if mean.ndim == 3 else mean.reshape(-1, 1, 1)
        if self.scale != 1:
            out *= self.scale
        return out


def format_shape(shape) -> str:
    """Write a shape as ``CxHxW``."""
    return "x".join(str(d) for d in shape)
