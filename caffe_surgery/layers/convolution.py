"""Layers with learned weight matrices: Convolution, Deconvolution, InnerProduct, Embed, and Im2col."""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

import numpy as np
from onnx import TensorProto

from ..export.context import LayerContext
from ..graph import Layer
from ..groups import Member, Piece
from .channels import PIN, ChannelRule
from .registry import NotApplicable, LayerType, Train, declare, Departure
from .shape_rules import Rule, Shape, canonical_axis, fail


def _spatial(param, field: str, hw: str | None, n: int, default: int) -> list[int]:
    """A per-axis convolution setting: the ``hw``_h/_w pair, one value for all axes, one per axis, or the default."""
    if hw and (param.HasField(f"{hw}_h") or param.HasField(f"{hw}_w")):
        return [getattr(param, f"{hw}_h"), getattr(param, f"{hw}_w")]
    values = list(getattr(param, field)) or [default]
    return values * n if len(values) == 1 else values


def conv_attributes(ctx: LayerContext) -> dict:
    """ONNX Conv/ConvTranspose attributes from a ConvolutionParameter."""
    p = ctx.param.convolution_param
    if p.axis != 1:
        raise ctx.unsupported(f"with channel axis {p.axis}")
    n = len(ctx.bottom_shape()) - 2
    kernel = _spatial(p, "kernel_size", "kernel", n, 0)
    pads = _spatial(p, "pad", "pad", n, 0)
    strides = _spatial(p, "stride", "stride", n, 1)
    dilations = _spatial(p, "dilation", None, n, 1)
    return dict(kernel_shape=kernel, pads=pads + pads, strides=strides, dilations=dilations, group=p.group)


def _weight_inputs(ctx: LayerContext) -> list[str]:
    """The weight (and bias, when bias_term) initializers of a (de)convolution."""
    bias_term = ctx.param.convolution_param.bias_term
    blobs = ctx.weights(2 if bias_term else 1)
    names = [ctx.const(blobs[0], "weight")]
    if bias_term:
        names.append(ctx.const(blobs[1].reshape(-1), "bias"))
    return names


def convolution(ctx: LayerContext) -> None:
    """Caffe's weight layout (C_out, C_in/group, k...) is ONNX's."""
    ctx.node("Conv", [ctx.bottom()] + _weight_inputs(ctx), ctx.top(), **conv_attributes(ctx))


def deconvolution(ctx: LayerContext) -> None:
    """Caffe's weight layout (C_in, C_out/group, k...) is ONNX ConvTranspose's; output sizes agree."""
    ctx.node("ConvTranspose", [ctx.bottom()] + _weight_inputs(ctx), ctx.top(), **conv_attributes(ctx))


def inner_product(ctx: LayerContext) -> None:
    """Flatten from ``axis`` into a (M, K) matrix, Gemm with the (N, K) weight (or (K, N) if transpose), reshape back."""
    p = ctx.param.inner_product_param
    in_shape = ctx.bottom_shape()
    axis = canonical_axis(p.axis, len(in_shape))
    blobs = ctx.weights(2 if p.bias_term else 1)
    inputs = [ctx.node("Flatten", [ctx.bottom()], axis=axis), ctx.const(blobs[0], "weight")]
    if p.bias_term:
        inputs.append(ctx.const(blobs[1].reshape(-1), "bias"))
    if axis == 1:
        ctx.node("Gemm", inputs, ctx.top(), transB=int(not p.transpose))
    else:
        product = ctx.node("Gemm", inputs, transB=int(not p.transpose))
        ctx.reshape(product, ctx.top_shape(), keeps_batch=False, out=ctx.top())


def embed(ctx: LayerContext) -> None:
    """Rows of the (input_dim, num_output) weight picked by the (truncated) input values, plus bias."""
    p = ctx.param.embed_param
    blobs = ctx.weights(2 if p.bias_term else 1)
    indices = ctx.node("Cast", [ctx.bottom()], to=TensorProto.INT64)
    rows = [ctx.const(blobs[0], "weight"), indices]
    if not p.bias_term:
        ctx.node("Gather", rows, ctx.top(), axis=0)
        return
    gathered = ctx.node("Gather", rows, axis=0)
    ctx.node("Add", [gathered, ctx.const(np.asarray(blobs[1]).reshape(-1), "bias")], ctx.top())


# ----------------------------------------------------------- convolutions


def _conv_dims(p, name: str, hw: tuple[str, str] | None, n: int, default: int | None) -> list[int]:
    """A spatial setting given as a repeated field (one value or one per axis) or as _h/_w."""
    values = [int(v) for v in getattr(p, name)]
    if hw and (p.HasField(hw[0]) or p.HasField(hw[1])):
        if n != 2:
            fail(f"{hw[0]}/{hw[1]} can only be used for 2-D convolution")
        if values:
            fail(f"give either {name} or {hw[0]}/{hw[1]}, not both")
        return [int(getattr(p, hw[0])), int(getattr(p, hw[1]))]
    if not values:
        if default is None:
            fail(f"{name} is not given")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        fail(f"{name} has {len(values)} values for {n} spatial axes")
    return values


@dataclass
class _Conv:
    axis: int
    channels: int
    num_output: int
    group: int
    kernel: list[int]
    stride: list[int]
    pad: list[int]
    dilation: list[int]


def _conv_setup(layer: Layer, bottoms: list[Shape]) -> _Conv:
    """Read and check the convolution_param against the first bottom (Caffe's BaseConvolutionLayer)."""
    p = layer.param.convolution_param
    shape = bottoms[0]
    if any(b != shape for b in bottoms[1:]):
        fail(f"all bottoms must have the same shape, got {', '.join(map(str, bottoms))}")
    if len(layer.tops) != len(bottoms):
        fail(f"needs one top per bottom, has {len(bottoms)} bottoms and {len(layer.tops)} tops")
    axis = canonical_axis(p.axis, len(shape))
    n = len(shape) - axis - 1
    if n < 1:
        fail(f"bottom shape {shape} has no spatial axes after axis {axis}")
    kernel = _conv_dims(p, "kernel_size", ("kernel_h", "kernel_w"), n, None)
    stride = _conv_dims(p, "stride", ("stride_h", "stride_w"), n, 1)
    pad = _conv_dims(p, "pad", ("pad_h", "pad_w"), n, 0)
    dilation = _conv_dims(p, "dilation", None, n, 1)
    for name, values in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(values) <= 0:
            fail(f"{name} must be positive, got {values}")
    if p.num_output <= 0:
        fail("num_output must be positive")
    group = p.group
    channels = shape[axis]
    if group <= 0:
        fail("group must be positive")
    if channels % group:
        fail(f"input channels {channels} are not divisible by group {group}")
    if p.num_output % group:
        fail(f"num_output {p.num_output} is not divisible by group {group}")
    return _Conv(axis, channels, p.num_output, group, kernel, stride, pad, dilation)


def _check_positive(out: list[int], bottom: Shape) -> None:
    if min(out) <= 0:
        fail(f"kernel does not fit the bottom {bottom}: output spatial size would be {tuple(out)}")


def _convolution(layer: Layer, bottoms: list[Shape]) -> Rule:
    return _filter_rule(layer, bottoms, transposed=False)


def _deconvolution(layer: Layer, bottoms: list[Shape]) -> Rule:
    return _filter_rule(layer, bottoms, transposed=True)


def _filter_rule(layer: Layer, bottoms: list[Shape], transposed: bool) -> Rule:
    """Convolution's or Deconvolution's (``transposed``) tops, weight shapes and MACs; each bottom is
    filtered alike. A deconvolution's MACs are those of the convolution it transposes."""
    c = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    spatial = shape[c.axis + 1:]
    geometry = list(zip(spatial, c.kernel, c.stride, c.pad, c.dilation))
    if transposed:
        out = [s * (size - 1) + d * (k - 1) + 1 - 2 * p for size, k, s, p, d in geometry]
    else:
        out = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in geometry]
    _check_positive(out, shape)
    top = shape[:c.axis] + (c.num_output,) + tuple(out)
    rows, columns = (c.channels, c.num_output) if transposed else (c.num_output, c.channels)
    params = [(rows, columns // c.group, *c.kernel)]
    if layer.param.convolution_param.bias_term:
        params.append((c.num_output,))
    positions = prod(spatial) if transposed else prod(out)
    macs = prod(shape[:c.axis]) * rows * positions * (columns // c.group) * prod(c.kernel)
    return Rule([top] * len(bottoms), params, macs * len(bottoms))


def _im2col(layer: Layer, bottoms: list[Shape]) -> Rule:
    c = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    out = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1
           for size, k, s, p, d in zip(shape[c.axis + 1:], c.kernel, c.stride, c.pad, c.dilation)]
    _check_positive(out, shape)
    return Rule([shape[:c.axis] + (c.channels * prod(c.kernel),) + tuple(out)])


def _inner_product(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Weight (N, K), or (K, N) with ``transpose``; K = product of the bottom axes from ``axis`` on."""
    p = layer.param.inner_product_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    if p.num_output <= 0:
        fail("num_output must be positive")
    k = prod(shape[axis:])
    n = p.num_output
    params = [(k, n) if p.transpose else (n, k)]
    if p.bias_term:
        params.append((n,))
    return Rule([shape[:axis] + (n,)], params, prod(shape[:axis]) * k * n)


def _embed(layer: Layer, bottoms: list[Shape]) -> Rule:
    """A lookup table (input_dim, num_output): no MACs."""
    p = layer.param.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        fail("num_output and input_dim must be positive")
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return Rule([bottoms[0] + (p.num_output,)], params)


# ------------------------------------------------------------------ channels


def _axis_of(layer: Layer) -> int:
    p = layer.param.inner_product_param if layer.type == "InnerProduct" else layer.param.convolution_param
    return p.axis


def _whole_group(builder, layout) -> bool:
    """The layout is one whole group in its own order (so a constraint on it is a constraint on the group)."""
    if len(layout) != 1 or layout[0].block != 1 or layout[0].index.shape[1] != 1:
        return False
    piece = layout[0]
    return np.array_equal(piece.index[:, 0], np.arange(builder.group(piece.group).size))


def _produce(builder, layer, bottoms) -> None:
    """Open a group of its outputs; its inputs lose the matching weight columns (per group when grouped)."""
    top = layer.tops[0]
    bottom_shape = builder.shapes.blob(layer.bottoms[0])
    axis = _axis_of(layer)
    if axis % len(bottom_shape) != 1:
        builder.pin(bottoms[0], f"read by {layer.type} '{layer.name}' along axis {axis}")
        builder.pinned_output(layer, f"output of {layer.type} '{layer.name}' along axis {axis}")
        return
    layout = builder.flattened(bottoms[0], layer.bottoms[0]) if layer.type == "InnerProduct" else bottoms[0]
    groups = 1 if layer.type == "InnerProduct" else layer.param.convolution_param.group
    outputs = builder.channels(top)
    inputs = bottom_shape[1]
    if groups > 1 and groups == inputs and layer.type != "Deconvolution" and outputs == inputs:
        builder.member(layout, layer, "depthwise")
        builder.layouts[top] = layout
        return
    if groups > 1 and layer.type == "Deconvolution":
        reason = f"grouped Deconvolution '{layer.name}' (pruning its channels is not supported)"
        builder.pin(layout, f"read by {reason}")
        builder.pinned_output(layer, f"output of {reason}")
        return
    builder.member(layout, layer, "in")
    gid = builder.new_group(outputs, layer.name)
    builder.groups[gid].members.append(Member(layer.name, "out"))
    if groups > 1:
        builder.groups[gid].chunks = groups
        if _whole_group(builder, layout):
            source = builder.group(layout[0].group)
            source.chunks = int(np.lcm(source.chunks, groups))
        else:
            builder.pin(layout, f"feeds grouped {layer.type} '{layer.name}' from several sources or a part of one")
    builder.layouts[top] = [Piece(gid, np.arange(outputs).reshape(outputs, 1))]


PRODUCER = ChannelRule(_produce, "produces channels: opens a group of its outputs, loses its inputs' columns",
                       produces=True)


# ------------------------------------------------------------------ surgery


def _rewrite_convolution(s, layer: Layer, param, blobs):
    conv = param.convolution_param
    groups_count = conv.group
    inputs = s.blob_positions(layer.bottoms[0])
    if layer.name in s.groups.depthwise:
        if inputs is not None:
            conv.num_output = conv.group = int(inputs.size)
            blobs = [s.take(b, inputs, 0) for b in blobs]
        return blobs
    branch = s.branch_group(layer)
    if branch is not None:
        blobs = s.branch_rows(layer, branch, 0)
        conv.num_output = int(blobs[0].shape[0])
    else:
        rows = s.blob_positions(layer.tops[0])
        if rows is not None:
            conv.num_output = int(rows.size)
            blobs = [s.take(b, rows, 0) for b in blobs]
    if inputs is not None and blobs:
        blobs[0] = _grouped_columns(blobs[0], inputs, groups_count, int(s.shapes.blob(layer.bottoms[0])[1]),
                                    in_axis=1, out_axis=0)
    return blobs


def _grouped_columns(weight: np.ndarray, inputs: np.ndarray, groups_count: int, old_inputs: int,
                     in_axis: int, out_axis: int) -> np.ndarray:
    """Keep input channels ``inputs`` of a (possibly grouped) convolution weight."""
    if groups_count == 1:
        return np.take(weight, inputs, axis=in_axis)
    per_group_in = old_inputs // groups_count
    per_group_out = weight.shape[out_axis] // groups_count
    parts = []
    for g in range(groups_count):
        local = inputs[(inputs >= g * per_group_in) & (inputs < (g + 1) * per_group_in)] - g * per_group_in
        rows = np.take(weight, np.arange(g * per_group_out, (g + 1) * per_group_out), axis=out_axis)
        parts.append(np.take(rows, local, axis=in_axis))
    return np.concatenate(parts, axis=out_axis)


def _rewrite_deconvolution(s, layer: Layer, param, blobs):
    """Weight (C_in, C_out, k...): outputs are columns, inputs rows (grouped ones are pinned by the channel rule)."""
    conv = param.convolution_param
    rows = s.blob_positions(layer.tops[0])
    inputs = s.blob_positions(layer.bottoms[0])
    if rows is not None:
        conv.num_output = int(rows.size)
        blobs = [s.take(blobs[0], rows, 1)] + [s.take(b, rows, 0) for b in blobs[1:]]
    if inputs is not None and blobs:
        blobs[0] = s.take(blobs[0], inputs, 0)
    return blobs


def _rewrite_inner_product(s, layer: Layer, param, blobs):
    ip = param.inner_product_param
    out_axis, in_axis = (1, 0) if ip.transpose else (0, 1)
    branch = s.branch_group(layer)
    if branch is not None:
        blobs = s.branch_rows(layer, branch, out_axis)
        ip.num_output = int(blobs[0].shape[out_axis])
    else:
        rows = s.blob_positions(layer.tops[0])
        if rows is not None:
            ip.num_output = int(rows.size)
            blobs = [s.take(blobs[0], rows, out_axis)] + [s.take(b, rows, 0) for b in blobs[1:]]
    inputs = s.blob_positions(layer.bottoms[0], flatten=True)
    if inputs is not None and blobs:
        blobs[0] = s.take(blobs[0], inputs, in_axis)
    return blobs


# ------------------------------------------------------------------ training


def _convolution_op(layer, bottoms, phase):
    import torch.nn.functional as F

    from ..errors import UnsupportedLayerError
    p = layer.param.convolution_param
    n = len(bottoms[0]) - 2
    if canonical_axis(p.axis, len(bottoms[0])) != 1 or n not in (1, 2, 3):
        raise UnsupportedLayerError("only convolutions over 1 to 3 spatial axes after axis 1 can be trained",
                                    layer=layer.name)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    stride = _spatial(p, "stride", "stride", n, 1)
    pad = _spatial(p, "pad", "pad", n, 0)
    dilation = _spatial(p, "dilation", None, n, 1)

    def run(x, blobs):
        bias = blobs[1] if p.bias_term else None
        return [conv(b, blobs[0], bias, stride, pad, dilation, p.group) for b in x]
    return run


def _inner_product_op(layer, bottoms, phase):
    import torch.nn.functional as F
    p = layer.param.inner_product_param
    axis = canonical_axis(p.axis, len(bottoms[0]))

    def run(x, blobs):
        flat = x[0].reshape(*x[0].shape[:axis], -1)
        weight = blobs[0].t() if p.transpose else blobs[0]
        return [F.linear(flat, weight, blobs[1] if p.bias_term else None)]
    return run


def _convolution_fillers(layer: Layer) -> list:
    return [layer.param.convolution_param.weight_filler, layer.param.convolution_param.bias_filler]


def _inner_product_fillers(layer: Layer) -> list:
    return [layer.param.inner_product_param.weight_filler, layer.param.inner_product_param.bias_filler]


# ------------------------------------------------------------------ declarations

_NO_TORCH = "no torch op is written for it yet"

CONVOLUTION = declare(
    LayerType("Convolution", shape=_convolution, export=convolution, channels=PRODUCER,
              rewrite=_rewrite_convolution, train=Train(_convolution_op, _convolution_fillers),
              bottoms=(1, None), tops=(1, None)))
# MobileNet forks' depthwise layers: a Convolution (convolution_param, group = channels) under another name.
declare(replace(CONVOLUTION, name="ConvolutionDepthwise"),
        replace(CONVOLUTION, name="DepthwiseConvolution",
                departures=(Departure("OpenCV has no DepthwiseConvolution layer"),)))
declare(
    LayerType("Deconvolution", shape=_deconvolution, export=deconvolution, channels=PRODUCER,
              rewrite=_rewrite_deconvolution, train=NotApplicable(_NO_TORCH), bottoms=(1, None), tops=(1, None),
              departures=(Departure("OpenCV ignores dilation in Deconvolution (its output is too small)",
                                    lambda layer: any(d != 1 for d in layer.param.convolution_param.dilation)),
                          Departure("OpenCV fuses a following BatchNorm wrongly into a grouped Deconvolution",
                                    lambda layer: layer.param.convolution_param.group != 1, fusion=True))),
    LayerType("InnerProduct", shape=_inner_product, export=inner_product, channels=PRODUCER,
              rewrite=_rewrite_inner_product, train=Train(_inner_product_op, _inner_product_fillers),
              departures=(Departure("OpenCV ignores InnerProduct's transpose",
                                    lambda layer: layer.param.inner_product_param.transpose),)),
    LayerType("Embed", shape=_embed, export=embed, channels=PIN,
              rewrite=NotApplicable("its inputs are indices, not channels (pinned)"), train=NotApplicable(_NO_TORCH),
              departures=(Departure("OpenCV has no Embed layer"),)),
    LayerType("Im2col", shape=_im2col,
              export=NotApplicable("no ONNX converter is written for Im2col"), channels=PIN,
              rewrite=NotApplicable("it mixes channels (pinned)"), train=NotApplicable(_NO_TORCH)),
)
