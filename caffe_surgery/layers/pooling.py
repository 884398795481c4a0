"""Pooling with Caffe's output size and Caffe's AVE divisor (a MAX pool's second top is Caffe's mask);
ROI pooling (Faster R-CNN's ROIPooling, R-FCN's PSROIPooling); OpenCV's MaxUnpool and CropAndResize.

Caffe sizes the output with ceil (or floor) division, then drops a last window
that would start in the end padding; the inferred top shape says the result.
Each ONNX pool here gets explicit end padding that yields exactly that size, so
no ceil_mode convention is involved. Caffe's AVE divides by the window clipped to the padded input
(H + pad), so windows reaching into the extra ceil padding divide by less than
the kernel size: a constant correction map fixes those positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil, floor, prod

import numpy as np
from onnx import TensorProto

from .. import caffe_pb2
from ..caffe_pb2 import PoolingParameter
from ..export.context import LayerContext
from ..graph import Layer
from .channels import PASS_THROUGH, PIN, custom, pin_all
from .fork_params import fork_param
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
    is_max = p.pool == PoolingParameter.MAX
    if len(ctx.layer.tops) > 1 and p.global_pooling:
        raise ctx.unsupported("with a mask top and global_pooling")
    if p.global_pooling:
        ctx.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [ctx.bottom()], ctx.top())
        return
    h, w = pooling_axes(ctx)
    attrs = dict(kernel_shape=[h.kernel, w.kernel], strides=[h.stride, w.stride],
                 pads=[h.pad, w.pad, h.end_pad, w.end_pad])
    if is_max and len(ctx.layer.tops) > 1:
        _max_pool_with_mask(ctx, attrs)
        return
    if is_max:
        ctx.node("MaxPool", [ctx.bottom()], ctx.top(), **attrs)
        return
    correction = np.outer(h.ave_correction(), w.ave_correction())
    if np.all(correction == 1):
        ctx.node("AveragePool", [ctx.bottom()], ctx.top(), count_include_pad=1, **attrs)
        return
    pooled = ctx.node("AveragePool", [ctx.bottom()], count_include_pad=1, **attrs)
    ctx.node("Mul", [pooled, ctx.const(correction[None, None], "divisor_correction")], ctx.top())


def _max_pool_with_mask(ctx: LayerContext, attrs: dict) -> None:
    """MaxPool with its Indices; Caffe's mask is each maximum's index within its (H, W) plane, as a float
    (ONNX indexes the whole tensor: the index modulo H * W)."""
    indices = ctx.fresh("indices")
    ctx.multi("MaxPool", [ctx.bottom()], [ctx.top(0), indices], **attrs)
    plane = ctx.bottom_shape()[2] * ctx.bottom_shape()[3]
    in_plane = ctx.node("Mod", [indices, ctx.const(plane, "plane", np.int64)])
    ctx.node("Cast", [in_plane], ctx.top(1), to=TensorProto.FLOAT)


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


# ------------------------------------------------------------------ ROI pooling (Faster R-CNN, R-FCN)

def roi_pooling_param(layer: Layer) -> tuple[int, int, float]:
    """(pooled_h, pooled_w, spatial_scale) of Faster R-CNN's fork ``roi_pooling_param`` (defaults 0, 0, 1)."""
    p = fork_param(layer.param, "roi_pooling_param")
    pooled = p.get("pooled_h", 0), p.get("pooled_w", 0)
    if min(pooled) < 1:
        fail(f"ROIPooling needs pooled_h and pooled_w >= 1, got {pooled}")
    return pooled[0], pooled[1], p.get("spatial_scale", 1.0)


def psroi_pooling_param(layer: Layer) -> tuple[float, int, int]:
    """(spatial_scale, output_dim, group_size) of R-FCN's fork ``psroi_pooling_param`` (all required)."""
    p = fork_param(layer.param, "psroi_pooling_param")
    scale, output_dim, group = p.get("spatial_scale", 0.0), p.get("output_dim", 0), p.get("group_size", 0)
    if scale <= 0 or output_dim < 1 or group < 1:
        fail("PSROIPooling needs spatial_scale > 0, output_dim >= 1 and group_size >= 1, got "
             f"{scale}, {output_dim}, {group}")
    return scale, output_dim, group


def _roi_count(shape: Shape) -> int:
    """Rows of an ROI bottom: (K, 5), or (K, 5, 1, 1) as some Proposal forks give them."""
    if len(shape) < 2 or shape[1] != 5 or any(d != 1 for d in shape[2:]):
        fail(f"ROIs must be (K, 5) rows [batch, x1, y1, x2, y2], got {shape}")
    return shape[0]


def _roi_pooling_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(K, C, pooled_h, pooled_w)."""
    pooled_h, pooled_w, _ = roi_pooling_param(layer)
    if len(bottoms[0]) != 4:
        fail(f"ROIPooling needs a 4-D feature map, got {bottoms[0]}")
    return Rule([(_roi_count(bottoms[1]), bottoms[0][1], pooled_h, pooled_w)])


def _psroi_pooling_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(K, output_dim, group_size, group_size); the map holds output_dim * group_size^2 channels."""
    _, output_dim, group = psroi_pooling_param(layer)
    if len(bottoms[0]) != 4 or bottoms[0][1] != output_dim * group * group:
        fail(f"PSROIPooling needs a 4-D map of output_dim * group_size^2 = {output_dim * group * group} "
             f"channels, got {bottoms[0]}")
    return Rule([(_roi_count(bottoms[1]), output_dim, group, group)])


def _rois(ctx: LayerContext) -> str:
    return ctx.reshape(ctx.bottom(1), [ctx.bottom_shape(1)[0], 5], keeps_batch=True)


def roi_pooling(ctx: LayerContext) -> None:
    """ONNX's MaxRoiPool: Caffe's rounding of the ROI to the map, bins floor/ceil, empty bins 0."""
    pooled_h, pooled_w, scale = roi_pooling_param(ctx.layer)
    ctx.node("MaxRoiPool", [ctx.bottom(), _rois(ctx)], ctx.top(), pooled_shape=[pooled_h, pooled_w],
             spatial_scale=scale)


def psroi_pooling(ctx: LayerContext) -> None:
    """R-FCN's position-sensitive average: bin (gh, gw) of output channel d averages map channel
    (d * G + gh) * G + gw over the bin, read from per-channel integral images (CumSum) at the bin's
    corners (GatherND); an empty bin gives 0. The ROI is rounded (half away from zero), its end gets
    +1, then everything is scaled by spatial_scale, as R-FCN does."""
    scale, output_dim, group = psroi_pooling_param(ctx.layer)
    _, channels, height, width = ctx.bottom_shape()
    count = ctx.bottom_shape(1)[0]
    padded = ctx.node("Pad", [ctx.bottom(), ctx.ints([0, 0, 1, 1, 0, 0, 0, 0], "pads")])
    axis = ctx.ints([2], "h_axis"), ctx.ints([3], "w_axis")
    integral = ctx.node("CumSum", [ctx.node("CumSum", [padded, axis[0]]), axis[1]])
    rois = _rois(ctx)
    batch, x1, y1, x2, y2 = ctx.multi("Split", [rois, ctx.ints([1] * 5, "fields")],
                                      [ctx.fresh(k) for k in ("batch", "x1", "y1", "x2", "y2")], axis=1)
    corners = [_round_away(ctx, v) for v in (x1, y1, x2, y2)]
    start_w, start_h = (ctx.scaled(v, scale) for v in corners[:2])
    end_w, end_h = (ctx.scaled(ctx.shifted(v, 1.0), scale) for v in corners[2:])
    bins = np.arange(group, dtype=np.float32)
    h_lo, h_hi = _bin_edges(ctx, start_h, end_h, group, height, bins)  # (K, G) each
    w_lo, w_hi = _bin_edges(ctx, start_w, end_w, group, width, bins)
    rows_of_rois = ctx.node("Slice", [ctx.node("Shape", [rois]), ctx.ints([0], "first"), ctx.ints([1], "one_dim")])
    shape = ctx.node("Concat", [rows_of_rois, ctx.ints([output_dim, group, group], "grid")], axis=0)
    index = lambda value, dims: ctx.node("Expand", [ctx.reshape(value, dims, keeps_batch=True), shape])
    batch = index(ctx.node("Cast", [batch], to=7), [count, 1, 1, 1])
    channel = ctx.node("Expand", [ctx.const(np.arange(channels).reshape(1, output_dim, group, group),
                                            "channel_of_bin", np.int64), shape])
    rows = {edge: index(value, [count, 1, group, 1]) for edge, value in (("lo", h_lo), ("hi", h_hi))}
    cols = {edge: index(value, [count, 1, 1, group]) for edge, value in (("lo", w_lo), ("hi", w_hi))}

    def at(row: str, col: str) -> str:
        stacked = ctx.node("Concat", [ctx.unsqueeze(v, [4]) for v in (batch, channel, rows[row], cols[col])], axis=4)
        return ctx.node("GatherND", [integral, stacked])
    total = ctx.node("Add", [ctx.node("Sub", [at("hi", "hi"), at("lo", "hi")]),
                             ctx.node("Sub", [at("lo", "lo"), at("hi", "lo")])])
    zero = ctx.ints([0], "zero_i")
    area = ctx.node("Cast", [ctx.node("Mul", [ctx.node("Max", [ctx.node("Sub", [rows["hi"], rows["lo"]]), zero]),
                                              ctx.node("Max", [ctx.node("Sub", [cols["hi"], cols["lo"]]), zero])])],
                    to=1)
    one = ctx.const(1.0, "one")
    ctx.node("Where", [ctx.node("Greater", [area, ctx.const(0.0, "zero")]),
                       ctx.node("Div", [total, ctx.node("Max", [area, one])]), ctx.const(0.0, "empty")], ctx.top())


def _round_away(ctx: LayerContext, x: str) -> str:
    """C's round(): halves away from zero (ONNX's Round goes to even)."""
    return ctx.node("Mul", [ctx.node("Sign", [x]),
                            ctx.node("Floor", [ctx.shifted(ctx.node("Abs", [x]), 0.5)])])


def _bin_edges(ctx: LayerContext, start: str, end: str, group: int, size: int, bins: np.ndarray) -> tuple[str, str]:
    """floor/ceil bin edges along one axis, clipped to [0, size], as int64 (K, G)."""
    extent = ctx.node("Max", [ctx.node("Sub", [end, start]), ctx.const(0.1, "min_extent")])
    step = ctx.scaled(extent, 1.0 / group)
    low = ctx.node("Floor", [ctx.node("Add", [ctx.node("Mul", [ctx.const(bins, "bins"), step]), start])])
    high = ctx.node("Ceil", [ctx.node("Add", [ctx.node("Mul", [ctx.const(bins + 1, "bins_end"), step]), start])])
    bounds = ctx.const(0.0, "lowest"), ctx.const(float(size), f"size{size}")
    return tuple(ctx.node("Cast", [ctx.node("Clip", [v, *bounds])], to=7) for v in (low, high))


@custom("pools each feature channel over each ROI: carries the map's channels; the ROIs are pinned")
def _roi_channels(builder, layer, bottoms) -> None:
    builder.pin(bottoms[1], f"read by ROIPooling '{layer.name}' as ROI coordinates")
    builder.pass_through(layer, bottoms[0], "structure")


@custom("reads position-sensitive channel groups and ROI coordinates: pins both")
def _psroi_channels(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms, f"read by PSROIPooling '{layer.name}', whose bins each read their own "
            "channel (channel count fixed at output_dim * group_size^2) or its ROI coordinates",
            f"output of PSROIPooling '{layer.name}'")


# ------------------------------------------------------------------ OpenCV's MaxUnpool

UNPOOL_DEFAULTS = {"pool_k_h": 0, "pool_k_w": 0, "pool_stride_h": 0, "pool_stride_w": 0, "pool_pad_h": 0,
                   "pool_pad_w": 0}
"""The fields OpenCV's MaxUnpool reads from a Caffe layer's fork block (``unpool_param``): the geometry of
the max pool it undoes (all required there)."""


def _max_unpool_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N, C, (h - 1) * stride - 2 * pad + kernel, ...) from the pooled values and their mask (same shape)."""
    p = fork_param(layer.param, "unpool_param", UNPOOL_DEFAULTS)
    missing = [name for name in UNPOOL_DEFAULTS if not p.has(name)]
    if missing:
        fail(f"unpool_param needs {', '.join(missing)} (OpenCV requires every one)")
    pooled, mask = bottoms
    if len(pooled) != 4 or mask != pooled:
        fail(f"MaxUnpool needs a 4-D bottom and a mask of its shape, got {pooled} and {mask}")
    size = tuple((n - 1) * p[f"pool_stride_{a}"] - 2 * p[f"pool_pad_{a}"] + p[f"pool_k_{a}"]
                 for n, a in zip(pooled[2:], "hw"))
    if min(size) <= 0:
        fail(f"the unpooled size {size} must be positive")
    return Rule([pooled[:2] + size])


def max_unpool(ctx: LayerContext) -> None:
    """Zeros with each value written at its mask index in its output plane (ScatterElements); any batch
    (OpenCV runs one image)."""
    n, c, h, w = ctx.bottom_shape()
    out = ctx.top_shape()
    flat = [n, c, h * w]
    values = ctx.reshape(ctx.bottom(0), flat, keeps_batch=True)
    where = ctx.node("Cast", [ctx.reshape(ctx.bottom(1), flat, keeps_batch=True)], to=TensorProto.INT64)
    zeros = ctx.node("ConstantOfShape", [ctx.batch_channels_then(ctx.bottom(), [out[2] * out[3]])])
    scattered = ctx.node("ScatterElements", [zeros, where, values], axis=2)
    ctx.reshape(scattered, out, keeps_batch=True, out=ctx.top())


@custom("carries the channels its values and mask share (couples the two)")
def _max_unpool_channels(builder, layer, bottoms) -> None:
    builder.merge(layer, bottoms)


def _max_unpool_op(layer, bottoms, phase):
    import torch
    (n, c, h, w), = bottoms[:1]
    out = _max_unpool_shape(layer, bottoms).tops[0]

    def run(x, blobs):
        values, mask = x[0].reshape(n, c, h * w), x[1].reshape(n, c, h * w).long()
        plane = torch.zeros(n, c, out[2] * out[3], dtype=values.dtype, device=values.device)
        return [plane.scatter(2, mask, values).reshape(out)]
    return run


# ------------------------------------------------------------------ OpenCV's CropAndResize


def _crop_size(layer: Layer) -> tuple[int, int]:
    p = fork_param(layer.param, "crop_and_resize_param", {"height": 0, "width": 0})
    if p["height"] < 2 or p["width"] < 2:
        fail(f"crop_and_resize_param needs height and width of at least 2 (OpenCV divides by size - 1), "
             f"got {p['height']}x{p['width']}")
    return p["height"], p["width"]


def _crop_and_resize_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(R, C, height, width): one crop per box row (R rows of 7: image, label, score, x1, y1, x2, y2)."""
    image, boxes = bottoms
    size = _crop_size(layer)
    if len(image) != 4 or image[0] != 1:
        fail(f"CropAndResize needs one (1, C, H, W) image (OpenCV runs one), got {image}")
    if not boxes or boxes[-1] != 7:
        fail(f"CropAndResize needs box rows of 7 values, got {boxes}")
    return Rule([(prod(boxes[:-1]), image[1], *size)])


def crop_and_resize(ctx: LayerContext) -> None:
    """TensorFlow's crop_and_resize: output (i, j) samples (y1 + i (y2 - y1) / (h - 1), x1 + j ...) of the
    image bilinearly (normalized corners, H - 1 and W - 1 the last pixel): a GridSample with align_corners
    whose grid is 2 * that - 1, over the image repeated once per box. Corners outside [0, 1] sample the
    border here; OpenCV reads outside its image there (no result to follow)."""
    if ctx.builder.opset < 16:
        raise ctx.unsupported(f"in opset {ctx.builder.opset} (GridSample needs 16)")
    if ctx.builder.dynamic_batch:
        ctx.batch_dependent("CropAndResize crops one image (OpenCV runs no other batch)")
    rows, channels, height, width = ctx.top_shape()
    boxes = ctx.node("Reshape", [ctx.bottom(1), ctx.ints([rows, 7], "rows")])

    def column(index: int) -> str:
        return ctx.node("Slice", [boxes, ctx.ints([index], "start"), ctx.ints([index + 1], "end"),
                                  ctx.ints([1], "axis")])

    def grid_axis(low: int, high: int, size: int) -> str:
        start, end = column(low), column(high)
        steps = ctx.const((np.arange(size) / (size - 1))[None], "steps")
        along = ctx.node("Add", [start, ctx.node("Mul", [ctx.node("Sub", [end, start]), steps])])
        return ctx.node("Sub", [ctx.node("Mul", [along, ctx.const(2.0, "two")]), ctx.const(1.0, "one")])
    grid_shape = ctx.ints([rows, height, width, 1], "grid_shape")
    xs = ctx.node("Expand", [ctx.unsqueeze(grid_axis(3, 5, width), [1, 3]), grid_shape])
    ys = ctx.node("Expand", [ctx.unsqueeze(grid_axis(4, 6, height), [2, 3]), grid_shape])
    grid = ctx.node("Concat", [xs, ys], axis=3)
    image = ctx.node("Expand", [ctx.bottom(0), ctx.ints([rows, 1, 1, 1], "per_box")])
    ctx.node("GridSample", [image, grid], ctx.top(), mode="linear" if ctx.builder.opset >= 20 else "bilinear",
             padding_mode="border", align_corners=1)


@custom("carries the image's channels (one crop per box); pins the boxes it reads")
def _crop_and_resize_channels(builder, layer, bottoms) -> None:
    builder.pin(bottoms[1], f"read by CropAndResize '{layer.name}' as box coordinates")
    builder.pass_through(layer, bottoms[0], "structure")


def _crop_and_resize_op(layer, bottoms, phase):
    import torch
    import torch.nn.functional as F
    rows, _, height, width = _crop_and_resize_shape(layer, bottoms).tops[0]

    def run(x, blobs):
        boxes = x[1].reshape(rows, 7)
        steps_x = torch.linspace(0, 1, width, dtype=x[0].dtype)
        steps_y = torch.linspace(0, 1, height, dtype=x[0].dtype)
        gx = 2 * (boxes[:, 3:4] + (boxes[:, 5:6] - boxes[:, 3:4]) * steps_x) - 1
        gy = 2 * (boxes[:, 4:5] + (boxes[:, 6:7] - boxes[:, 4:5]) * steps_y) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return [F.grid_sample(x[0].expand(rows, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                              align_corners=True)]
    return run


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
    LayerType("ROIPooling", shape=_roi_pooling_shape, export=roi_pooling, channels=_roi_channels,
              rewrite=NotApplicable("ROI pooling keeps the channels and counts none"),
              train=NotApplicable("no torch op is written for ROI pooling"), bottoms=2),
    LayerType("PSROIPooling", shape=_psroi_pooling_shape, export=psroi_pooling, channels=_psroi_channels,
              rewrite=NotApplicable("its channels are pinned and it has no blobs"),
              train=NotApplicable("no torch op is written for position-sensitive ROI pooling"), bottoms=2),
    LayerType("MaxUnpool", shape=_max_unpool_shape, export=max_unpool, channels=_max_unpool_channels,
              rewrite=NotApplicable("it has no blobs and its params count no channels"),
              train=Train(_max_unpool_op), bottoms=2),
    LayerType("CropAndResize", shape=_crop_and_resize_shape, export=crop_and_resize,
              channels=_crop_and_resize_channels, rewrite=NotApplicable("it has no blobs and counts no channels"),
              train=Train(_crop_and_resize_op), bottoms=2),
)
