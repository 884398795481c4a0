"""Layers with learned weight matrices: Convolution, Deconvolution, InnerProduct, Embed."""
import numpy as np
from onnx import TensorProto

from ..layer_shapes import canonical_axis
from .context import LayerContext
from .registry import converter


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


@converter("Convolution")
def convolution(ctx: LayerContext) -> None:
    """Caffe's weight layout (C_out, C_in/group, k...) is ONNX's."""
    ctx.node("Conv", [ctx.bottom()] + _weight_inputs(ctx), ctx.top(), **conv_attributes(ctx))


@converter("Deconvolution")
def deconvolution(ctx: LayerContext) -> None:
    """Caffe's weight layout (C_in, C_out/group, k...) is ONNX ConvTranspose's; output sizes agree."""
    ctx.node("ConvTranspose", [ctx.bottom()] + _weight_inputs(ctx), ctx.top(), **conv_attributes(ctx))


@converter("InnerProduct")
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


@converter("Embed")
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
