"""Spatial resizing of fork layers: darknet2caffe's Upsample (nearest neighbour by an integer scale),
PSPNet/DeepLab's Interp (align-corners bilinear to a size from height/width, zoom or shrink factors)
and OpenCV's Resize (nearest or bilinear, to a size, by zoom factors or to the size of a second bottom).

Caffe's Interp (PSPNet's interp_layer): the input is first cut to its effective size
``H + pad_beg + pad_end`` starting at row/column ``-pad_beg`` (the forks use pads <= 0 to crop; positive
ones read outside the input there, refused here), then the output size is, checked in this order:
shrink_factor alone ``(H_eff - 1) / shrink + 1``; zoom_factor alone ``H_eff + (H_eff - 1) * (zoom - 1)``;
height and width as given; both factors: shrink, then zoom. Each output row h2 samples input row
``h2 * (H_eff - 1) / (H_out - 1)`` (0 when H_out is 1) bilinearly: align-corners interpolation.
"""
from __future__ import annotations

import numpy as np

from ..export.context import LayerContext
from ..graph import Layer
from .channels import PASS_THROUGH
from .fork_params import ForkParam, fork_param
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail

INTERP_DEFAULTS = {"height": 0, "width": 0, "zoom_factor": 1, "shrink_factor": 1, "pad_beg": 0, "pad_end": 0}
"""The fields of the forks' InterpParameter with their defaults."""


def interp_param(layer: Layer) -> ForkParam:
    """The layer's ``interp_param`` (a fork message the schema lacks, read from its text)."""
    return fork_param(layer.param, "interp_param", INTERP_DEFAULTS)


def _four_axes(shape: Shape, what: str) -> None:
    if len(shape) != 4:
        fail(f"{what} needs a 4-D (N, C, H, W) bottom, got {shape}")


# ------------------------------------------------------------------ Upsample


def _upsample_scale(layer: Layer) -> int:
    scale = layer.param.upsample_param.scale
    if scale < 1:
        fail(f"upsample_param.scale must be at least 1, got {scale}")
    return scale


def _upsample_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N, C, H * scale, W * scale)."""
    shape = bottoms[0]
    _four_axes(shape, "Upsample")
    scale = _upsample_scale(layer)
    return Rule([shape[:2] + (shape[2] * scale, shape[3] * scale)])


def upsample(ctx: LayerContext) -> None:
    """Nearest neighbour: output (y, x) reads input (y // scale, x // scale) -- ONNX Resize, asymmetric, floor."""
    scale = float(ctx.param.upsample_param.scale)
    ctx.node("Resize", [ctx.bottom(), "", ctx.const([1.0, 1.0, scale, scale], "scales")], ctx.top(),
             mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _upsample_op(layer, bottoms, phase):
    import torch.nn.functional as F
    scale = _upsample_scale(layer)
    return lambda x, blobs: [F.interpolate(x[0], scale_factor=scale, mode="nearest")]


# ------------------------------------------------------------------ Interp


def interp_geometry(layer: Layer, shape: Shape) -> tuple[int, int, int, int, int]:
    """Caffe's Interp geometry for a bottom ``shape``: (pad_beg, H_eff, W_eff, H_out, W_out)."""
    p = interp_param(layer)
    if p["pad_beg"] > 0 or p["pad_end"] > 0:
        fail(f"pad_beg {p['pad_beg']} and pad_end {p['pad_end']} must not be positive (Caffe's Interp reads "
             "outside the input there)")
    height = shape[2] + p["pad_beg"] + p["pad_end"]
    width = shape[3] + p["pad_beg"] + p["pad_end"]
    if height <= 0 or width <= 0:
        fail(f"pad_beg {p['pad_beg']} and pad_end {p['pad_end']} leave nothing of the {shape[2]}x{shape[3]} input")
    shrink, zoom = p["shrink_factor"], p["zoom_factor"]
    if p.has("shrink_factor") and shrink < 1 or p.has("zoom_factor") and zoom < 1:
        fail(f"shrink_factor {shrink} and zoom_factor {zoom} must be at least 1")
    if p.has("shrink_factor") and not p.has("zoom_factor"):
        out = ((height - 1) // shrink + 1, (width - 1) // shrink + 1)
    elif p.has("zoom_factor") and not p.has("shrink_factor"):
        out = (height + (height - 1) * (zoom - 1), width + (width - 1) * (zoom - 1))
    elif p.has("height") and p.has("width"):
        out = (p["height"], p["width"])
    elif p.has("shrink_factor") and p.has("zoom_factor"):
        h, w = (height - 1) // shrink + 1, (width - 1) // shrink + 1
        out = (h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1))
    else:
        fail("interp_param needs height and width, zoom_factor or shrink_factor")
    if min(out) <= 0:
        fail(f"output size {out} must be positive")
    return p["pad_beg"], height, width, *out


def _interp_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    shape = bottoms[0]
    _four_axes(shape, "Interp")
    _, _, _, out_h, out_w = interp_geometry(layer, shape)
    return Rule([shape[:2] + (out_h, out_w)])


def _cropped(ctx: LayerContext) -> str:
    """The bottom cut to Caffe's effective input (negative pads crop)."""
    pad_beg, height, width, _, _ = interp_geometry(ctx.layer, ctx.bottom_shape())
    if (height, width) == tuple(ctx.bottom_shape()[2:]):
        return ctx.bottom()
    start = -pad_beg
    return ctx.node("Slice", [ctx.bottom(), ctx.ints([start, start], "starts"),
                              ctx.ints([start + height, start + width], "ends"), ctx.ints([2, 3], "axes")])


def interp(ctx: LayerContext) -> None:
    """Crop to the effective input, then ONNX Resize to the output size, linear with align_corners
    (the sizes take N and C from the input, so a dynamic batch keeps its batch)."""
    source = _cropped(ctx)
    sizes = ctx.batch_channels_then(source, ctx.top_shape()[2:])
    ctx.node("Resize", [source, "", "", sizes], ctx.top(), mode="linear",
             coordinate_transformation_mode="align_corners")


def _interp_op(layer, bottoms, phase):
    import torch.nn.functional as F
    pad_beg, height, width, out_h, out_w = interp_geometry(layer, bottoms[0])
    start = -pad_beg

    def run(x, blobs):
        cropped = x[0][:, :, start:start + height, start:start + width]
        return [F.interpolate(cropped, size=(out_h, out_w), mode="bilinear", align_corners=True)]
    return run


def _interp_departs(layer: Layer) -> bool:
    p = interp_param(layer)
    return p.has("shrink_factor") or p["pad_beg"] != 0 or p["pad_end"] != 0


# ------------------------------------------------------------------ Resize

RESIZE_DEFAULTS = {"interpolation": "", "height": 0, "width": 0, "zoom_factor": 0.0, "zoom_factor_x": 0.0,
                   "zoom_factor_y": 0.0, "align_corners": 0, "half_pixel_centers": 0}
"""The fields OpenCV's Resize layer reads from a Caffe layer's fork block (``resize_param``), with defaults.
OpenCV reads a fork flag with atoi, so ``align_corners: true`` is false there: flags are 0/1 here."""

_RESIZE_MODES = {  # (interpolation, align_corners, half_pixel_centers) -> ONNX Resize attributes
    ("nearest", 0, 0): dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    ("nearest", 1, 0): dict(mode="nearest", coordinate_transformation_mode="align_corners",
                            nearest_mode="round_prefer_ceil"),
    ("nearest", 0, 1): dict(mode="nearest", coordinate_transformation_mode="half_pixel",
                            nearest_mode="round_prefer_ceil"),
    ("bilinear", 0, 0): dict(mode="linear", coordinate_transformation_mode="asymmetric"),
    ("bilinear", 1, 0): dict(mode="linear", coordinate_transformation_mode="align_corners"),
    ("bilinear", 0, 1): dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    ("bilinear", 1, 1): dict(mode="linear", coordinate_transformation_mode="half_pixel"),
}
"""OpenCV's sampling, probed against onnxruntime: bilinear with both flags samples at half pixels;
opencv_linear is cv::resize's INTER_LINEAR (half pixels) whatever the flags say."""


def resize_param(layer: Layer) -> ForkParam:
    """The layer's ``resize_param`` (a fork block the schema lacks, read from its text)."""
    return fork_param(layer.param, "resize_param", RESIZE_DEFAULTS)


def resize_mode(layer: Layer) -> dict:
    """The ONNX Resize attributes reproducing OpenCV's sampling for this layer."""
    p = resize_param(layer)
    interpolation = p["interpolation"]
    if interpolation == "opencv_linear":
        return _RESIZE_MODES[("bilinear", 0, 1)]
    flags = (p["align_corners"], p["half_pixel_centers"])
    if interpolation not in ("nearest", "bilinear"):
        fail(f"resize_param.interpolation must be nearest, bilinear or opencv_linear, got {interpolation!r}")
    if not set(flags) <= {0, 1}:
        fail(f"resize_param.align_corners and half_pixel_centers must be 0 or 1, got {flags}")
    if (interpolation, *flags) not in _RESIZE_MODES:
        fail("nearest Resize with both align_corners and half_pixel_centers samples unlike any ONNX mode")
    return _RESIZE_MODES[(interpolation, *flags)]


def _resize_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N, C, H', W'): the second bottom's H and W, else height/width, else floor(H * zoom), floor(W * zoom)."""
    shape = bottoms[0]
    _four_axes(shape, "Resize")
    resize_mode(layer)
    p = resize_param(layer)
    if len(bottoms) == 2:
        _four_axes(bottoms[1], "Resize's size bottom")
        return Rule([shape[:2] + tuple(bottoms[1][2:])])
    zoom_y = p["zoom_factor_y"] or p["zoom_factor"]
    zoom_x = p["zoom_factor_x"] or p["zoom_factor"]
    if zoom_x > 0 and zoom_y > 0:
        size = (int(shape[2] * zoom_y), int(shape[3] * zoom_x))
    elif p["height"] > 0 and p["width"] > 0:
        size = (p["height"], p["width"])
    else:
        fail("resize_param needs height and width, zoom_factor, or zoom_factor_x and zoom_factor_y")
    if min(size) <= 0:
        fail(f"output size {size} must be positive")
    return Rule([shape[:2] + size])


def resize(ctx: LayerContext) -> None:
    """ONNX Resize to the top's H and W (N and C from the input, so a dynamic batch keeps its batch)."""
    sizes = ctx.batch_channels_then(ctx.bottom(), ctx.top_shape()[2:])
    ctx.node("Resize", [ctx.bottom(), "", "", sizes], ctx.top(), **resize_mode(ctx.layer))


def _sample_points(attrs: dict, size_in: int, size_out: int):
    """Per output index along one axis: the two input indices and the weight of the second (ONNX's rules)."""
    out = np.arange(size_out, dtype=np.float64)
    transform = attrs["coordinate_transformation_mode"]
    if transform == "align_corners":
        source = out * (size_in - 1) / (size_out - 1) if size_out > 1 else out * 0
    elif transform == "half_pixel":
        source = (out + 0.5) * size_in / size_out - 0.5
    else:
        source = out * size_in / size_out
    if attrs["mode"] == "nearest":
        index = np.floor(source) if attrs["nearest_mode"] == "floor" else np.floor(source + 0.5)
        index = np.clip(index, 0, size_in - 1).astype(np.int64)
        return index, index, np.zeros(size_out)
    source = np.clip(source, 0, size_in - 1)
    low = np.floor(source).astype(np.int64)
    return low, np.minimum(low + 1, size_in - 1), source - low


def _resize_op(layer, bottoms, phase):
    import torch
    attrs = resize_mode(layer)
    (_, _, out_h, out_w), = _resize_shape(layer, bottoms).tops
    axes = [(axis, *(torch.as_tensor(a) for a in _sample_points(attrs, bottoms[0][axis], size)))
            for axis, size in ((2, out_h), (3, out_w))]

    def run(x, blobs):
        y = x[0]
        for axis, low, high, weight in axes:
            shape = [1] * y.dim()
            shape[axis] = -1
            weight = weight.to(y.dtype).reshape(shape)
            y = y.index_select(axis, low) * (1 - weight) + y.index_select(axis, high) * weight
        return [y]
    return run


# ------------------------------------------------------------------ declarations

_SPATIAL_ONLY = NotApplicable("nothing in its params counts channels")

declare(
    LayerType("Upsample", shape=_upsample_shape, export=upsample, channels=PASS_THROUGH, rewrite=_SPATIAL_ONLY,
              train=Train(_upsample_op),
              departures=(Departure("OpenCV 4.14 has no Upsample layer (readNetFromCaffe cannot create it)"),)),
    LayerType("Interp", shape=_interp_shape, export=interp, channels=PASS_THROUGH, rewrite=_SPATIAL_ONLY,
              train=Train(_interp_op),
              departures=(Departure("OpenCV's Interp ignores shrink_factor, pad_beg and pad_end", _interp_departs),)),
    LayerType("Resize", shape=_resize_shape, export=resize, channels=PASS_THROUGH, rewrite=_SPATIAL_ONLY,
              train=Train(_resize_op), bottoms=(1, 2)),
)
