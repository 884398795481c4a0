"""YOLOv2's layers as darknet2caffe nets and OpenCV's Caffe importer know them: Reorg and Region.

``Reorg`` (``reorg_param { stride }``, default 2) is darknet's reorg as OpenCV computes it (the order
darknet-trained weights expect): the (N, C, H, W) bottom is read as (N, C / s^2, H * s, W * s), each
s x s block goes to channels (SpaceToDepth: channel ``(dy * s + dx) * C / s^2 + c``), giving
(N, C, H, W) values that are then read as the (N, C * s^2, H / s, W / s) top. It is not SpaceToDepth
of the bottom itself.

``Region`` follows OpenCV's Region layer: the bottom is (N, H, W, anchors * (coords + 1 + classes))
(darknet2caffe nets put a Permute to NHWC before it), blob 0 holds the anchors' (width, height) pairs
in cells, and the top is (N * H * W * anchors, coords + 1 + classes) rows
``[x, y, w, h, objectness, class probabilities]``: x, y = (cell + sigmoid) / grid size, w, h =
anchor * exp / grid size, objectness = sigmoid, class probability = objectness * softmax (or sigmoid
with ``logistic``) kept where above ``thresh`` (default 0.2), then per image and class greedy NMS at
``nms_threshold`` (default 0.4; 0 turns it off) zeroes the probabilities of suppressed boxes.
"""
from __future__ import annotations

import numpy as np

from ..export.context import LayerContext
from ..graph import Layer
from .channels import custom, pin_all
from .fork_params import ForkParam, fork_param
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail

_COORDS = 4


# ------------------------------------------------------------------ Reorg

def reorg_stride(layer: Layer) -> int:
    """``reorg_param.stride`` (darknet2caffe's fork field), default 2."""
    stride = fork_param(layer.param, "reorg_param").get("stride", 2)
    if stride < 1:
        fail(f"reorg stride must be positive, got {stride}")
    return stride


def _reorg_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N, C * s^2, H / s, W / s)."""
    shape, stride = bottoms[0], reorg_stride(layer)
    if len(shape) != 4 or shape[1] % (stride * stride) or shape[2] % stride or shape[3] % stride:
        fail(f"Reorg with stride {stride} needs a 4-D bottom with C divisible by {stride * stride} and H, W "
             f"by {stride}, got {shape}")
    return Rule([(shape[0], shape[1] * stride * stride, shape[2] // stride, shape[3] // stride)])


def _reorg(ctx: LayerContext) -> None:
    """Reshape, SpaceToDepth, reshape (module docstring)."""
    stride = reorg_stride(ctx.layer)
    n, c, h, w = ctx.bottom_shape()
    wide = ctx.reshape(ctx.bottom(), [n, c // stride ** 2, h * stride, w * stride], keeps_batch=True)
    ctx.reshape(ctx.node("SpaceToDepth", [wide], blocksize=stride), list(ctx.top_shape()), keeps_batch=True,
                out=ctx.top())


def _reorg_op(layer, bottoms, phase):
    """The same rearrangement in torch (differentiable: it only moves values)."""
    stride = reorg_stride(layer)

    def run(x, blobs):
        n, c, h, w = x[0].shape
        blocks = x[0].reshape(n, c // stride ** 2, h, stride, w, stride)
        return [blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, c * stride * stride, h // stride, w // stride)]
    return run


@custom("moves spatial blocks into channels: pins the channels it reads (each lands in stride^2 places)")
def _reorg_channels(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms,
            f"read by Reorg '{layer.name}', which spreads each channel over {reorg_stride(layer) ** 2} "
            "output channels", f"output of Reorg '{layer.name}'")


# ------------------------------------------------------------------ Region

def region_param(layer: Layer) -> ForkParam:
    return fork_param(layer.param, "region_param")


def region_geometry(layer: Layer) -> tuple[int, int]:
    """(anchors, classes) of a Region layer, checked as OpenCV checks them."""
    p = region_param(layer)
    anchors = p.get("anchors", p.get("num", 5))
    classes = p.get("classes", 0)
    if p.get("coords", _COORDS) != _COORDS:
        fail(f"Region needs coords: {_COORDS}")
    if classes < 1 or anchors < 1:
        fail(f"Region needs classes >= 1 and anchors >= 1, got {classes} and {anchors}")
    if not (p.get("softmax", False, bool) or p.get("logistic", False, bool)):
        fail("Region needs softmax or logistic")
    return anchors, classes


def _region_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(N * H * W * anchors, coords + 1 + classes); blob 0: the anchors' (w, h) pairs."""
    shape = bottoms[0]
    anchors, classes = region_geometry(layer)
    cell = _COORDS + 1 + classes
    if len(shape) != 4 or shape[3] != anchors * cell:
        fail(f"Region reads an (N, H, W, {anchors} * {cell}) bottom (NHWC, as OpenCV does), got {shape}")
    return Rule([(shape[0] * shape[1] * shape[2] * anchors, cell)], [(2 * anchors,)])


def _region(ctx: LayerContext) -> None:
    """Decode the raw map into rows, then NMS per image and class (module docstring)."""
    p = region_param(ctx.layer)
    for unsupported in ("softmax_tree", "scale_x_y", "new_coords"):
        if p.values(unsupported):
            raise ctx.unsupported(f"with {unsupported}")
    anchors, classes = region_geometry(ctx.layer)
    thresh, nms_threshold = p.get("thresh", 0.2), p.get("nms_threshold", 0.4)
    n, h, w, _ = ctx.bottom_shape()
    cell = _COORDS + 1 + classes
    (sizes,) = ctx.weights(1)
    if sizes.size != 2 * anchors:
        raise ctx.unsupported(f"with {sizes.size} anchor values for {anchors} anchors")
    raw = ctx.reshape(ctx.bottom(), [n, h, w, anchors, cell], keeps_batch=True)
    xy, wh, objectness, scores = ctx.multi("Split", [raw, ctx.ints([2, 2, 1, classes], "fields")],
                                           [ctx.fresh(k) for k in ("xy", "wh", "objectness", "scores")], axis=-1)
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1)[:, :, None, :]  # (H, W, 1, [x, y])
    size = np.asarray([w, h], dtype=np.float32)
    centers = ctx.node("Div", [ctx.node("Add", [ctx.node("Sigmoid", [xy]), ctx.const(grid, "grid")]),
                               ctx.const(size, "grid_size")])
    extents = ctx.node("Mul", [ctx.node("Exp", [wh]), ctx.const(sizes.reshape(anchors, 2) / size, "anchors")])
    objectness = ctx.node("Sigmoid", [objectness])
    squash = ctx.node("Softmax", [scores], axis=-1) if p.get("softmax", False, bool) else ctx.node("Sigmoid", [scores])
    probs = ctx.node("Mul", [squash, objectness])
    probs = ctx.node("Where", [ctx.node("Greater", [probs, ctx.const(thresh, "thresh")]), probs,
                               ctx.const(0.0, "zero")])
    boxes = ctx.node("Concat", [centers, extents], axis=-1)
    if nms_threshold > 0:
        probs = _suppress(ctx, boxes, probs, n, h * w * anchors, classes, thresh, nms_threshold)
    rows = ctx.node("Concat", [boxes, objectness, probs], axis=-1)
    ctx.reshape(rows, [n * h * w * anchors, cell], keeps_batch=False, out=ctx.top())


def _suppress(ctx: LayerContext, boxes: str, probs: str, n: int, count: int, classes: int, thresh: float,
              nms_threshold: float) -> str:
    """Zero each class probability NonMaxSuppression (center boxes, per image and class) does not keep."""
    flat_boxes = ctx.reshape(boxes, [n, count, 4], keeps_batch=True)
    flat_probs = ctx.node("Transpose", [ctx.reshape(probs, [n, count, classes], keeps_batch=True)], perm=[0, 2, 1])
    kept = ctx.node("NonMaxSuppression", [flat_boxes, flat_probs, ctx.ints([count], "max_boxes"),
                                          ctx.const([nms_threshold], "iou"), ctx.const([thresh], "score")],
                    center_point_box=1)
    ones = ctx.node("Expand", [ctx.const(1.0, "one"), ctx.node("Slice", [ctx.node("Shape", [kept]), ctx.ints([0], "s0"),
                                                                           ctx.ints([1], "s1")])])
    mask = ctx.node("ScatterND", [ctx.node("Mul", [flat_probs, ctx.const(0.0, "zero_mask")]), kept, ones])
    mask = ctx.node("Transpose", [mask], perm=[0, 2, 1])
    shape = ctx.node("Shape", [probs])
    return ctx.node("Mul", [probs, ctx.node("Reshape", [mask, shape])])


def _opencv_misreads_region(layer: Layer) -> bool:
    """OpenCV counts anchors only from ``anchors`` (else 5) and reads softmax/logistic only as numbers."""
    p = region_param(layer)
    words = [raw.lower() for key, raw in p.entries if key in ("softmax", "logistic")]
    return not p.values("anchors") or any(word in ("true", "false") for word in words)


@custom("reads every channel of each cell as box fields and class scores: pins them")
def _region_channels(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms, f"read by Region '{layer.name}' as box coordinates and class scores",
            f"output of Region '{layer.name}'")


declare(
    LayerType("Reorg", shape=_reorg_shape, export=_reorg, channels=_reorg_channels,
              rewrite=NotApplicable("it has no blobs and its channels are pinned"), train=Train(_reorg_op),
              departures=(Departure("OpenCV's Reorg ignores reorg_param.stride and reorganises by 2",
                                    lambda layer: reorg_stride(layer) != 2),)),
    LayerType("Region", shape=_region_shape, export=_region, channels=_region_channels,
              rewrite=NotApplicable("its channels are pinned; its anchors blob counts none"),
              train=NotApplicable("thresholding and NMS are not differentiable; no torch op"),
              departures=(Departure("OpenCV's Region takes the anchor count only from region_param.anchors (5 "
                                    "without it) and softmax/logistic only as numbers (softmax: true fails to load)",
                                    _opencv_misreads_region),)),
)
