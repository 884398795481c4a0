"""Pooling with Caffe's output size and Caffe's AVE divisor.

Caffe sizes the output with ceil (or floor) division, then drops a last window
that would start in the end padding; the inferred top shape says the result.
Each ONNX pool here gets explicit end padding that yields exactly that size, so
no ceil_mode convention is involved. Caffe's AVE divides by the window clipped to the padded input
(H + pad), so windows reaching into the extra ceil padding divide by less than
the kernel size: a constant correction map fixes those positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil, floor

import numpy as np

from .. import caffe_pb2
from ..caffe_pb2 import PoolingParameter
from ..export.context import LayerContext
from ..graph import Layer
from .channels import PASS_THROUGH, PIN
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail


@dataclass(frozen=True)
class Axis:
    """Caffe's pooling geometry along one spatial axis."""

    size: int
    kernel: int
    stride: int
    pad: int
    pooled: int

    @property
    def end_pad(self) -> int:
        """End padding making ONNX's floor-mode size equal Caffe's: the last window ends at the padded end."""
        return max((self.pooled - 1) * self.stride + self.kernel - self.size - self.pad, 0)

    def ave_correction(self) -> np.ndarray:
        """kernel / Caffe's divisor for each output position (1 except windows past size + pad)."""
        starts = np.arange(self.pooled) * self.stride - self.pad
        ends = np.minimum(starts + self.kernel, self.size + self.pad)
        return (self.kernel / (ends - starts)).astype(np.float32)


def pooling_axes(ctx: LayerContext) -> tuple[Axis, Axis]:
    """The (h, w) geometry of a non-global Pooling layer."""
    p = ctx.param.pooling_param
    kernel = _pair(p, "kernel_size", ("kernel_h", "kernel_w"), None)
    stride, pad = _pair(p, "stride", ("stride_h", "stride_w"), 1), _pair(p, "pad", ("pad_h", "pad_w"), 0)
    axes = tuple(Axis(*values) for values in zip(ctx.bottom_shape()[2:], kernel, stride, pad, ctx.top_shape()[2:]))
    for axis in axes:
        if (axis.pooled - 1) * axis.stride - axis.pad >= axis.size:
            raise ctx.unsupported("with a window entirely outside the input")
    return axes


def pooling(ctx: LayerContext) -> None:
    """MAX and AVE pooling, global or windowed."""
    p = ctx.param.pooling_param
    if p.pool not in (PoolingParameter.MAX, PoolingParameter.AVE):
        raise ctx.unsupported(f"with pool {PoolingParameter.PoolMethod.Name(p.pool)}")
    if len(ctx.layer.tops) > 1:
        raise ctx.unsupported("with a mask top")
    is_max = p.pool == PoolingParameter.MAX
    if p.global_pooling:
        ctx.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [ctx.bottom()], ctx.top())
        return
    h, w = pooling_axes(ctx)
    attrs = dict(kernel_shape=[h.kernel, w.kernel], strides=[h.stride, w.stride],
                 pads=[h.pad, w.pad, h.end_pad, w.end_pad])
    if is_max:
        ctx.node("MaxPool", [ctx.bottom()], ctx.top(), **attrs)
        return
    correction = np.outer(h.ave_correction(), w.ave_correction())
    if np.all(correction == 1):
        ctx.node("AveragePool", [ctx.bottom()], ctx.top(), count_include_pad=1, **attrs)
        return
    pooled = ctx.node("AveragePool", [ctx.bottom()], count_include_pad=1, **attrs)
    ctx.node("Mul", [pooled, ctx.const(correction[None, None], "divisor_correction")], ctx.top())
# ------------------------------------------------------------------ pooling


def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's pooled size, before the 'last window starts inside' correction."""
    return int((ceil if ceil_mode else floor)((size + 2 * pad - kernel) / stride)) + 1


def pool_output(shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
                ceil_mode: bool = True) -> tuple[int, int]:
    """Pooled (H, W) as Caffe computes it, including its rule that with padding the
    last window must start inside the image: if (out-1)*stride >= size+pad, out -= 1."""
    out = [_pooled_size(size, k, s, p, ceil_mode) for size, k, s, p in zip(shape[2:], kernel, stride, pad)]
    if pad[0] or pad[1]:
        out = [o - 1 if (o - 1) * s >= size + p else o for o, size, s, p in zip(out, shape[2:], stride, pad)]
    if min(out) <= 0:
        fail(f"pooling window {kernel} does not fit the bottom {shape}")
    return out[0], out[1]


def _pair(p, name: str, hw: tuple[str, str], default: int | None) -> tuple[int, int]:
    """PoolingParameter's single value or its _h/_w pair."""
    if p.HasField(hw[0]) or p.HasField(hw[1]):
        if p.HasField(name):
            fail(f"give either {name} or {hw[0]}/{hw[1]}, not both")
        if not (p.HasField(hw[0]) and p.HasField(hw[1])):
            fail(f"give both {hw[0]} and {hw[1]}")
        return int(getattr(p, hw[0])), int(getattr(p, hw[1]))
    if default is None and not p.HasField(name):
        fail(f"{name} is not given")
    value = int(getattr(p, name))
    return value, value


def _pooling(layer: Layer, bottoms: list[Shape]) -> Rule:
    """MAX/AVE/STOCHASTIC; CEIL rounding unless round_mode FLOOR; a MAX second top is the mask."""
    p = layer.param.pooling_param
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"pooling needs a 4-D bottom, got {shape}")
    if len(layer.tops) == 2 and p.pool != caffe_pb2.PoolingParameter.MAX:
        fail("only MAX pooling has a second (mask) top")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            fail("global pooling takes no kernel size")
        kernel = shape[2], shape[3]
    else:
        kernel = _pair(p, "kernel_size", ("kernel_h", "kernel_w"), None)
    pad = _pair(p, "pad", ("pad_h", "pad_w"), 0)
    stride = _pair(p, "stride", ("stride_h", "stride_w"), 1)
    if min(kernel) <= 0 or min(stride) <= 0:
        fail(f"kernel {kernel} and stride {stride} must be positive")
    if p.global_pooling and (max(pad) or max(stride) != 1):
        fail("global pooling needs pad 0 and stride 1")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        fail(f"pad {pad} must be smaller than the kernel {kernel}")
    out = pool_output(shape, kernel, stride, pad, p.round_mode == caffe_pb2.PoolingParameter.CEIL)
    return Rule([shape[:2] + out] * len(layer.tops))


def _spp(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Level l pools into 2^l x 2^l bins; levels are flattened and concatenated (one level: N,C,1,1)."""
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"SPP needs a 4-D bottom, got {shape}")
    height = layer.param.spp_param.pyramid_height
    if height <= 0:
        fail("pyramid_height must be positive")
    if height == 1:
        return Rule([shape[:2] + (1, 1)])
    total = 0
    for level in range(height):
        bins = 2 ** level
        kernel = tuple(ceil(size / bins) for size in shape[2:])
        pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, shape[2:]))
        out = pool_output(shape, kernel, kernel, pad)
        total += shape[1] * out[0] * out[1]
    return Rule([(shape[0], total)])


# ------------------------------------------------------------------ training


def _window_sizes(out: int, size: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's AVE divisor per output position: the window clipped to the padded extent [-pad, size+pad)."""
    start = np.arange(out) * stride - pad
    return np.minimum(start + kernel, size + pad) - start


def _pooling_op(layer, bottoms, phase):
    """MAX/AVE with Caffe's rounding (CEIL unless round_mode FLOOR), last-window rule and AVE divisor."""
    import torch
    import torch.nn.functional as F

    from ..errors import UnsupportedLayerError
    p = layer.param.pooling_param
    if p.pool not in (POOL.MAX, POOL.AVE) or len(layer.tops) != 1:
        raise UnsupportedLayerError("only MAX and AVE pooling with one top can be trained", layer=layer.name)
    pad = (0, 0) if p.global_pooling else _pair(p, "pad", ("pad_h", "pad_w"), 0)
    stride = (1, 1) if p.global_pooling else _pair(p, "stride", ("stride_h", "stride_w"), 1)
    ceil_mode = p.round_mode == POOL.CEIL

    def run(x, blobs):
        x = x[0]
        size = tuple(x.shape[2:])
        kernel = size if p.global_pooling else _pair(p, "kernel_size", ("kernel_h", "kernel_w"), None)
        out = pool_output(tuple(x.shape), kernel, stride, pad, ceil_mode)
        extra = [max(0, (o - 1) * s + k - n - q) for o, s, k, n, q in zip(out, stride, kernel, size, pad)]
        border = (pad[1], extra[1], pad[0], extra[0])
        if p.pool == POOL.MAX:
            padded = F.pad(x, border, value=float("-inf")) if any(border) else x
            return [F.max_pool2d(padded, kernel, stride)[:, :, :out[0], :out[1]]]
        padded = F.pad(x, border) if any(border) else x
        sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)[:, :, :out[0], :out[1]]
        divisor = np.outer(*(_window_sizes(o, n, k, s, q) for o, n, k, s, q in zip(out, size, kernel, stride, pad)))
        return [sums / torch.as_tensor(divisor, dtype=x.dtype, device=x.device)]
    return run


POOL = caffe_pb2.PoolingParameter

declare(
    LayerType("Pooling", shape=_pooling, export=pooling, channels=PASS_THROUGH,
              rewrite=NotApplicable("pooling keeps the channels and counts none"), train=Train(_pooling_op),
              tops=(1, 2),
              departures=(Departure("OpenCV's caffe.proto lacks round_mode: a FLOOR pooling fails to load",
                                    lambda layer: layer.param.pooling_param.round_mode == POOL.FLOOR),)),
    LayerType("SPP", shape=_spp, export=NotApplicable("no ONNX converter is written for SPP"), channels=PIN,
              rewrite=NotApplicable("its output mixes the pyramid levels (pinned)"),
              train=NotApplicable("no torch op is written for it yet")),
)
