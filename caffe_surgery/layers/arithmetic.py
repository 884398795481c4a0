"""Scale, Bias and Eltwise; OpenCV's Reduce (one axis or all, read from a fork ``reduce_param``) and Shift
(a learned bias per sample and channel: OpenCV's ScaleLayer lays it from axis 0)."""
from __future__ import annotations

from math import prod

import numpy as np

from ..caffe_pb2 import EltwiseParameter
from ..export.context import LayerContext
from ..graph import Layer
from .channels import PER_CHANNEL, custom, drop_channel_entries, keep_or_pin, pin_all
from .fork_params import ForkParam, fork_param
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, canonical_axis, fail


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


def bias(ctx: LayerContext) -> None:
    """x + bias: bias learned (blob 0) or bottom 1, laid out from ``axis``."""
    p = ctx.param.bias_param
    if len(ctx.layer.bottoms) > 1:
        operand = _second_bottom(ctx, p.axis)
    else:
        (blob,) = ctx.weights(1)
        operand = ctx.const(_learned(ctx, blob, p.axis, p.num_axes), "bias")
    ctx.node("Add", [ctx.bottom(), operand], ctx.top())


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


# ------------------------------------------------------------------ shapes


def _broadcast_shape(layer: Layer, bottoms: list[Shape], axis: int, num_axes: int) -> Shape:
    """Shape of the scale/bias operand: bottom[1], or bottom[0][axis:axis+num_axes] (-1 = to the end)."""
    shape = bottoms[0]
    if len(bottoms) == 2:
        operand = bottoms[1]
        start = 0 if not operand else canonical_axis(axis, len(shape))
        if shape[start:start + len(operand)] != operand:
            fail(f"bottom '{layer.bottoms[1].name}' {operand} does not match "
                 f"bottom '{layer.bottoms[0].name}' {shape} from axis {start}")
        return operand
    if num_axes < -1:
        fail(f"num_axes must be -1 or non-negative, got {num_axes}")
    start = canonical_axis(axis, len(shape)) if shape else 0
    end = len(shape) if num_axes == -1 else start + num_axes
    if end > len(shape):
        fail(f"axis {axis} + num_axes {num_axes} exceed the bottom's {len(shape)} axes")
    return shape[start:end]


def _scale_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """One bottom: learned scale (+ bias); two bottoms: bottom[1] is the scale, only the bias is learned."""
    p = layer.param.scale_param
    operand = _broadcast_shape(layer, bottoms, p.axis, p.num_axes)
    params = ([] if len(bottoms) == 2 else [operand]) + ([operand] if p.bias_term else [])
    return Rule([bottoms[0]], params)


def _bias_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.bias_param
    operand = _broadcast_shape(layer, bottoms, p.axis, p.num_axes)
    return Rule([bottoms[0]], [] if len(bottoms) == 2 else [operand])


def _eltwise_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.eltwise_param
    for blob, shape in zip(layer.bottoms[1:], bottoms[1:]):
        if shape != bottoms[0]:
            fail(f"Eltwise bottoms differ: '{layer.bottoms[0].name}' is {bottoms[0]}, '{blob.name}' is {shape}")
    if len(p.coeff):
        if p.operation != EltwiseParameter.SUM:
            fail("only SUM takes coefficients")
        if len(p.coeff) != len(bottoms):
            fail(f"{len(p.coeff)} coefficients for {len(bottoms)} bottoms")
    return Rule([bottoms[0]])


# ------------------------------------------------------------------ channels and surgery


def _operand_param(layer: Layer):
    return layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param


def _per_channel_axis(builder, layer: Layer) -> bool:
    """The operand spans exactly the channel axis."""
    param = _operand_param(layer)
    bottom = builder.shapes.blob(layer.bottoms[0])
    axis = param.axis % len(bottom) if len(bottom) else 0
    if len(layer.bottoms) == 1:
        axes = param.num_axes if param.num_axes >= 0 else len(bottom) - axis
        return axis == 1 and axes == 1
    other = builder.shapes.blob(layer.bottoms[1])
    return axis == 1 and len(other) == 1


def _operand_spans_channels(shapes, layer: Layer) -> bool:
    """A second bottom laid out from axis 0 over at least the batch and channel axes (an SE block's
    (N, C) gate, or a same-shape operand): its channel j meets channel j of bottom 0."""
    if len(layer.bottoms) < 2:
        return False
    operand = shapes.blob(layer.bottoms[1])
    return len(operand) >= 2 and _operand_param(layer).axis % len(shapes.blob(layer.bottoms[0])) == 0


@custom("per-channel operand: carries every channel (a second bottom is pinned); a second bottom spanning the "
        "channel axis (same shape, or an (N, C) gate from axis 0): couples its bottoms; other axes: pins",
        per_channel=True, weighted=True)
def _scale_or_bias_channels(builder, layer, bottoms) -> None:
    if _per_channel_axis(builder, layer):
        builder.pass_through(layer, bottoms[0], "channel")
        if len(bottoms) > 1:
            builder.pin(bottoms[1], f"second input of {layer.type} '{layer.name}'")
        return
    if _operand_spans_channels(builder.shapes, layer):
        builder.merge(layer, bottoms)
        return
    pin_all(builder, layer, bottoms, f"{layer.type} '{layer.name}' scales along other axes than the channels",
            f"output of {layer.type} '{layer.name}'")


@custom("couples its bottoms (one group per matching piece); MAX over branches may build a maxout")
def _eltwise_channels(builder, layer, bottoms) -> None:
    param = layer.param.eltwise_param
    if param.operation == EltwiseParameter.MAX and len(bottoms) > 1 and builder.maxout_eltwise(layer, bottoms):
        return
    builder.merge(layer, bottoms)


def _rewrite_operand(s, layer: Layer, param, blobs):
    """Learned per-channel scale/bias blobs lose the removed channels (along axis 1 when the second bottom
    spans the batch and channel axes, as the learned bias then does)."""
    if _operand_spans_channels(s.shapes, layer):
        kept = s.blob_positions(layer.bottoms[0])
        return blobs if kept is None else [s.take(b, kept, 1) for b in blobs]
    return drop_channel_entries(s, layer, blobs)


# ------------------------------------------------------------------ training


def _scale_op(layer, bottoms, phase):
    """x * scale (+ bias); the scale is bottom[1] or a learned blob spanning axis..axis+num_axes."""
    p = layer.param.scale_param
    two = len(bottoms) == 2

    def run(x, blobs):
        scale = x[1] if two else blobs[0]
        start = canonical_axis(p.axis, x[0].dim()) if scale.dim() or not two else 0
        view = (1,) * start + tuple(scale.shape) + (1,) * (x[0].dim() - start - scale.dim())
        y = x[0] * scale.reshape(view)
        return [y + blobs[-1].reshape(view) if p.bias_term else y]
    return run


def _eltwise_op(layer, bottoms, phase):
    import torch
    p = layer.param.eltwise_param
    coeffs = list(p.coeff) or [1.0] * len(bottoms)

    def run(x, blobs):
        if p.operation == EltwiseParameter.SUM:
            return [sum(c * b for c, b in zip(coeffs, x))]
        if p.operation == EltwiseParameter.PROD:
            return [prod(x[1:], start=x[0])]
        return [torch.stack(x).max(dim=0).values]
    return run


def _scale_fillers(layer: Layer) -> list:
    from ..train.fillers import constant_filler
    p = layer.param.scale_param
    scale = p.filler if p.HasField("filler") else constant_filler(1.0)
    return ([] if len(layer.bottoms) == 2 else [scale]) + [p.bias_filler]


# ------------------------------------------------------------------ OpenCV's Reduce

REDUCE_DEFAULTS = {"reduce": "", "axes": 0, "keepdims": 1}
"""The fields OpenCV's Reduce layer reads from a Caffe layer's fork block (``reduce_param``), with defaults
(no ``axes``: every axis). OpenCV keeps one value of a repeated fork field and reads flags with atoi."""

REDUCE_OPS = {"MAX": "ReduceMax", "MIN": "ReduceMin", "MEAN": "ReduceMean", "SUM": "ReduceSum", "L1": "ReduceL1",
              "L2": "ReduceL2", "PROD": "ReduceProd", "SUM_SQUARE": "ReduceSumSquare", "LOG_SUM": "ReduceLogSum",
              "LOG_SUM_EXP": "ReduceLogSumExp"}
"""OpenCV's reduce types (case-insensitive there) and the ONNX ops computing them."""


def reduce_param(layer: Layer) -> ForkParam:
    """The layer's ``reduce_param`` (a fork block the schema lacks, read from its text)."""
    return fork_param(layer.param, "reduce_param", REDUCE_DEFAULTS)


def reduce_settings(layer: Layer, ndim: int) -> tuple[str, list[int], bool]:
    """(ONNX op, reduced axes, keepdims) of a Reduce layer over an ``ndim`` bottom."""
    p = reduce_param(layer)
    kind = p["reduce"].upper()
    if kind not in REDUCE_OPS:
        fail(f"reduce_param.reduce must be one of {', '.join(REDUCE_OPS)}, got {p['reduce']!r}")
    if len(p.values("axes", int)) > 1:
        fail("reduce_param gives several axes; OpenCV keeps only the last (give one, or none for every axis)")
    if p["axes"] < 0:
        fail(f"reduce_param.axes {p['axes']} must not be negative (OpenCV drops the minus sign of a fork value)")
    if p["keepdims"] not in (0, 1):
        fail(f"reduce_param.keepdims must be 0 or 1, got {p['keepdims']}")
    axes = [canonical_axis(p["axes"], ndim)] if p.has("axes") else list(range(ndim))
    return REDUCE_OPS[kind], axes, bool(p["keepdims"])


def _reduce_not_identity(layer: Layer) -> bool:
    """A Reduce with a given axis whose type is no identity over a size-1 axis (OpenCV's departure)."""
    p = reduce_param(layer)
    return p.has("axes") and p["reduce"].upper() in ("L1", "L2", "SUM_SQUARE", "LOG_SUM", "LOG_SUM_EXP")


def _reduce_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """The bottom with the reduced axes set to 1 (keepdims) or dropped."""
    shape = bottoms[0]
    _, axes, keepdims = reduce_settings(layer, len(shape))
    return Rule([tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)])


def reduce(ctx: LayerContext) -> None:
    """The ONNX Reduce* op of the layer's reduce type."""
    op, axes, keepdims = reduce_settings(ctx.layer, len(ctx.bottom_shape()))
    ctx.reduce(op, ctx.bottom(), axes, keepdims, ctx.top())


@custom("reducing other axes than the channels: keeps the channel axis; over the channels (or dropping the "
        "batch axis before them): pins")
def _reduce_channels(builder, layer, bottoms) -> None:
    _, axes, keepdims = reduce_settings(layer, len(builder.shapes.blob(layer.bottoms[0])))
    where = "the channel axis" if 1 in axes else "the batch axis, moving the channels"
    keep_or_pin(builder, layer, bottoms,
                f"Reduce '{layer.name}' reduces {where}" if 1 in axes or 0 in axes and not keepdims else None)


def _reduce_op(layer, bottoms, phase):
    import torch
    op, axes, _ = reduce_settings(layer, len(bottoms[0]))
    reducers = {
        "ReduceMax": lambda x: torch.amax(x, axes, keepdim=True),
        "ReduceMin": lambda x: torch.amin(x, axes, keepdim=True),
        "ReduceMean": lambda x: x.mean(axes, keepdim=True),
        "ReduceSum": lambda x: x.sum(axes, keepdim=True),
        "ReduceL1": lambda x: x.abs().sum(axes, keepdim=True),
        "ReduceL2": lambda x: x.square().sum(axes, keepdim=True).sqrt(),
        "ReduceProd": lambda x: x.flatten(min(axes), max(axes)).prod(min(axes), keepdim=True),
        "ReduceSumSquare": lambda x: x.square().sum(axes, keepdim=True),
        "ReduceLogSum": lambda x: x.sum(axes, keepdim=True).log(),
        "ReduceLogSumExp": lambda x: torch.logsumexp(x, axes, keepdim=True),
    }
    top = _reduce_shape(layer, bottoms).tops[0]
    return lambda x, blobs: [reducers[op](x[0]).reshape(top)]


# ------------------------------------------------------------------ OpenCV's Shift


def _shift_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """The bottom's shape; one learned blob of N * C values (C at batch 1), one per sample and channel:
    OpenCV lays the blob over the fewest leading axes its count fills, here the batch and channel axes
    (the blob's size is all a caffemodel tells, so the other layouts OpenCV would also take are refused)."""
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"Shift needs a bottom with batch and channel axes, got {shape}")
    return Rule([shape], [(shape[0] * shape[1],)])


def shift(ctx: LayerContext) -> None:
    """x + the blob laid over the batch and channel axes (batch-dependent, as OpenCV lays it)."""
    (blob,) = ctx.weights(1)
    if ctx.builder.dynamic_batch:
        ctx.batch_dependent("OpenCV lays Shift's blob from the batch axis, so what it spans depends on the batch")
    shape = ctx.bottom_shape()
    ctx.node("Add", [ctx.bottom(), ctx.const(blob.reshape(shape[:2] + (1,) * (len(shape) - 2)), "shift")], ctx.top())


def _rewrite_shift(s, layer: Layer, param, blobs):
    """The blob loses the removed channels' entries (of every sample)."""
    kept = s.blob_positions(layer.bottoms[0])
    if kept is None:
        return blobs
    shape = s.shapes.blob(layer.bottoms[0])
    return [s.take(blobs[0].reshape(shape[:2]), kept, 1).reshape(-1)]


def _shift_op(layer, bottoms, phase):
    view = tuple(bottoms[0][:2]) + (1,) * (len(bottoms[0]) - 2)
    return lambda x, blobs: [x[0] + blobs[0].reshape(view)]


# ------------------------------------------------------------------ declarations

declare(
    LayerType("Scale", shape=_scale_shape, export=scale, channels=_scale_or_bias_channels, rewrite=_rewrite_operand,
              train=Train(_scale_op, _scale_fillers), bottoms=(1, 2),
              departures=(Departure("OpenCV rejects a negative Scale axis",
                                    lambda layer: layer.param.scale_param.axis < 0),)),
    LayerType("Bias", shape=_bias_shape, export=bias, channels=_scale_or_bias_channels, rewrite=_rewrite_operand,
              train=NotApplicable("no torch op is written for it yet"), bottoms=(1, 2),
              departures=(Departure("OpenCV has no Bias layer"),)),
    LayerType("Eltwise", shape=_eltwise_shape, export=eltwise, channels=_eltwise_channels,
              rewrite=NotApplicable("its coefficients are per bottom, not per channel (maxout rewiring is "
                                    "the surgeon's)"),
              train=Train(_eltwise_op), bottoms=(2, None)),
    LayerType("Reduce", shape=_reduce_shape, export=reduce, channels=_reduce_channels,
              rewrite=NotApplicable("it has no params or blobs that count channels"), train=Train(_reduce_op),
              departures=(Departure("OpenCV's Reduce returns its input unchanged when the axis it reduces has size 1 "
                                    "(|x|, x², log x ... are not computed)", _reduce_not_identity),)),
    LayerType("Shift", shape=_shift_shape, export=shift, channels=PER_CHANNEL, rewrite=_rewrite_shift,
              train=Train(_shift_op)),
)
