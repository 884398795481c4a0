"""The converter registry: one function per Caffe layer type, registered by decorator.

A converter receives a ``LayerContext`` (the layer, its tensor names and shapes,
and the node/constant builders of the graph being written) and emits the ONNX
nodes that compute the layer's tops. The registry's keys are the list of layer
types the exporter supports.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import LayerContext

Converter = Callable[["LayerContext"], None]

CONVERTERS: dict[str, Converter] = {}

DATA_TYPES = frozenset({"Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData"})
"""Layer types whose tops are fed from outside: they become graph inputs."""


def converter(*layer_types: str) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of ``layer_types``."""
    def register(function: Converter) -> Converter:
        for layer_type in layer_types:
            if layer_type in CONVERTERS:
                raise ValueError(f"layer type '{layer_type}' already has a converter")
            CONVERTERS[layer_type] = function
        return function
    return register


def supported_types() -> list[str]:
    """The layer types the exporter can convert, sorted."""
    return sorted(CONVERTERS)


def is_dropped(layer_type: str) -> bool:
    """Training-only layers that a deploy graph leaves out (losses, Accuracy, Silence)."""
    return layer_type.endswith("Loss") or layer_type in ("Accuracy", "Silence")
