"""Scale, Bias and Eltwise."""
import numpy as np

from ..caffe_pb2 import EltwiseParameter
from ..layer_shapes import canonical_axis
from .context import LayerContext
from .registry import converter


def _learned(ctx: LayerContext, blob: np.ndarray, axis: int, num_axes: int) -> np.ndarray:
    """A learned Scale/Bias blob shaped as bottom0.shape[axis:axis+num_axes], padded with 1s to broadcast."""
    in_shape = ctx.bottom_shape()
    start = 0 if num_axes == 0 else canonical_axis(axis, len(in_shape))
    end = len(in_shape) if num_axes == -1 else start + num_axes
    return blob.reshape(in_shape[start:end] + (1,) * (len(in_shape) - end))


def _second_bottom(ctx: LayerContext, axis: int) -> str:
    """Bottom 1 as a Scale/Bias operand, with trailing 1-dims so it broadcasts against bottom 0
    (a 0-axis operand is a scalar wherever ``axis`` points)."""
    operand_shape = ctx.bottom_shape(1)
    start = canonical_axis(axis, len(ctx.bottom_shape())) if operand_shape else 0
    trailing = len(ctx.bottom_shape()) - start - len(operand_shape)
    if trailing == 0:
        return ctx.bottom(1)
    return ctx.unsqueeze(ctx.bottom(1), list(range(len(operand_shape), len(operand_shape) + trailing)))


@converter("Scale")
def scale(ctx: LayerContext) -> None:
    """x * scale (+ bias): scale learned (blob 0) or bottom 1, laid out from ``axis``."""
    p = ctx.param.scale_param
    if len(ctx.layer.bottoms) > 1:
        factor = _second_bottom(ctx, p.axis)
        bias_blobs = ctx.weights(1) if p.bias_term else []
        num_axes = len(ctx.bottom_shape(1))
    else:
        blobs = ctx.weights(2 if p.bias_term else 1)
        factor = ctx.const(_learned(ctx, blobs[0], p.axis, p.num_axes), "scale")
        bias_blobs = blobs[1:]
        num_axes = p.num_axes
    if not bias_blobs:
        ctx.node("Mul", [ctx.bottom(), factor], ctx.top())
        return
    scaled = ctx.node("Mul", [ctx.bottom(), factor])
    bias = _learned(ctx, bias_blobs[0], p.axis, num_axes)
    ctx.node("Add", [scaled, ctx.const(bias, "bias")], ctx.top())


@converter("Bias")
def bias(ctx: LayerContext) -> None:
    """x + bias: bias learned (blob 0) or bottom 1, laid out from ``axis``."""
    p = ctx.param.bias_param
    if len(ctx.layer.bottoms) > 1:
        operand = _second_bottom(ctx, p.axis)
    else:
        (blob,) = ctx.weights(1)
        operand = ctx.const(_learned(ctx, blob, p.axis, p.num_axes), "bias")
    ctx.node("Add", [ctx.bottom(), operand], ctx.top())


@converter("Eltwise")
def eltwise(ctx: LayerContext) -> None:
    """SUM (with per-bottom coefficients), PROD or MAX over all bottoms."""
    p = ctx.param.eltwise_param
    inputs = ctx.bottoms()
    if p.operation == EltwiseParameter.MAX:
        ctx.node("Max", inputs, ctx.top())
    elif p.operation == EltwiseParameter.PROD:
        product = inputs[0]
        for x in inputs[1:-1]:
            product = ctx.node("Mul", [product, x])
        ctx.node("Mul", [product, inputs[-1]], ctx.top())
    else:
        coeffs = list(p.coeff) or [1.0] * len(inputs)
        if len(coeffs) != len(inputs):
            raise ctx.unsupported(f"SUM with {len(coeffs)} coefficients for {len(inputs)} bottoms")
        terms = [ctx.scaled(x, c, hint="coeff") for x, c in zip(inputs, coeffs)]
        ctx.node("Sum", terms, ctx.top())
