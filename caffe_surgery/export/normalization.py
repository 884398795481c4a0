"""Normalizing layers: BatchNorm, LRN, MVN and SSD's Normalize."""
import numpy as np

from ..caffe_pb2 import LRNParameter
from .context import LayerContext, channel_broadcast
from .registry import converter


@converter("BatchNorm")
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


@converter("LRN")
def lrn(ctx: LayerContext) -> None:
    """ACROSS_CHANNELS is ONNX LRN (both use alpha / size); WITHIN_CHANNEL is Caffe's pool-power-product."""
    p = ctx.param.lrn_param
    if p.local_size % 2 == 0:
        raise ctx.unsupported(f"with an even local_size {p.local_size}")
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


@converter("MVN")
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


@converter("Normalize")
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
