"""FlowNet's fork layers (lmb-freiburg's Caffe) as OpenCV's Caffe importer creates them: Correlation, Accum,
FlowWarp and DataAugmentation. Their ``*_param`` messages are fork params the schema lacks (``fork_params``).

``Correlation`` (``correlation_param { pad kernel_size max_displacement stride_1 stride_2 correlation_type }``,
two bottoms of one shape): both bottoms are zero-padded by ``pad``; with radius ``R = max_displacement //
stride_2``, top channel ``(p + R) * (2R + 1) + (o + R)`` at (y, x) is the mean over the k x k kernel whose
top-left corner is ``(y * stride_1 + max_displacement, x * stride_1 + max_displacement)`` and over the
channels of ``a * b`` (MULTIPLY) or ``|a - b|`` (SUBTRACT), ``a`` from bottom 0 there, ``b`` from bottom 1
displaced by ``(p * stride_2, o * stride_2)`` rows and columns. Top size ``ceil((H + 2 pad - 2 border) /
stride_1)``, ``border = max_displacement + (k - 1) / 2``. Its MACs are those dot products.

``Accum`` (``accum_param { top_height top_width size_divisible_by have_reference }``): every bottom (all but
the last with ``have_reference``, whose size is then the top's) is resized bilinearly with aligned corners
to the top size and the results are concatenated along the channels. Without a reference the size is the
largest bottom height and width, rounded up to a multiple of ``size_divisible_by`` when given, else
``top_height``/``top_width`` when both exceed it.

``FlowWarp`` (``flow_warp_param { fill_value }``): output (y, x) samples the image (bottom 0) bilinearly at
``(x + flow_x, y + flow_y)`` (the flow, bottom 1, has 2 channels); the right and bottom neighbours clamp at
the last column and row; a point outside ``[0, W) x [0, H)`` gets the fill, 0 (ZERO) or NaN (NOT_A_NUMBER).

``DataAugmentation`` in a deploy net (TEST phase, no ``augment_during_test``): no random transform, only
(with ``crop_width`` and ``crop_height``) the centred crop the fork samples bilinearly at ``(x + (W - cw) / 2,
y + (H - ch) / 2)``, clamped to ``[0, W - 1.05]`` (so its last column mixes in 5 % of the one before), then
the mean subtraction: with ``recompute_mean`` R > 0 its blobs hold the iteration count, the per-pixel mean
(1, C, ch, cw) and the per-channel mean (1, C, 1, 1); the forward is iteration ``count + 1``: while that is at
most R the fork first folds the batch's mean into the stored one (from a count of 0 the mean is the batch's
own), else the stored mean is used. The mean subtracted is per pixel (``mean_per_pixel``, default true) or
per channel. With R = 0, three ``mean`` values (not per pixel) are subtracted per channel, else nothing.

Where OpenCV 4.x departs from the fork, the declarations say so (``departures``). Beyond those, OpenCV gets
batches larger than 1 wrong for two of them, which a layer cannot show: its Accum writes each bottom's part
as one block as if the batch were 1, and its DataAugmentation scales its input by 1 / batch in place and
subtracts a per-channel mean from the first image only; comparisons with OpenCV use batch 1.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..export.context import LayerContext, channel_broadcast
from ..graph import TRAIN, Layer
from ..textproto import preserved_texts
from .channels import custom, pin_all
from .fork_params import ForkParam, fork_param
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail

CORRELATION_DEFAULTS = {"pad": 0, "kernel_size": 0, "max_displacement": 0, "stride_1": 1, "stride_2": 1,
                        "single_direction": 0, "do_abs": False, "correlation_type": "MULTIPLY"}
ACCUM_DEFAULTS = {"top_height": 0, "top_width": 0, "size_divisible_by": 0, "have_reference": False}
FLOW_WARP_DEFAULTS = {"fill_value": "ZERO"}
"""The fields of FlowNet's CorrelationParameter, AccumParameter and FlowWarpParameter with their defaults."""

GRID_SAMPLE_OPSET = 16
"""FlowWarp is exported as ONNX GridSample, which needs opset 16."""


def _four_axes(shape: Shape, what: str) -> None:
    if len(shape) != 4:
        fail(f"{what} needs 4-D (N, C, H, W) bottoms, got {shape}")


# ------------------------------------------------------------------ Correlation


def correlation_param(layer: Layer) -> ForkParam:
    """The layer's ``correlation_param`` (FlowNet's fork message), checked as the fork checks it."""
    p = fork_param(layer.param, "correlation_param", CORRELATION_DEFAULTS)
    if not p.has("kernel_size") or not p.has("max_displacement"):
        fail("correlation_param needs kernel_size and max_displacement")
    if p["kernel_size"] % 2 == 0:
        fail(f"correlation_param.kernel_size must be odd, got {p['kernel_size']}")
    if p["stride_1"] < 1 or p["stride_2"] < 1:
        fail(f"correlation_param strides must be positive, got {p['stride_1']} and {p['stride_2']}")
    if p["correlation_type"] not in ("MULTIPLY", "SUBTRACT"):
        fail(f"correlation_param.correlation_type must be MULTIPLY or SUBTRACT, got {p['correlation_type']}")
    return p


def correlation_geometry(layer: Layer, shape: Shape) -> tuple[int, int, int, int]:
    """(grid radius R, top channels (2R + 1)^2, top height, top width) for bottoms of ``shape``."""
    p = correlation_param(layer)
    border = p["max_displacement"] + (p["kernel_size"] - 1) // 2
    radius = p["max_displacement"] // p["stride_2"]
    height, width = (math.ceil((size + 2 * p["pad"] - 2 * border) / p["stride_1"]) for size in shape[2:])
    if height < 1 or width < 1:
        fail(f"kernel and displacement do not fit in the {shape[2]}x{shape[3]} bottom padded by {p['pad']}")
    return radius, (2 * radius + 1) ** 2, height, width


def _correlation_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    first, second = bottoms
    _four_axes(first, "Correlation")
    if first != second:
        fail(f"Correlation needs two bottoms of one shape, got {first} and {second}")
    _, channels, height, width = correlation_geometry(layer, first)
    kernel = correlation_param(layer)["kernel_size"]
    macs = first[0] * channels * height * width * kernel ** 2 * first[1]  # one dot product per top value
    return Rule([(first[0], channels, height, width)], macs=macs)


def _displacements(layer: Layer) -> list[tuple[int, int]]:
    """The (row, column) offsets of bottom 1 in top channel order."""
    p = correlation_param(layer)
    radius = p["max_displacement"] // p["stride_2"]
    steps = range(-radius, radius + 1)
    return [(dy * p["stride_2"], dx * p["stride_2"]) for dy in steps for dx in steps]


def _correlation_window(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    """(first row/column, rows, columns) of the padded bottom 0 the kernels cover."""
    p = correlation_param(layer)
    _, _, height, width = correlation_geometry(layer, shape)
    k, stride = p["kernel_size"], p["stride_1"]
    return p["max_displacement"], (height - 1) * stride + k, (width - 1) * stride + k


def _correlation(ctx: LayerContext) -> None:
    """Per displacement: the window of bottom 0 times (or minus) the displaced window of bottom 1, summed over
    the channels; the maps are concatenated, then averaged over each kernel by AveragePool and divided by C."""
    p = correlation_param(ctx.layer)
    if p["do_abs"] or p["single_direction"]:
        raise ctx.unsupported("with do_abs or single_direction (Correlation1D's fields)")
    shape = ctx.bottom_shape()
    pad = p["pad"]
    padded = [ctx.node("Pad", [name, ctx.ints([0, 0, pad, pad, 0, 0, pad, pad], "pads")]) if pad else name
              for name in ctx.bottoms()]
    start, rows, columns = _correlation_window(ctx.layer, shape)
    axes = ctx.ints([2, 3], "axes")
    anchor = ctx.node("Slice", [padded[0], ctx.ints([start, start], "starts"),
                                ctx.ints([start + rows, start + columns], "ends"), axes])
    maps = []
    for dy, dx in _displacements(ctx.layer):
        moved = ctx.node("Slice", [padded[1], ctx.ints([start + dy, start + dx], "starts"),
                                   ctx.ints([start + dy + rows, start + dx + columns], "ends"), axes])
        if p["correlation_type"] == "MULTIPLY":
            paired = ctx.node("Mul", [anchor, moved])
        else:
            paired = ctx.node("Abs", [ctx.node("Sub", [anchor, moved])])
        maps.append(ctx.reduce("ReduceSum", paired, [1], keepdims=True))
    stacked = ctx.node("Concat", maps, axis=1) if len(maps) > 1 else maps[0]
    k = p["kernel_size"]
    pooled = ctx.node("AveragePool", [stacked], kernel_shape=[k, k], strides=[p["stride_1"]] * 2)
    ctx.scaled(pooled, 1.0 / shape[1], out=ctx.top(), hint="per_channel")


def _correlation_op(layer, bottoms, phase):
    """The same sums in torch (differentiable in both bottoms)."""
    import torch
    import torch.nn.functional as F
    p = correlation_param(layer)
    start, rows, columns = _correlation_window(layer, bottoms[0])
    pad, k, channels = p["pad"], p["kernel_size"], bottoms[0][1]
    offsets = _displacements(layer)
    multiply = p["correlation_type"] == "MULTIPLY"

    def run(x, blobs):
        first, second = (F.pad(b, (pad,) * 4) for b in x)
        anchor = first[:, :, start:start + rows, start:start + columns]
        maps = []
        for dy, dx in offsets:
            moved = second[:, :, start + dy:start + dy + rows, start + dx:start + dx + columns]
            maps.append((anchor * moved if multiply else (anchor - moved).abs()).sum(1, keepdim=True))
        return [F.avg_pool2d(torch.cat(maps, 1), k, p["stride_1"]) / channels]
    return run


@custom("averages products over all the channels of both bottoms (their count divides the sum): pins them")
def _correlation_channels(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms, f"read by Correlation '{layer.name}', which averages over all its channels",
            f"output of Correlation '{layer.name}' (one channel per displacement)")


# ------------------------------------------------------------------ Accum


def accum_param(layer: Layer) -> ForkParam:
    """The layer's ``accum_param`` (FlowNet's fork message)."""
    return fork_param(layer.param, "accum_param", ACCUM_DEFAULTS)


def accumulated(layer: Layer) -> int:
    """How many bottoms Accum resizes and concatenates (all but the reference)."""
    return len(layer.bottoms) - bool(accum_param(layer)["have_reference"])


def accum_size(layer: Layer, bottoms: list[Shape]) -> tuple[int, int]:
    """The fork's top (height, width) for bottoms of these shapes."""
    p = accum_param(layer)
    if p["have_reference"]:
        return bottoms[-1][2], bottoms[-1][3]
    height, width = max(s[2] for s in bottoms), max(s[3] for s in bottoms)
    if p["size_divisible_by"]:
        divisor = p["size_divisible_by"]
        wanted = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
    else:
        wanted = (p["top_height"], p["top_width"])
    return wanted if wanted[0] > height and wanted[1] > width else (height, width)


def _accum_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    for shape in bottoms:
        _four_axes(shape, "Accum")
        if shape[0] != bottoms[0][0]:
            fail(f"Accum needs one batch size in all bottoms, got {[s[0] for s in bottoms]}")
    if accum_param(layer)["have_reference"] and len(bottoms) < 2:
        fail("Accum with have_reference needs a bottom to accumulate and the reference")
    channels = sum(shape[1] for shape in bottoms[:accumulated(layer)])
    return Rule([(bottoms[0][0], channels) + accum_size(layer, bottoms)])


def resized_align_corners(ctx: LayerContext, x: str, size: tuple[int, int]) -> str:
    """``x`` resized bilinearly with aligned corners to (height, width), its batch and channels kept."""
    batch_channels = ctx.node("Slice", [ctx.node("Shape", [x]), ctx.ints([0], "from"), ctx.ints([2], "to")])
    sizes = ctx.node("Concat", [batch_channels, ctx.ints(list(size), "size")], axis=0)
    return ctx.node("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="align_corners")


def _accum(ctx: LayerContext) -> None:
    """Resize each accumulated bottom to the top size (none when it has it), then Concat on the channels."""
    size = tuple(ctx.top_shape()[2:])
    parts = [name if tuple(ctx.bottom_shape(i)[2:]) == size else resized_align_corners(ctx, name, size)
             for i, name in enumerate(ctx.bottoms()[:accumulated(ctx.layer)])]
    ctx.node("Concat", parts, ctx.top(), axis=1)


def _accum_op(layer, bottoms, phase):
    import torch
    import torch.nn.functional as F
    size = accum_size(layer, bottoms)
    count = accumulated(layer)

    def run(x, blobs):
        parts = [b if tuple(b.shape[2:]) == size else F.interpolate(b, size=size, mode="bilinear", align_corners=True)
                 for b in x[:count]]
        return [torch.cat(parts, 1)]
    return run


@custom("concatenates its resized bottoms' channels: maps them by offsets (a reference bottom only gives the size)")
def _accum_channels(builder, layer, bottoms) -> None:
    joined = [piece for layout in bottoms[:accumulated(layer)] for piece in layout]
    builder.member(joined, layer, "structure")
    builder.layouts[layer.tops[0]] = joined


def _opencv_floors_the_divisor(layer: Layer) -> bool:
    return bool(accum_param(layer)["size_divisible_by"]) and not accum_param(layer)["have_reference"]


# ------------------------------------------------------------------ FlowWarp


def _fill(layer: Layer) -> float:
    """The value of points warped from outside the image: 0 (ZERO) or NaN (NOT_A_NUMBER)."""
    fill = fork_param(layer.param, "flow_warp_param", FLOW_WARP_DEFAULTS)["fill_value"]
    if fill not in ("ZERO", "NOT_A_NUMBER"):
        fail(f"flow_warp_param.fill_value must be ZERO or NOT_A_NUMBER, got {fill}")
    return 0.0 if fill == "ZERO" else float("nan")


def _flow_warp_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    image, flow = bottoms
    _four_axes(image, "FlowWarp")
    _fill(layer)
    if len(flow) != 4 or flow[1] != 2 or (flow[0],) + tuple(flow[2:]) != (image[0],) + tuple(image[2:]):
        fail(f"FlowWarp needs a flow (N, 2, H, W) matching the image {image}, got {flow}")
    return Rule([image])


def _flow_warp(ctx: LayerContext) -> None:
    """GridSample (bilinear, aligned corners, border padding: the clamped right/bottom neighbours) at the
    displaced points, then the fill where a point leaves the image."""
    if ctx.builder.opset < GRID_SAMPLE_OPSET:
        raise ctx.unsupported(f"below opset {GRID_SAMPLE_OPSET} (it needs GridSample)")
    _, _, height, width = ctx.bottom_shape()
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    points = ctx.node("Add", [ctx.bottom(1), ctx.const(np.stack([xs, ys])[None], "grid")])  # (N, 2, H, W): x, y
    size = ctx.const(np.asarray([width, height], np.float32).reshape(1, 2, 1, 1), "size")
    inside = ctx.node("And", [ctx.node("Not", [ctx.node("Less", [points, ctx.const(0.0, "zero")])]),
                              ctx.node("Less", [points, size])])
    inside = ctx.reduce("ReduceMin", ctx.node("Cast", [inside], to=1), [1], keepdims=True)  # both x and y inside
    spans = np.asarray([max(width - 1, 1), max(height - 1, 1)], np.float32).reshape(1, 2, 1, 1)
    normalized = ctx.node("Sub", [ctx.node("Mul", [points, ctx.const(2 / spans, "to_unit")]), ctx.const(1.0, "one")])
    grid = ctx.node("Transpose", [normalized], perm=[0, 2, 3, 1])
    sampled = ctx.node("GridSample", [ctx.bottom(), grid], mode="bilinear", padding_mode="border", align_corners=1)
    keep = ctx.node("Cast", [inside], to=9)  # bool
    ctx.node("Where", [keep, sampled, ctx.const(_fill(ctx.layer), "fill")], ctx.top())


def _flow_warp_op(layer, bottoms, phase):
    """The same sampling in torch (differentiable in the image and the flow)."""
    import torch
    import torch.nn.functional as F
    _, _, height, width = bottoms[0]
    fill = _fill(layer)

    def run(x, blobs):
        image, flow = x
        ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype),
                                indexing="ij")
        px, py = flow[:, 0] + xs, flow[:, 1] + ys
        inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        grid = torch.stack([px * 2 / max(width - 1, 1) - 1, py * 2 / max(height - 1, 1) - 1], dim=-1)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return [torch.where(inside[:, None], sampled, torch.full_like(sampled, fill))]
    return run


@custom("warps each image channel on its own (carries them); pins the flow's x and y channels")
def _flow_warp_channels(builder, layer, bottoms) -> None:
    builder.pin(bottoms[1], f"read by FlowWarp '{layer.name}' as the flow's x and y")
    builder.pass_through(layer, bottoms[0], "channel")


# ------------------------------------------------------------------ DataAugmentation

_NESTED = re.compile(r"(\w+)\s*:?\s*\{[^{}]*\}")
_SCALAR = re.compile(r'(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s{}#]+)')


def augmentation_param(layer: Layer) -> tuple[ForkParam, list[str]]:
    """The scalar fields of the layer's ``augmentation_param`` and the names of its nested generator blocks
    (``translate { ... }``: random transforms), read from the fork message's text."""
    entries, generators = [], []
    for text in preserved_texts(layer.param):
        match = re.match(r"\s*augmentation_param\s*:?\s*\{(.*)\}\s*$", text, re.S)
        if match:
            generators += _NESTED.findall(match.group(1))
            entries += _SCALAR.findall(_NESTED.sub(" ", match.group(1)))
    return ForkParam(entries), generators


def _crop(layer: Layer, shape: Shape) -> tuple[int, int] | None:
    """The (height, width) of the fork's crop, or None when the layer does not crop."""
    p, _ = augmentation_param(layer)
    if not (p.has("crop_width") and p.has("crop_height")):
        return None
    crop = (p.get("crop_height", 0), p.get("crop_width", 0))
    if not (0 < crop[0] <= shape[2] and 0 < crop[1] <= shape[3]):
        fail(f"crop {crop[1]}x{crop[0]} must fit in the {shape[3]}x{shape[2]} bottom")
    return crop


def _recompute_mean(layer: Layer) -> int:
    return augmentation_param(layer)[0].get("recompute_mean", 0)


def _per_pixel(layer: Layer) -> bool:
    return augmentation_param(layer)[0].get("mean_per_pixel", True)


def _augmentation_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N, C, crop or H, W); blobs: the iteration count, and with recompute_mean the two means."""
    shape = bottoms[0]
    _four_axes(shape, "DataAugmentation")
    height, width = _crop(layer, shape) or shape[2:]
    top = (shape[0], shape[1], height, width)
    if _recompute_mean(layer) > 0:
        return Rule([top], [(1, 1, 1, 1), (1, shape[1], height, width), (1, shape[1], 1, 1)])
    return Rule([top], [(1, 1, 1, 1)])


def crop_matrix(size: int, crop: int) -> np.ndarray:
    """(crop, size) weights of the fork's centred crop along one axis: bilinear at ``d + (size - crop) / 2``,
    clamped to ``[0, size - 1.05]``."""
    weights = np.zeros((crop, size), np.float64)
    for d in range(crop):
        position = min(max(np.float32(d - 0.5 * crop + 0.5 * size), 0.0), max(size - 1.05, 0.0)) if size > 1 else 0.0
        left = int(math.floor(position))
        fraction = position - left
        weights[d, left] += 1 - fraction
        if fraction:
            weights[d, left + 1] += fraction
    return weights


def _mean_source(layer: Layer, blobs) -> str:
    """Where the mean comes from: "batch" (the fork computes it from this batch, count 0), "stored" (frozen
    after recompute_mean iterations), "proto" (three ``mean`` values), "none", or "midway" (a count in
    between: the fork's forward changes its stored mean, there is no fixed result)."""
    p, _ = augmentation_param(layer)
    limit = _recompute_mean(layer)
    if limit > 0:
        count = float(np.asarray(blobs[0]).reshape(-1)[0])
        if count + 1 > limit:
            return "stored"
        return "batch" if count == 0 else "midway"
    return "proto" if len(p.values("mean")) == 3 and not _per_pixel(layer) else "none"


def _augmentation(ctx: LayerContext) -> None:
    """The crop as two MatMuls with the fork's sampling weights, then the mean subtraction (module docstring)."""
    p, generators = augmentation_param(ctx.layer)
    if generators and p.get("augment_during_test", False, bool):
        raise ctx.unsupported("with augment_during_test (random transforms)")
    n, channels, height, width = ctx.bottom_shape()
    x = ctx.bottom()
    crop = _crop(ctx.layer, ctx.bottom_shape())
    if crop is not None:
        x = ctx.node("MatMul", [ctx.const(crop_matrix(height, crop[0]), "rows"), x])
        x = ctx.node("MatMul", [x, ctx.const(crop_matrix(width, crop[1]).T, "columns")])
    source = _mean_source(ctx.layer, ctx.weights(1) if _recompute_mean(ctx.layer) > 0 else [])
    if source == "midway":
        raise ctx.unsupported("part way through averaging its mean (0 < iteration count < recompute_mean: "
                              "its forward changes the stored mean)")
    if source == "none":
        ctx.identity(x, ctx.top())
        return
    if source == "proto":
        if channels != 3:
            raise ctx.unsupported(f"with three mean values for {channels} channels")
        mean = ctx.const(channel_broadcast(p.values("mean"), 4), "mean")
    elif source == "stored":
        _, pixel, channel = ctx.weights(3)
        mean = ctx.const(pixel if _per_pixel(ctx.layer) else channel, "mean")
    else:
        mean = ctx.reduce("ReduceMean", x, [0], keepdims=True)
        if not _per_pixel(ctx.layer):
            mean = ctx.reduce("ReduceMean", mean, [2, 3], keepdims=True)
    ctx.node("Sub", [x, mean], ctx.top())


def _augmentation_op(layer, bottoms, phase):
    """The deploy form in torch; in TRAIN phase the fork's running mean: the count goes up by one and, while
    it is at most recompute_mean, the batch's mean is folded into the stored means."""
    import torch
    p, _ = augmentation_param(layer)
    limit, per_pixel = _recompute_mean(layer), _per_pixel(layer)
    _, _, height, width = bottoms[0]
    crop = _crop(layer, bottoms[0])
    rows = torch.tensor(crop_matrix(height, crop[0]), dtype=torch.float32) if crop else None
    columns = torch.tensor(crop_matrix(width, crop[1]).T, dtype=torch.float32) if crop else None
    proto = len(p.values("mean")) == 3 and not per_pixel

    def run(x, blobs):
        image = x[0] if rows is None else rows @ x[0] @ columns
        if limit <= 0:
            return [image - torch.tensor(p.values("mean")).reshape(1, -1, 1, 1) if proto else image]
        iteration = blobs[0].reshape(()) + 1
        pixel, channel = blobs[1], blobs[2]
        if iteration <= limit:
            pixel = (blobs[1] * (iteration - 1) + image.mean(0, keepdim=True)) / iteration
            channel = pixel.mean((2, 3), keepdim=True)
        if phase == TRAIN:
            with torch.no_grad():
                blobs[0].add_(1)
                blobs[1].copy_(pixel)
                blobs[2].copy_(channel)
        return [image - (pixel if per_pixel else channel)]
    return run


def _augmentation_fillers(layer: Layer) -> list:
    from ..train.fillers import constant_filler
    return [constant_filler(0.0)] * (3 if _recompute_mean(layer) > 0 else 1)


@custom("augments images (its colour transforms need their 3 channels): pins the channels it reads")
def _augmentation_channels(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms, f"read by DataAugmentation '{layer.name}', which augments whole images",
            f"output of DataAugmentation '{layer.name}'")


def _opencv_misreads_per_pixel(layer: Layer) -> bool:
    words = [raw.lower() for key, raw in augmentation_param(layer)[0].entries if key == "mean_per_pixel"]
    return not words or words[-1] == "true"


def _opencv_ignores_the_stored_mean(layer: Layer) -> bool:
    return bool(layer.blobs) and _recompute_mean(layer) > 0 and _mean_source(layer, layer.blobs) == "stored"


# ------------------------------------------------------------------ declarations

_NO_BLOBS_PINNED = NotApplicable("it has no blobs and its channels are pinned")

declare(
    LayerType("Correlation", shape=_correlation_shape, export=_correlation, channels=_correlation_channels,
              rewrite=_NO_BLOBS_PINNED, train=Train(_correlation_op), bottoms=2,
              departures=(Departure("OpenCV's Correlation ignores correlation_type (it always multiplies)",
                                    lambda layer: correlation_param(layer)["correlation_type"] != "MULTIPLY"),)),
    LayerType("Accum", shape=_accum_shape, export=_accum, channels=_accum_channels,
              rewrite=NotApplicable("it has no blobs; its top's channels follow its bottoms' by offsets"),
              train=Train(_accum_op), bottoms=(1, None),
              departures=(Departure("OpenCV's Accum rounds the size down to size_divisible_by (then keeps the "
                                    "largest bottom size)", _opencv_floors_the_divisor),)),
    LayerType("FlowWarp", shape=_flow_warp_shape, export=_flow_warp, channels=_flow_warp_channels,
              rewrite=NotApplicable("it has no blobs and counts no channels"), train=Train(_flow_warp_op), bottoms=2,
              departures=(Departure("OpenCV's FlowWarp ignores fill_value (it always fills 0)",
                                    lambda layer: math.isnan(_fill(layer))),)),
    LayerType("DataAugmentation", shape=_augmentation_shape, export=_augmentation, channels=_augmentation_channels,
              rewrite=NotApplicable("its channels are pinned"),
              train=Train(_augmentation_op, _augmentation_fillers, learns=False),
              departures=(
                  Departure("OpenCV's DataAugmentation ignores crop_width and crop_height",
                            lambda layer: any(name in augmentation_param(layer)[0].given
                                              for name in ("crop_width", "crop_height"))),
                  Departure("OpenCV's DataAugmentation needs recompute_mean > 0 and the three mean blobs",
                            lambda layer: _recompute_mean(layer) <= 0),
                  Departure("OpenCV's DataAugmentation defaults mean_per_pixel to false (the fork: true) and "
                            "reads it only as a number (mean_per_pixel: true gives garbage)",
                            _opencv_misreads_per_pixel),
                  Departure("OpenCV's DataAugmentation always subtracts the mean of the batch it is given (it "
                            "ignores the stored mean and iteration count)", _opencv_ignores_the_stored_mean))),
)
