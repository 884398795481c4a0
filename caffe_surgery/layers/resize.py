"""Spatial resizing of fork layers: darknet2caffe's Upsample (nearest neighbour by an integer scale) and
PSPNet/DeepLab's Interp (align-corners bilinear to a size from height/width, zoom or shrink factors).

Caffe's Interp (PSPNet's interp_layer): the input is first cut to its effective size
``H + pad_beg + pad_end`` starting at row/column ``-pad_beg`` (the forks use pads <= 0 to crop; positive
ones read outside the input there, refused here), then the output size is, checked in this order:
shrink_factor alone ``(H_eff - 1) / shrink + 1``; zoom_factor alone ``H_eff + (H_eff - 1) * (zoom - 1)``;
height and width as given; both factors: shrink, then zoom. Each output row h2 samples input row
``h2 * (H_eff - 1) / (H_out - 1)`` (0 when H_out is 1) bilinearly: align-corners interpolation.
"""
from __future__ import annotations

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
    batch_channels = ctx.node("Slice", [ctx.node("Shape", [source]), ctx.ints([0], "from"), ctx.ints([2], "to")])
    sizes = ctx.node("Concat", [batch_channels, ctx.ints(list(ctx.top_shape()[2:]), "size")], axis=0)
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


# ------------------------------------------------------------------ declarations

_SPATIAL_ONLY = NotApplicable("nothing in its params counts channels")

declare(
    LayerType("Upsample", shape=_upsample_shape, export=upsample, channels=PASS_THROUGH, rewrite=_SPATIAL_ONLY,
              train=Train(_upsample_op),
              departures=(Departure("OpenCV 4.14 has no Upsample layer (readNetFromCaffe cannot create it)"),)),
    LayerType("Interp", shape=_interp_shape, export=interp, channels=PASS_THROUGH, rewrite=_SPATIAL_ONLY,
              train=Train(_interp_op),
              departures=(Departure("OpenCV's Interp ignores shrink_factor, pad_beg and pad_end", _interp_departs),)),
)
