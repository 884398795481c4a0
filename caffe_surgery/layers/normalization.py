"""Normalizing layers: BatchNorm, LRN, MVN and SSD's Normalize."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caffe_pb2 import LRNParameter
from ..export.context import LayerContext, channel_broadcast
from ..graph import TEST, Layer
from .channels import PASS_THROUGH, PER_CHANNEL, PIN, custom, drop_channel_entries
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail, same_shape


def batch_norm(ctx: LayerContext) -> None:
    """(x - mean) / sqrt(var + eps): stored statistics (divided by the scale factor blob) or the batch's own."""
    p = ctx.param.batch_norm_param
    ndim = len(ctx.bottom_shape())
    use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else True
    if not use_global_stats:
        _batch_statistics_norm(ctx, ndim, p.eps)
        return
    mean, var, factor = (b.astype(np.float64) for b in ctx.weights(3))
    scale = 0.0 if factor.reshape(-1)[0] == 0 else 1.0 / factor.reshape(-1)[0]
    mean, var = mean.reshape(-1) * scale, var.reshape(-1) * scale
    inv_std = 1.0 / np.sqrt(var + p.eps)
    scaled = ctx.node("Mul", [ctx.bottom(), ctx.const(channel_broadcast(inv_std, ndim), "inv_std")])
    ctx.node("Add", [scaled, ctx.const(channel_broadcast(-mean * inv_std, ndim), "shift")], ctx.top())


def _batch_statistics_norm(ctx: LayerContext, ndim: int, eps: float) -> None:
    """BatchNorm with use_global_stats false: normalize by the batch's per-channel mean and biased variance."""
    axes = [0] + list(range(2, ndim))
    centered = ctx.node("Sub", [ctx.bottom(), ctx.reduce("ReduceMean", ctx.bottom(), axes, keepdims=True)])
    variance = ctx.reduce("ReduceMean", ctx.node("Mul", [centered, centered]), axes, keepdims=True)
    std = ctx.node("Sqrt", [ctx.shifted(variance, eps, hint="eps")])
    ctx.node("Div", [centered, std], ctx.top())


def lrn(ctx: LayerContext) -> None:
    """ACROSS_CHANNELS is ONNX LRN (both use alpha / size); WITHIN_CHANNEL is Caffe's pool-power-product."""
    p = ctx.param.lrn_param
    if p.norm_region == LRNParameter.ACROSS_CHANNELS:
        ctx.node("LRN", [ctx.bottom()], ctx.top(), size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
        return
    # Caffe: x * (1 + alpha * mean_{size x size window}(x^2)) ^ -beta, the mean over the zero-padded window
    # (pad (size-1)/2, stride 1, so every window divides by size^2). Caffe ignores k here.
    pad = (p.local_size - 1) // 2
    squared = ctx.node("Mul", [ctx.bottom(), ctx.bottom()])
    mean = ctx.node("AveragePool", [squared], kernel_shape=[p.local_size] * 2, pads=[pad] * 4,
                    strides=[1, 1], count_include_pad=1)
    base = ctx.shifted(ctx.scaled(mean, p.alpha, hint="alpha"), 1.0, hint="one")
    factor = ctx.node("Pow", [base, ctx.const(-p.beta, "minus_beta")])
    ctx.node("Mul", [ctx.bottom(), factor], ctx.top())


def mvn(ctx: LayerContext) -> None:
    """x - mean, divided by (std + eps) when normalize_variance; per channel or across channels."""
    p = ctx.param.mvn_param
    ndim = len(ctx.bottom_shape())
    axes = list(range(1 if p.across_channels else 2, ndim))
    mean = ctx.reduce("ReduceMean", ctx.bottom(), axes, keepdims=True)
    if not p.normalize_variance:
        ctx.node("Sub", [ctx.bottom(), mean], ctx.top())
        return
    centered = ctx.node("Sub", [ctx.bottom(), mean])
    variance = ctx.reduce("ReduceMean", ctx.node("Mul", [centered, centered]), axes, keepdims=True)
    std = ctx.shifted(ctx.node("Sqrt", [variance]), p.eps, hint="eps")
    ctx.node("Div", [centered, std], ctx.top())


def normalize(ctx: LayerContext) -> None:
    """SSD's L2 normalization: x / sqrt(sum x^2 + eps) over C*H*W (across_spatial) or over C, times scale."""
    p = ctx.param.norm_param
    ndim = len(ctx.bottom_shape())
    axes = list(range(1, ndim)) if p.across_spatial else [1]
    sum_sq = ctx.reduce("ReduceSumSquare", ctx.bottom(), axes, keepdims=True)
    norm = ctx.node("Sqrt", [ctx.shifted(sum_sq, p.eps, hint="eps")])
    normalized = ctx.node("Div", [ctx.bottom(), norm])
    (scale,) = ctx.weights(1)
    scale = scale.reshape(-1)[:1] if p.channel_shared else channel_broadcast(scale.reshape(-1), ndim)
    ctx.node("Mul", [normalized, ctx.const(scale, "scale")], ctx.top())


# ------------------------------------------------------------------ shapes


def _batch_norm_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs: running mean (C,), running variance (C,), moving-average factor (1,)."""
    shape = bottoms[0]
    channels = shape[1] if len(shape) > 1 else 1
    return Rule([shape], [(channels,), (channels,), (1,)])


def _lrn_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Same shape; Caffe's LRNLayer refuses an even local_size."""
    size = layer.param.lrn_param.local_size
    if size % 2 == 0:
        fail(f"local_size must be odd (Caffe's LRN refuses {size})")
    return same_shape(layer, bottoms)


def _normalize_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """SSD's L2 normalisation; scale blob (C,), or a 0-axis scalar () with channel_shared as Caffe-SSD allocates it."""
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"Normalize needs at least 2 axes, got {shape}")
    return Rule([shape], [() if layer.param.norm_param.channel_shared else (shape[1],)])


# ------------------------------------------------------------------ channels and surgery


@custom("within a channel: keeps the channels; across channels: pins them")
def _lrn_channels(builder, layer, bottoms) -> None:
    if layer.param.lrn_param.norm_region == LRNParameter.WITHIN_CHANNEL:
        PASS_THROUGH.apply(builder, layer, bottoms)
        return
    builder.pin(bottoms[0], f"read by LRN '{layer.name}' across channels")
    builder.pinned_output(layer, f"output of LRN '{layer.name}' across channels")


def _rewrite_batch_norm(s, layer: Layer, param, blobs):
    """Mean and variance lose the removed channels; the moving-average factor stays."""
    return drop_channel_entries(s, layer, blobs, count=2)


# ------------------------------------------------------------------ training


def _lrn_op(layer, bottoms, phase):
    import torch.nn.functional as F

    from ..errors import UnsupportedLayerError
    p = layer.param.lrn_param
    if p.norm_region != LRNParameter.ACROSS_CHANNELS:
        raise UnsupportedLayerError("only ACROSS_CHANNELS LRN can be trained", layer=layer.name)
    return lambda x, blobs: [F.local_response_norm(x[0], p.local_size, p.alpha, p.beta, p.k)]


def _batch_norm_op(layer, bottoms, phase):
    """Batch statistics (and Caffe's moving sums in blobs 0-2) unless use_global_stats."""
    import torch
    p = layer.param.batch_norm_param
    use_global = p.use_global_stats if p.HasField("use_global_stats") else phase == TEST
    fraction = p.moving_average_fraction

    def run(x, blobs):
        x = x[0]
        axes = [0] + list(range(2, x.dim()))
        view = (1, -1) + (1,) * (x.dim() - 2)
        if use_global:
            factor = blobs[2].reshape(())
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            mean, var = blobs[0] * scale, blobs[1] * scale
        else:
            mean = x.mean(axes)
            var = (x - mean.reshape(view)).square().mean(axes)
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                blobs[2].mul_(fraction).add_(1)
                blobs[0].mul_(fraction).add_(mean)
                blobs[1].mul_(fraction).add_(var, alpha=m / (m - 1) if m > 1 else 1.0)
        return [(x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + p.eps)]
    return run


def _batch_norm_fillers(layer: Layer) -> list:
    from ..train.fillers import constant_filler
    return [constant_filler(0.0)] * 3


# ------------------------------------------------------------------ declarations

_NO_TORCH = NotApplicable("no torch op is written for it yet")

declare(
    LayerType("BatchNorm", shape=_batch_norm_shape, export=batch_norm, channels=PER_CHANNEL,
              rewrite=_rewrite_batch_norm, train=Train(_batch_norm_op, _batch_norm_fillers, learns=False)),
    LayerType("LRN", shape=_lrn_shape, export=lrn, channels=_lrn_channels,
              rewrite=NotApplicable("nothing in it counts channels"), train=Train(_lrn_op),
              departures=(Departure("OpenCV's cross-channel LRN ignores k",
                                    lambda layer: layer.param.lrn_param.k != 1 and
                                    layer.param.lrn_param.norm_region == LRNParameter.ACROSS_CHANNELS),)),
    LayerType("MVN", shape=same_shape, export=mvn, channels=PIN,
              rewrite=NotApplicable("it mixes channels (pinned)"), train=_NO_TORCH,
              departures=(Departure("OpenCV's MVN computes x / sqrt(var + eps) where Caffe computes "
                                    "x / (sqrt(var) + eps)",
                                    lambda layer: layer.param.mvn_param.normalize_variance and
                                    layer.param.mvn_param.HasField("eps")),)),
)
NORMALIZE = declare(LayerType("Normalize", shape=_normalize_shape, export=normalize, channels=PIN,
                              rewrite=NotApplicable("it normalises across channels (pinned)"), train=_NO_TORCH))
declare(replace(NORMALIZE, name="NormalizeBBox"))  # OpenCV's name for SSD's Normalize
