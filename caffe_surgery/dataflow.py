"""Connecting a net to data: its own data layer or a command-line spec, batches with progress."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import layers
from .data import Source, layer_batch_size, parse_data_spec, source_from_layer
from .errors import CaffeSurgeryError, DataError, ShapeError
from .graph import Layer, Net
from .progress import progress

DEFAULT_BATCH = 64


def data_layer(net: Net) -> Layer | None:
    """The net's first Data or ImageData layer, if any."""
    return next((layer for layer in net.layers if layers.reads_dataset(layer.type)), None)


def input_layer(net: Net) -> Layer:
    """The layer whose first top is the images (a data layer, or the first layer without bottoms)."""
    layer = data_layer(net) or next((l for l in net.layers if not l.bottoms and l.tops), None)
    if layer is None:
        raise CaffeSurgeryError("the net has no input or data layer", file=net.source)
    return layer


def base_dir(net: Net) -> str | None:
    return os.path.dirname(os.path.abspath(net.source)) if net.source else None


def item_shapes(prototxt: str | os.PathLike, fallback: dict[str, tuple[int, ...]] | None = None):
    """A shape resolver for data layers: the item shape its source holds; where the source cannot be
    read, the item shape ``fallback`` gives for the layer's first top (if it does)."""
    directory = os.path.dirname(os.path.abspath(prototxt))

    def resolve(layer: Layer) -> list[tuple[int, ...]]:
        if not layers.reads_dataset(layer.type):
            return []
        try:
            return [tuple(source_from_layer(layer.param, directory).shape), ()]
        except DataError as exc:
            if fallback and layer.tops[0].name in fallback:
                return [tuple(fallback[layer.tops[0].name]), ()]
            raise ShapeError(f"cannot read the data to tell the shape of '{layer.tops[0].name}' "
                             f"({exc.one_line()}); pass --input {layer.tops[0].name}=N,C,H,W") from None

    return resolve


def open_source(net: Net, spec: str | None, transform=None, directory: str | None = None) -> Source:
    """The data to run: ``spec`` if given (with ``transform``, else the net's transform_param), else the
    net's data layer; relative paths are tried against ``directory`` (default: the prototxt's folder)."""
    layer = data_layer(net)
    directory = directory or base_dir(net)
    if spec:
        if transform is None and layer is not None:
            transform = layer.param.transform_param
        return parse_data_spec(spec, transform, directory)
    if layer is None:
        raise DataError("the net has no Data or ImageData layer: pass --data "
                        "(lmdb:PATH, list:FILE[:ROOT], idx:IMAGES[:LABELS] or npy:PATH)", file=net.source)
    return source_from_layer(layer.param, directory)


@dataclass(frozen=True)
class DataRequest:
    """Which data a pass reads, small enough to send to other processes: the spec (None: the net's own
    data layer), the --scale/--mean transform, the --skip and --limit, the window (shard I of N) and the
    batch size.
    Opening it reads nothing yet: every reader of a shard reads only its own records."""

    spec: str | None
    transform: object = None
    limit: int | None = None
    window: tuple[int, int] = (0, 1)
    batch_size: int = DEFAULT_BATCH
    directory: str | None = None
    skip: int = 0

    def open(self, net: Net) -> Source:
        """The source: past the first ``skip`` samples, the next ``limit``, then the window's shard of them."""
        source = open_source(net, self.spec, self.transform, self.directory).skip(self.skip)
        if self.limit is not None:
            source = source.head(self.limit)
        return source.shard(*self.window)


def batch_size_for(net: Net, requested: int | None) -> int:
    """The batch size to run: the user's, else the data layer's, else 64."""
    if requested:
        return requested
    layer = data_layer(net)
    return max(layer_batch_size(layer.param), 1) if layer is not None else DEFAULT_BATCH


def batches(source: Source, batch_size: int, desc: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Transformed batches of the whole source with a progress bar (images/s) on a terminal."""
    with progress(len(source), desc) as bar:
        for images, labels in source.iter_batches(batch_size):
            yield images, labels
            bar.update(len(images))
