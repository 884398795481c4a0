"""Element-wise layers: activations, Power/Exp/Log, Threshold, Dropout."""
import math

import numpy as np
from onnx import TensorProto

from .context import LayerContext
from .registry import converter

_UNARY = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@converter(*_UNARY)
def unary(ctx: LayerContext) -> None:
    """Parameterless activations; BNLL's log(1 + exp(x)) is ONNX Softplus."""
    ctx.node(_UNARY[ctx.layer.type], [ctx.bottom()], ctx.top())


@converter("ReLU")
def relu(ctx: LayerContext) -> None:
    """ReLU, or LeakyRelu when negative_slope is set."""
    slope = ctx.param.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", [ctx.bottom()], ctx.top(), alpha=slope)
    else:
        ctx.node("Relu", [ctx.bottom()], ctx.top())


@converter("PReLU")
def prelu(ctx: LayerContext) -> None:
    """One slope per channel (or one shared slope): ``LayerContext.leaky_relu``."""
    (slope,) = ctx.weights(1)
    ctx.leaky_relu(slope.reshape(-1), ctx.top())


@converter("ELU")
def elu(ctx: LayerContext) -> None:
    ctx.node("Elu", [ctx.bottom()], ctx.top(), alpha=ctx.param.elu_param.alpha)


@converter("Dropout")
def dropout(ctx: LayerContext) -> None:
    """Caffe's dropout scales at training time, so at test time it is the identity."""
    ctx.identity(ctx.bottom(), ctx.top())


@converter("Power")
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


@converter("Exp")
def exp(ctx: LayerContext) -> None:
    """base ^ (shift + scale * x) computed as base^shift * exp(ln(base) * scale * x), as Caffe does."""
    p = ctx.param.exp_param
    log_base = _log_base(p.base)
    inner = ctx.node("Exp", [ctx.scaled(ctx.bottom(), log_base * p.scale)])
    outer = 1.0 if p.shift == 0 else float(np.exp(log_base * p.shift))
    ctx.scaled(inner, outer, ctx.top(), "outer_scale")


@converter("Log")
def log(ctx: LayerContext) -> None:
    """log_base(shift + scale * x) = ln(shift + scale * x) / ln(base)."""
    p = ctx.param.log_param
    inner = ctx.node("Log", [ctx.shifted(ctx.scaled(ctx.bottom(), p.scale), p.shift)])
    ctx.scaled(inner, 1.0 / _log_base(p.base), ctx.top(), "base_scale")


@converter("Threshold")
def threshold(ctx: LayerContext) -> None:
    """1 where x > threshold, else 0."""
    above = ctx.node("Greater", [ctx.bottom(), ctx.const(ctx.param.threshold_param.threshold, "threshold")])
    ctx.node("Cast", [above], ctx.top(), to=TensorProto.FLOAT)
