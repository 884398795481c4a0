"""Element-wise layers: activations, Power/Exp/Log, Threshold, Dropout, and the parameterless unary
types OpenCV's Caffe importer accepts (declared from one table, ``UNARY``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

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


def clip(ctx: LayerContext) -> None:
    """min(max(x, min), max) with clip_param's bounds."""
    p = ctx.param.clip_param
    ctx.node("Clip", [ctx.bottom(), ctx.const(p.min, "min"), ctx.const(p.max, "max")], ctx.top())


def swish(ctx: LayerContext) -> None:
    """x * sigmoid(beta * x)."""
    gate = ctx.node("Sigmoid", [ctx.scaled(ctx.bottom(), ctx.param.swish_param.beta, hint="beta")])
    ctx.node("Mul", [ctx.bottom(), gate], ctx.top())


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


def _clip_op(layer, bottoms, phase):
    import torch
    p = layer.param.clip_param
    return lambda x, blobs: [torch.clamp(x[0], p.min, p.max)]


def _swish_op(layer, bottoms, phase):
    import torch
    beta = layer.param.swish_param.beta
    return lambda x, blobs: [x[0] * torch.sigmoid(beta * x[0])]


def _elu_op(layer, bottoms, phase):
    import torch.nn.functional as F
    alpha = layer.param.elu_param.alpha
    return lambda x, blobs: [F.elu(x[0], alpha)]


def _power_op(layer, bottoms, phase):
    p = layer.param.power_param
    return lambda x, blobs: [(p.shift + p.scale * x[0]) ** p.power]


def _exp_op(layer, bottoms, phase):
    """base ^ (shift + scale * x) = exp(ln(base) * (shift + scale * x))."""
    import torch
    p = layer.param.exp_param
    log_base = _log_base(p.base)
    return lambda x, blobs: [torch.exp(log_base * (p.shift + p.scale * x[0]))]


def _log_op(layer, bottoms, phase):
    import torch
    p = layer.param.log_param
    log_base = _log_base(p.base)
    return lambda x, blobs: [torch.log(p.shift + p.scale * x[0]) / log_base]


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


def _torch_unary(fn: Callable) -> Callable:
    """The train op of an element-wise type computed by ``fn(torch_module, x)``."""
    def op(layer, bottoms, phase):
        import torch
        return lambda x, blobs: [fn(torch, x[0])]
    return op


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
    _elementwise("AbsVal", unary, Train(_torch_unary(lambda torch, x: torch.abs(x)))),
    _elementwise("BNLL", unary, Train(_torch_unary(lambda torch, x: torch.nn.functional.softplus(x)))),
    _elementwise("ELU", elu, Train(_elu_op)),
    _elementwise("Dropout", dropout, Train(_dropout_op)),
    _elementwise("Power", power, Train(_power_op)),
    _elementwise("Exp", exp, Train(_exp_op)),
    _elementwise("Log", log, Train(_log_op),
                 departures=(Departure("OpenCV's Log ignores base, scale and shift", _log_departs),)),
    _elementwise("Threshold", threshold, NotApplicable("a step: its gradient is zero almost everywhere"),
                 departures=(Departure("OpenCV has no Threshold layer"),)),
    _elementwise("Clip", clip, Train(_clip_op), departures=(Departure("OpenCV has no Clip layer"),)),
    _elementwise("Swish", swish, Train(_swish_op),
                 departures=(Departure("OpenCV's Swish ignores swish_param.beta",
                                       lambda layer: layer.param.swish_param.beta != 1),)),
)
PRELU = declare(LayerType("PReLU", shape=_prelu_shape, export=prelu, channels=PER_CHANNEL, rewrite=_rewrite_prelu,
                          train=Train(_prelu_op, _prelu_fillers)))
declare(replace(PRELU, name="ChannelsPReLU"))  # OpenCV's name for the same layer


# ------------------------------------------------------------------ the parameterless unary table


@dataclass(frozen=True)
class Unary:
    """A parameterless element-wise type: its ONNX graph ``export(ctx)`` and its torch function
    ``torch(torch_module, x)``."""

    name: str
    export: Callable
    torch: Callable


def onnx_op(op: str, **attrs) -> Callable:
    """The export of a type that is one ONNX op on its bottom."""
    def export(ctx: LayerContext) -> None:
        ctx.node(op, [ctx.bottom()], ctx.top(), **attrs)
    return export


def _relu6(ctx: LayerContext) -> None:
    ctx.node("Clip", [ctx.bottom(), ctx.const(0.0, "min"), ctx.const(6.0, "max")], ctx.top())


def _mish(ctx: LayerContext) -> None:
    """x * tanh(softplus(x))."""
    ctx.node("Mul", [ctx.bottom(), ctx.node("Tanh", [ctx.node("Softplus", [ctx.bottom()])])], ctx.top())


def _hard_swish(ctx: LayerContext) -> None:
    """x * clip(x / 6 + 1/2, 0, 1)."""
    ctx.node("Mul", [ctx.bottom(), ctx.node("HardSigmoid", [ctx.bottom()], alpha=1 / 6, beta=0.5)], ctx.top())


def _gelu(ctx: LayerContext) -> None:
    """x / 2 * (1 + erf(x / sqrt 2))."""
    erf = ctx.node("Erf", [ctx.scaled(ctx.bottom(), 1 / math.sqrt(2), hint="inv_sqrt2")])
    ctx.node("Mul", [ctx.scaled(ctx.bottom(), 0.5, hint="half"), ctx.shifted(erf, 1.0, hint="one")], ctx.top())


def _gelu_tanh(ctx: LayerContext) -> None:
    """x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""
    x = ctx.bottom()
    cube = ctx.node("Mul", [x, ctx.node("Mul", [x, x])])
    inner = ctx.node("Add", [x, ctx.scaled(cube, 0.044715, hint="cubic")])
    tanh = ctx.node("Tanh", [ctx.scaled(inner, math.sqrt(2 / math.pi), hint="sqrt_2_over_pi")])
    ctx.node("Mul", [ctx.scaled(x, 0.5, hint="half"), ctx.shifted(tanh, 1.0, hint="one")], ctx.top())


def _not(ctx: LayerContext) -> None:
    """OpenCV's Not on floats: floor(1 - x) (1 for 0, 0 for 1)."""
    ctx.node("Floor", [ctx.node("Sub", [ctx.const(1.0, "one"), ctx.bottom()])], ctx.top())


def _thresholded(torch, x):
    return torch.where(x > 1.0, x, torch.zeros_like(x))


def _shrink(torch, x):
    return torch.where(x < -0.5, x, torch.where(x > 0.5, x, torch.zeros_like(x)))


_SAME_NAME = ("Ceil", "Floor", "Round", "Sqrt", "Sign", "Reciprocal", "Erf", "Softplus", "Softsign", "Acos", "Acosh",
              "Asin", "Asinh", "Atan", "Atanh", "Cos", "Cosh", "Sin", "Sinh", "Tan")
"""Types that are the ONNX op and the torch function of the same name."""

def _same_name(torch, x, fn: str):
    """torch's function ``fn`` (softplus and softsign live in torch.nn.functional)."""
    return (getattr(torch, fn, None) or getattr(torch.nn.functional, fn))(x)


UNARY = tuple(Unary(name, onnx_op(name), lambda torch, x, fn=name.lower(): _same_name(torch, x, fn))
              for name in _SAME_NAME) + (
    Unary("ReLU6", _relu6, lambda torch, x: torch.clamp(x, 0.0, 6.0)),
    Unary("Mish", _mish, lambda torch, x: torch.nn.functional.mish(x)),
    Unary("HardSwish", _hard_swish, lambda torch, x: torch.nn.functional.hardswish(x)),
    Unary("HardSigmoid", onnx_op("HardSigmoid", alpha=0.2, beta=0.5), lambda torch, x: torch.clamp(0.2 * x + 0.5, 0, 1)),
    Unary("Selu", onnx_op("Selu"), lambda torch, x: torch.nn.functional.selu(x)),
    Unary("Celu", onnx_op("Celu", alpha=1.0), lambda torch, x: torch.nn.functional.celu(x)),
    Unary("Gelu", _gelu, lambda torch, x: torch.nn.functional.gelu(x)),
    Unary("GeluApproximation", _gelu_tanh, lambda torch, x: torch.nn.functional.gelu(x, approximate="tanh")),
    Unary("ThresholdedRelu", onnx_op("ThresholdedRelu", alpha=1.0), _thresholded),
    Unary("Shrink", onnx_op("Shrink", bias=0.0, lambd=0.5), _shrink),
    Unary("Identity", onnx_op("Identity"), lambda torch, x: x),
    Unary("Not", _not, lambda torch, x: torch.floor(1 - x)),
)
"""The parameterless unary types, with OpenCV's default parameters (Caffe's schema has no param message
for them): HardSigmoid alpha 0.2, beta 0.5; Selu's and Celu's standard constants; ThresholdedRelu alpha 1;
Shrink bias 0, lambd 0.5."""


declare(*(_elementwise(u.name, u.export, Train(_torch_unary(u.torch))) for u in UNARY))
