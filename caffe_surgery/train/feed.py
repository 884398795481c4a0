"""Feeding a net during training: endless batches from its data layer's source, in order, as Caffe's
data layers read them (no shuffling; a batch crossing the end continues at the start).

A TRAIN feed applies the data layer's random crop and mirror (Caffe's TRAIN-phase
DataTransformer); a TEST feed crops at the centre.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .. import layers
from ..data import Source, layer_batch_size, prefetch, source_from_layer
from ..errors import DataError
from ..graph import TRAIN, Layer, Net



def feed_layer(net: Net) -> Layer:
    """The net's one Data or ImageData layer, else its first Input layer."""
    data = [layer for layer in net.layers if layers.reads_dataset(layer.type)]
    if len(data) > 1:
        raise DataError(f"the net has {len(data)} data layers ({', '.join(l.name for l in data)}); "
                        "training feeds exactly one", file=net.source)
    layer = data[0] if data else next((l for l in net.layers if l.type == "Input"), None)
    if layer is None:
        raise DataError("the net has no Data, ImageData or Input layer to feed", file=net.source)
    return layer


def _augment(images: np.ndarray, source: Source, mirror: bool, rng: np.random.Generator) -> np.ndarray:
    """Caffe's TRAIN transform: (x - mean) * scale over a random crop window, mirrored with probability 1/2."""
    transformer = source.transformer
    out = images.astype(np.float32)
    if transformer.mean is not None:
        out -= transformer.mean if transformer.mean.ndim == 3 else transformer.mean.reshape(-1, 1, 1)
    if transformer.crop_size:
        crop = transformer.crop_size
        rows = rng.integers(0, out.shape[2] - crop + 1, len(out))
        cols = rng.integers(0, out.shape[3] - crop + 1, len(out))
        out = np.stack([x[:, r:r + crop, c:c + crop] for x, r, c in zip(out, rows, cols)])
    if mirror:
        flip = rng.integers(0, 2, len(out)).astype(bool)
        out[flip] = out[flip, :, :, ::-1]
    return out * transformer.scale if transformer.scale != 1 else out


class Feed:
    """Endless batches of ``batch_size`` for the net's data (or Input) layer."""

    def __init__(self, net: Net, phase: int, source: Source | None = None, base_dir: str | None = None,
                 rng: np.random.Generator | None = None):
        """``source`` replaces the one the layer names (a Data or ImageData layer's own is opened from
        ``base_dir``); an Input layer needs ``source`` and takes its batch size from its shape."""
        self.layer = feed_layer(net)
        if self.layer.type == "Input":
            if source is None:
                raise DataError("the net's data comes from an Input layer: pass a data source", layer=self.layer.name)
            if not len(self.layer.param.input_param.shape):
                raise DataError("the Input layer declares no shape", layer=self.layer.name)
            declared = self.layer.param.input_param.shape[0].dim
            self.batch_size = int(declared[0])
            if tuple(declared[1:]) != tuple(source.shape):
                raise DataError(f"samples are {tuple(source.shape)} but the Input layer takes {tuple(declared[1:])}",
                                file=source.name, layer=self.layer.name)
        else:
            self.batch_size = layer_batch_size(self.layer.param)
            source = source if source is not None else source_from_layer(self.layer.param, base_dir)
        if not len(source):
            raise DataError("the data source holds no samples", file=source.name, layer=self.layer.name)
        self.source = source
        transform = self.layer.param.transform_param
        self._augmented = phase == TRAIN and bool(transform.mirror or transform.crop_size)
        self._mirror = transform.mirror
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._batches = self._endless()

    def item_shapes(self, layer: Layer) -> list[tuple[int, ...]]:
        """A ``data_shapes`` resolver for shape inference: the fed layer's samples have the source's shape."""
        return [tuple(self.source.shape)] if layer is self.layer else []

    def _transform(self, images: np.ndarray) -> np.ndarray:
        if self._augmented:
            return _augment(images, self.source, self._mirror, self._rng)
        return self.source.transformer(images)

    def _endless(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pending, count, size = [], 0, self.batch_size
        while True:
            raw = self.source.iter_raw(size)
            for images, labels in prefetch((self._transform(x), y) for x, y in raw):
                pending.append((images, labels))
                count += len(images)
                while count >= size:
                    images = np.concatenate([p[0] for p in pending])
                    labels = np.concatenate([p[1] for p in pending])
                    yield images[:size], labels[:size]
                    pending, count = [(images[size:], labels[size:])], count - size

    def next(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The next batch as the layer's tops: images, then labels as float (Caffe's label blob)."""
        images, labels = next(self._batches)
        values = [torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.float32))]
        return {top.name: value.to(device) for top, value in zip(self.layer.tops, values)}

    def close(self) -> None:
        """Stop the reading thread."""
        self._batches.close()
