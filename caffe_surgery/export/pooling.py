"""Pooling with Caffe's output size and Caffe's AVE divisor.

Caffe sizes the output with ceil (or floor) division, then drops a last window
that would start in the end padding; the inferred top shape says the result.
Each ONNX pool here gets explicit end padding that yields exactly that size, so
no ceil_mode convention is involved. Caffe's AVE divides by the window clipped to the padded input
(H + pad), so windows reaching into the extra ceil padding divide by less than
the kernel size: a constant correction map fixes those positions.
"""
from dataclasses import dataclass

import numpy as np

from ..caffe_pb2 import PoolingParameter
from .context import LayerContext
from .registry import converter


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


def _pair(p, name: str, common: str) -> tuple[int, int]:
    """Caffe's (h, w) of a pooling setting: the _h/_w fields or the common one."""
    if p.HasField(f"{name}_h") or p.HasField(f"{name}_w"):
        return getattr(p, f"{name}_h"), getattr(p, f"{name}_w")
    return getattr(p, common), getattr(p, common)


def pooling_axes(ctx: LayerContext) -> tuple[Axis, Axis]:
    """The (h, w) geometry of a non-global Pooling layer."""
    p = ctx.param.pooling_param
    kernel, stride, pad = _pair(p, "kernel", "kernel_size"), _pair(p, "stride", "stride"), _pair(p, "pad", "pad")
    axes = tuple(Axis(*values) for values in zip(ctx.bottom_shape()[2:], kernel, stride, pad, ctx.top_shape()[2:]))
    for axis in axes:
        if (axis.pooled - 1) * axis.stride - axis.pad >= axis.size:
            raise ctx.unsupported("with a window entirely outside the input")
    return axes


@converter("Pooling")
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
