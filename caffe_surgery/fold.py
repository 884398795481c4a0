"""Folding BatchNorm and Scale layers into the Convolution, Deconvolution or InnerProduct before them.

A chain is a producer whose top is read only by a BatchNorm (stored, global
statistics: mean and variance divided by blob 2's factor, 0 -> 0) or a Scale
(learned, per channel or scalar, optional bias), then by further Scales, each
the only reader of the previous top; in-place or not. Per output channel the
chain computes a * (W x + b) + c, so it folds exactly into W' = a W and
b' = a b + c (a producer without a bias gets one: bias_term true) and its
layers go away.

Naming rule: the producer takes over the name of the chain's last top. Every
later layer and every net output keeps reading the name it read; only the
producer's old top name, which nothing but the chain read, disappears (for an
in-place chain the names are the same anyway).

Left alone: producers with several bottoms/tops, in-place producers,
weights shared by ParamSpec name, a channel axis other than 1, BatchNorm with
use_global_stats false, Scale with a second bottom, layers without weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import caffe_pb2
from .graph import Layer, Net, net_from_layers
from . import layers
from .layers import canonical_axis
from .shapes import NetShapes, infer_shapes

Affine = tuple[np.ndarray, np.ndarray]


def _batch_norm(layer: Layer, channels: int) -> Affine | None:
    """(a, c) of a BatchNorm with stored statistics: a = 1/sqrt(var + eps), c = -mean * a."""
    p = layer.param.batch_norm_param
    if (p.HasField("use_global_stats") and not p.use_global_stats) or len(layer.blobs) != 3:
        return None
    mean, var, factor = (np.asarray(b, dtype=np.float64).ravel() for b in layer.blobs)
    if mean.size != channels or var.size != channels or factor.size != 1:
        return None
    scale = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    inv_std = 1.0 / np.sqrt(var * scale + p.eps)
    return inv_std, -mean * scale * inv_std


def _scale(layer: Layer, shapes: NetShapes, channels: int) -> Affine | None:
    """(a, c) of a one-bottom Scale whose blobs are per channel (axis 1) or a single value."""
    p = layer.param.scale_param
    if len(layer.blobs) != (2 if p.bias_term else 1):
        return None
    axis = canonical_axis(p.axis, len(shapes.blob(layer.bottoms[0])))
    values = [np.asarray(b, dtype=np.float64).ravel() for b in layer.blobs]
    if any(v.size != 1 and (axis != 1 or v.size != channels) for v in values):
        return None
    factor = np.broadcast_to(values[0], (channels,))
    bias = np.broadcast_to(values[1], (channels,)) if p.bias_term else np.zeros(channels)
    return factor, bias


def _affine(layer: Layer, shapes: NetShapes, channels: int) -> Affine | None:
    """(a, c) such that the layer computes a * x + c per channel; None when it cannot be folded."""
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        return None
    if layer.type == "BatchNorm":
        return _batch_norm(layer, channels)
    return _scale(layer, shapes, channels) if layer.type == "Scale" else None


def _foldable_producer(layer: Layer, shapes: NetShapes) -> bool:
    """A one-bottom, one-top, not in-place producer with its own weights and its output channels on axis 1."""
    if not layers.produces_channels(layer.type) or len(layer.bottoms) != 1 or len(layer.tops) != 1 or not layer.blobs:
        return False
    if layer.in_place or any(spec.name for spec in layer.param.param):
        return False
    if layer.type == "InnerProduct":
        return len(shapes.blob(layer.tops[0])) == 2
    return canonical_axis(layer.param.convolution_param.axis, len(shapes.blob(layer.bottoms[0]))) == 1


def _chain(net: Net, shapes: NetShapes, producer: Layer, heads: tuple[str, ...]) -> tuple[list[Layer], Affine]:
    """The layers to fold after ``producer`` and their combined per-channel (a, c)."""
    channels = int(shapes.blob(producer.tops[0])[1])
    a, c = np.ones(channels), np.zeros(channels)
    chain, blob, allowed = [], producer.tops[0], heads
    while True:
        readers = net.consumers(blob)
        if len(readers) != 1 or readers[0].type not in allowed:
            return chain, (a, c)
        affine = _affine(readers[0], shapes, channels)
        if affine is None:
            return chain, (a, c)
        a, c = affine[0] * a, affine[0] * c + affine[1]
        chain.append(readers[0])
        blob, allowed = readers[0].tops[0], ("Scale",)


def _scaled_outputs(layer: Layer, weight: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The weight with output channel o multiplied by a[o]."""
    if layer.type == "InnerProduct":
        return weight * (a if layer.param.inner_product_param.transpose else a[:, None])
    ones = (1,) * (weight.ndim - 2)
    if layer.type != "Deconvolution":  # Convolution and its depthwise aliases: outputs lead the weight
        return weight * a.reshape((-1, 1) + ones)
    group = layer.param.convolution_param.group
    grouped = weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
    return (grouped * a.reshape((group, 1, -1) + ones)).reshape(weight.shape)


def _folded(producer: Layer, chain: list[Layer], a: np.ndarray, c: np.ndarray):
    """The producer's new LayerParameter and blobs."""
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(producer.param)
    params = param.inner_product_param if producer.type == "InnerProduct" else param.convolution_param
    bias = np.asarray(producer.blobs[1], dtype=np.float64) if params.bias_term else np.zeros(a.size)
    params.bias_term = True
    param.top[0] = chain[-1].tops[0].name
    weight = _scaled_outputs(producer, np.asarray(producer.blobs[0], dtype=np.float64), a)
    return param, [weight.astype(np.float32), (a * bias + c).astype(np.float32)]


def _rebuild(net: Net, updated: dict, removed: set[str]) -> Net:
    """A new net without the removed layers, with the updated (param, blobs) and copies of the rest."""
    net_param = caffe_pb2.NetParameter()
    net_param.CopyFrom(net.header)
    blobs = {}
    for layer in net.layers:
        if layer.name in removed:
            continue
        param, blobs[layer.name] = updated.get(layer.name, (layer.param, [b.copy() for b in layer.blobs]))
        net_param.layer.add().CopyFrom(param)
    folded = net_from_layers(net_param, source=net.source)
    for layer in folded.layers:
        layer.blobs = blobs[layer.name]
    return folded


def fold(net: Net, shapes: NetShapes, heads: tuple[str, ...] = ("BatchNorm", "Scale")) -> tuple[Net, list[str]]:
    """A copy of the net with every chain starting with a layer of type ``heads`` folded; the removed layers."""
    updated, removed = {}, []
    for layer in net.layers:
        if not _foldable_producer(layer, shapes):
            continue
        chain, (a, c) = _chain(net, shapes, layer, heads)
        if chain:
            updated[layer.name] = _folded(layer, chain, a, c)
            removed.extend(link.name for link in chain)
    return _rebuild(net, updated, set(removed)), removed


def fold_batchnorm(net: Net, shapes: NetShapes) -> tuple[Net, list[str]]:
    """Fold BatchNorm (and the Scales right after it) into the producers; return the new net and removed layers."""
    return fold(net, shapes, ("BatchNorm",))


def fold_scale(net: Net, shapes: NetShapes) -> tuple[Net, list[str]]:
    """Fold Scales directly after a producer (e.g. importance weights); return the new net and removed layers."""
    return fold(net, shapes, ("Scale",))


def fold_command(prototxt, weights, output_prefix, input_shapes=None, precision: str = "fp32") -> int:
    """Fold BatchNorm and Scale chains; write PREFIX.prototxt/.caffemodel (``precision``: fp32 or fp16)
    and print what went."""
    from .model import load_model
    from .precision import fp16_note
    from .report import format_written
    from .reshape import reshape_net
    from .save import save_caffemodel, save_prototxt

    model = load_model(prototxt, weights, input_shapes=input_shapes or None)
    folded, removed = fold(model.net, model.shapes)
    inputs = {top.name: tuple(model.shapes.blob(top)) for layer in model.net.layers if not layer.bottoms
              for top in layer.tops}
    params_before, params_after = model.shapes.totals()[0], infer_shapes(folded, inputs).totals()[0]
    outputs = [Path(f"{output_prefix}.prototxt"), Path(f"{output_prefix}.caffemodel")]
    save_prototxt(reshape_net(folded, input_shapes or {}), outputs[0])
    save_caffemodel(folded, outputs[1], precision)
    print(f"folded {len(removed)} layers: {', '.join(removed) or '-'}")
    print(f"layers {len(model.net.layers)} -> {len(folded.layers)}, parameters {params_before:,} -> {params_after:,}")
    if precision == "fp16":
        print(fp16_note(model.net, model.shapes, *outputs))
    print(format_written(outputs, precision))
    return 0
