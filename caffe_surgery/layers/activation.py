"""Element-wise layers: activations, Power/Exp/Log, Threshold, Dropout."""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..export.context import LayerContext
from ..graph import TEST, Layer
from .channels import ELEMENTWISE, PER_CHANNEL, drop_channel_entries
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail, same_shape

_UNARY = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


def unary(ctx: LayerContext) -> None:
    """Parameterless activations; BNLL's log(1 + exp(x)) is ONNX Softplus."""
    ctx.node(_UNARY[ctx.layer.type], [ctx.bottom()], ctx.top())


def relu(ctx: LayerContext) -> None:
    """ReLU, or LeakyRelu when negative_slope is set."""
    slope = ctx.param.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", [ctx.bottom()], ctx.top(), alpha=slope)
    else:
        ctx.node("Relu", [ctx.bottom()], ctx.top())


def prelu(ctx: LayerContext) -> None:
    """One slope per channel (or one shared slope): ``LayerContext.leaky_relu`` (onnxruntime's PRelu is a
    slow broadcast that breaks its blocked convolution layout)."""
    (slope,) = ctx.weights(1)
    ctx.leaky_relu(slope.reshape(-1), ctx.top())


def elu(ctx: LayerContext) -> None:
    ctx.node("Elu", [ctx.bottom()], ctx.top(), alpha=ctx.param.elu_param.alpha)


def dropout(ctx: LayerContext) -> None:
    """Caffe's dropout scales at training time, so at test time it is the identity."""
    ctx.identity(ctx.bottom(), ctx.top())


def power(ctx: LayerContext) -> None:
    """(shift + scale * x) ^ power."""
    p = ctx.param.power_param
    if p.power == 1:
        ctx.shifted(ctx.scaled(ctx.bottom(), p.scale), p.shift, ctx.top())
    else:
        base = ctx.shifted(ctx.scaled(ctx.bottom(), p.scale), p.shift)
        ctx.node("Pow", [base, ctx.const(p.power, "power")], ctx.top())


def _log_base(base: float) -> float:
    """ln(base), with Caffe's base -1 meaning e."""
    return 1.0 if base == -1 else math.log(base)


def exp(ctx: LayerContext) -> None:
    """base ^ (shift + scale * x) computed as base^shift * exp(ln(base) * scale * x), as Caffe does."""
    p = ctx.param.exp_param
    log_base = _log_base(p.base)
    inner = ctx.node("Exp", [ctx.scaled(ctx.bottom(), log_base * p.scale)])
    outer = 1.0 if p.shift == 0 else float(np.exp(log_base * p.shift))
    ctx.scaled(inner, outer, ctx.top(), "outer_scale")


def log(ctx: LayerContext) -> None:
    """log_base(shift + scale * x) = ln(shift + scale * x) / ln(base)."""
    p = ctx.param.log_param
    inner = ctx.node("Log", [ctx.shifted(ctx.scaled(ctx.bottom(), p.scale), p.shift)])
    ctx.scaled(inner, 1.0 / _log_base(p.base), ctx.top(), "base_scale")


def threshold(ctx: LayerContext) -> None:
    """1 where x > threshold, else 0."""
    above = ctx.node("Greater", [ctx.bottom(), ctx.const(ctx.param.threshold_param.threshold, "threshold")])
    ctx.node("Cast", [above], ctx.top(), to=TensorProto.FLOAT)


def _prelu_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Slopes (C,), or a 0-axis scalar blob () with channel_shared, as Caffe allocates it."""
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"PReLU needs at least 2 axes, got {shape}")
    return Rule([shape], [() if layer.param.prelu_param.channel_shared else (shape[1],)])


def _rewrite_prelu(s, layer: Layer, param, blobs):
    return blobs if param.prelu_param.channel_shared else drop_channel_entries(s, layer, blobs)


# ------------------------------------------------------------------ training


def _relu_op(layer, bottoms, phase):
    import torch.nn.functional as F
    slope = layer.param.relu_param.negative_slope
    return lambda x, blobs: [F.leaky_relu(x[0], slope) if slope else F.relu(x[0])]


def _sigmoid_op(layer, bottoms, phase):
    import torch
    return lambda x, blobs: [torch.sigmoid(x[0])]


def _tanh_op(layer, bottoms, phase):
    import torch
    return lambda x, blobs: [torch.tanh(x[0])]


def _prelu_op(layer, bottoms, phase):
    import torch.nn.functional as F
    return lambda x, blobs: [F.prelu(x[0], blobs[0].reshape(-1))]


def _dropout_op(layer, bottoms, phase):
    """TRAIN: keep with probability 1-p and scale by 1/(1-p); TEST: identity."""
    import torch
    ratio = layer.param.dropout_param.dropout_ratio
    if phase == TEST:
        return lambda x, blobs: [x[0]]
    scale = 1.0 / (1.0 - ratio)

    def run(x, blobs):
        keep = torch.rand_like(x[0]) >= ratio
        return [x[0] * keep * scale]
    return run


def _prelu_fillers(layer: Layer) -> list:
    from ..train.fillers import constant_filler
    p = layer.param.prelu_param
    return [p.filler if p.HasField("filler") else constant_filler(0.25)]


# ------------------------------------------------------------------ declarations

_NOTHING_COUNTS_CHANNELS = NotApplicable("element-wise: nothing in it counts channels")
_NO_TORCH = NotApplicable("no torch op is written for it yet")


def _log_departs(layer: Layer) -> bool:
    p = layer.param.log_param
    return p.base != -1 or p.scale != 1 or p.shift != 0


def _elementwise(name: str, export, train=_NO_TORCH, departures=()) -> LayerType:
    return LayerType(name, shape=same_shape, export=export, channels=ELEMENTWISE, rewrite=_NOTHING_COUNTS_CHANNELS,
                     train=train, departures=departures)


declare(
    _elementwise("ReLU", relu, Train(_relu_op)),
    _elementwise("Sigmoid", unary, Train(_sigmoid_op)),
    _elementwise("TanH", unary, Train(_tanh_op)),
    _elementwise("AbsVal", unary),
    _elementwise("BNLL", unary),
    _elementwise("ELU", elu),
    _elementwise("Dropout", dropout, Train(_dropout_op)),
    _elementwise("Power", power),
    _elementwise("Exp", exp),
    _elementwise("Log", log, departures=(Departure("OpenCV's Log ignores base, scale and shift", _log_departs),)),
    _elementwise("Threshold", threshold, departures=(Departure("OpenCV has no Threshold layer"),)),
    _elementwise("Clip", NotApplicable("no ONNX converter is written for Clip")),
    _elementwise("Swish", NotApplicable("no ONNX converter is written for Swish")),
    LayerType("PReLU", shape=_prelu_shape, export=prelu, channels=PER_CHANNEL, rewrite=_rewrite_prelu,
              train=Train(_prelu_op, _prelu_fillers)),
)
