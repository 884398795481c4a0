"""The forward pass of a trainable Caffe layer in torch, with Caffe's semantics.

``make_op(layer, bottom_shapes, phase)`` reads the layer's parameters once and
returns ``op(bottoms, blobs) -> tops``; autograd gives the backward pass. The
ops live with their layer types (``caffe_surgery.layers``, the ``train`` facet).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import layers
from ..errors import UnsupportedLayerError
from ..graph import Layer

Tensor = torch.Tensor
Op = Callable[[list[Tensor], list[Tensor]], list[Tensor]]
Shape = tuple[int, ...]


def supported_types() -> list[str]:
    """Layer types ``make_op`` knows (data layers are fed by the caller)."""
    return [d.name for d in layers.declarations() if isinstance(d.train, layers.Train)]


def make_op(layer: Layer, bottoms: list[Shape], phase: int) -> Op:
    """The op computing ``layer``'s tops from its bottoms and blobs in ``phase``."""
    declaration = layers.lookup(layer.type)
    if declaration is None or not isinstance(declaration.train, layers.Train):
        reason = f"; {declaration.train.reason}" if declaration is not None else ""
        raise UnsupportedLayerError(f"layer type '{layer.type}' cannot be trained (supported: "
                                    f"{', '.join(supported_types())}){reason}", layer=layer.name)
    return declaration.train.op(layer, bottoms, phase)
