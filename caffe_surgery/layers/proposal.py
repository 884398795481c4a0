"""Faster R-CNN's RPN Proposal layer (the detection family's export facet), as py-faster-rcnn computes it.

Bottoms: object probabilities (1, 2A, H, W) -- background for the A anchors, then foreground --,
box deltas (1, 4A, H, W) and im_info (1, 3) = (image height, width, scale). ``proposal_param``
(a fork field, read from the kept text): ``feat_stride`` 16, ``base_size`` 16, ``min_size`` 16,
``ratio`` (0.5, 1, 2), ``scale`` (8, 16, 32), ``pre_nms_topn`` 6000, ``post_nms_topn`` 300,
``nms_thresh`` 0.7. Steps: anchors (generate_anchors: per ratio, per scale) shifted to every
position (position-major), deltas decoded with widths x2 - x1 + 1, boxes clipped to the image
[0, w - 1] x [0, h - 1], boxes narrower or lower than min_size * scale dropped, the pre_nms_topn
best scores kept, greedy NMS (IoU with the +1 pixel convention: NonMaxSuppression on boxes whose
far corner is shifted by 1 computes exactly that), the post_nms_topn first kept. Top 0: rows
[0, x1, y1, x2, y2], data-dependent in number; top 1 (optional): their scores (rows, 1). One image
per forward, as py-faster-rcnn: a batch other than 1 is refused.
"""
from __future__ import annotations

import numpy as np

from ..export.context import LayerContext
from .fork_params import ForkParam, fork_param

DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0, 16.0, 32.0)


def proposal_param(layer) -> ForkParam:
    return fork_param(layer.param, "proposal_param")


def base_anchors(base_size: float, ratios, scales) -> np.ndarray:
    """py-faster-rcnn's generate_anchors: (ratios * scales, 4) corner boxes around the base box's
    center, per ratio then per scale (numpy's rounding, halves to even, as there)."""
    center = (base_size - 1) / 2
    anchors = []
    for ratio in ratios:
        width = np.round(np.sqrt(base_size * base_size / ratio))
        height = np.round(width * ratio)
        for scale in scales:
            w, h = width * scale, height * scale
            anchors.append([center - (w - 1) / 2, center - (h - 1) / 2, center + (w - 1) / 2, center + (h - 1) / 2])
    return np.asarray(anchors, dtype=np.float64)


def all_anchors(layer, height: int, width: int) -> np.ndarray:
    """(H * W * A, 4): every position's anchors, position-major (row, column), then anchor."""
    p = proposal_param(layer)
    stride = p.get("feat_stride", 16.0)
    base = base_anchors(p.get("base_size", 16.0), p.values("ratio") or DEFAULT_RATIOS,
                        p.values("scale") or DEFAULT_SCALES)
    sy, sx = np.meshgrid(np.arange(height) * stride, np.arange(width) * stride, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def proposal(ctx: LayerContext) -> None:
    """Decode, clip, drop small boxes, top-N, NMS, top-N (module docstring)."""
    p = proposal_param(ctx.layer)
    n, channels, height, width = ctx.bottom_shape(0)
    if n != 1:
        raise ctx.unsupported(f"with a batch of {n} (it handles one image per forward, as py-faster-rcnn)")
    if ctx.builder.dynamic_batch:
        ctx.batch_dependent("Proposal handles one image per forward")
    anchors = all_anchors(ctx.layer, height, width)
    count = anchors.shape[0]
    if channels * height * width != 2 * count or tuple(ctx.bottom_shape(1)) != (1, 2 * channels, height, width):
        raise ctx.unsupported(f"with {channels} score channels for {count // (height * width)} anchors")
    foreground = ctx.node("Slice", [ctx.bottom(0), ctx.ints([channels // 2], "fg_start"),
                                    ctx.ints([channels], "fg_end"), ctx.ints([1], "channel_axis")])
    scores = ctx.node("Reshape", [ctx.node("Transpose", [foreground], perm=[0, 2, 3, 1]), ctx.ints([-1], "flat")])
    deltas = ctx.node("Reshape", [ctx.node("Transpose", [ctx.bottom(1)], perm=[0, 2, 3, 1]),
                                  ctx.ints([count, 4], "deltas_shape")])
    boxes = _clipped(ctx, _decoded(ctx, anchors, deltas))
    scores = _without_small_boxes(ctx, boxes, scores, p.get("min_size", 16.0))
    pre = p.get("pre_nms_topn", 6000)
    best = min(pre, count) if pre > 0 else count
    scores, order = ctx.multi("TopK", [scores, ctx.ints([best], "pre_nms_topn")],
                              [ctx.fresh("ranked"), ctx.fresh("order")], axis=0)
    boxes = ctx.node("Gather", [boxes, order], axis=0)
    post = p.get("post_nms_topn", 300)
    shifted = ctx.node("Add", [boxes, ctx.const([0.0, 0.0, 1.0, 1.0], "pixel")])  # IoU with +1 widths
    kept = ctx.node("NonMaxSuppression", [ctx.unsqueeze(shifted, [0]), ctx.unsqueeze(scores, [0, 1]),
                                          ctx.ints([post if post > 0 else best], "post_nms_topn"),
                                          ctx.const([p.get("nms_thresh", 0.7)], "nms_thresh"),
                                          ctx.const([-0.5], "valid_score")])
    index = ctx.node("Squeeze", [ctx.node("Slice", [kept, ctx.ints([2], "c2"), ctx.ints([3], "c3"),
                                                    ctx.ints([1], "axis1")]), ctx.ints([1], "squeeze")])
    rows = ctx.node("Gather", [boxes, index], axis=0)
    batch = ctx.node("Mul", [ctx.node("Slice", [rows, ctx.ints([0], "r0"), ctx.ints([1], "r1"), ctx.ints([1], "ax")]),
                             ctx.const(0.0, "image")])
    ctx.node("Concat", [batch, rows], ctx.top(0), axis=1)
    ctx.builder.declare_output(ctx.top(0), [f"{ctx.layer.name}_rois", 5])
    if len(ctx.layer.tops) > 1:
        ctx.unsqueeze(ctx.node("Gather", [scores, index], axis=0), [1], ctx.top(1))
        ctx.builder.declare_output(ctx.top(1), [f"{ctx.layer.name}_rois", 1])


def _decoded(ctx: LayerContext, anchors: np.ndarray, deltas: str) -> str:
    """py-faster-rcnn's bbox_transform_inv: centers and sizes with widths x2 - x1 + 1."""
    size = anchors[:, 2:] - anchors[:, :2] + 1.0
    center = anchors[:, :2] + 0.5 * size
    shift, scale = ctx.multi("Split", [deltas, ctx.ints([2, 2], "halves")], [ctx.fresh("dxy"), ctx.fresh("dwh")],
                             axis=1)
    centers = ctx.node("Add", [ctx.node("Mul", [shift, ctx.const(size, "anchor_size")]),
                               ctx.const(center, "anchor_center")])
    half = ctx.node("Mul", [ctx.node("Exp", [scale]), ctx.const(0.5 * size, "half_size")])
    return ctx.node("Concat", [ctx.node("Sub", [centers, half]), ctx.node("Add", [centers, half])], axis=1)


def _image_info(ctx: LayerContext) -> list[str]:
    """im_info's (height, width, scale) as scalars."""
    info = ctx.node("Reshape", [ctx.bottom(2), ctx.ints([-1], "info_flat")])
    return [ctx.node("Gather", [info, ctx.const(np.int64(i), f"info{i}", np.int64)], axis=0) for i in range(3)]


def _clipped(ctx: LayerContext, boxes: str) -> str:
    """x to [0, width - 1], y to [0, height - 1]."""
    height, width, _ = _image_info(ctx)
    one = ctx.const(1.0, "one")
    limit = ctx.node("Concat", [ctx.unsqueeze(ctx.node("Sub", [v, one]), [0]) for v in (width, height)] * 2, axis=0)
    return ctx.node("Max", [ctx.node("Min", [boxes, limit]), ctx.const(0.0, "origin")])


def _without_small_boxes(ctx: LayerContext, boxes: str, scores: str, min_size: float) -> str:
    """Scores with -1 (below NMS's score threshold) where a box is narrower or lower than min_size * scale."""
    _, _, scale = _image_info(ctx)
    low, high = ctx.multi("Split", [boxes, ctx.ints([2, 2], "corners")], [ctx.fresh("low"), ctx.fresh("high")], axis=1)
    size = ctx.node("Add", [ctx.node("Sub", [high, low]), ctx.const(1.0, "plus_one")])
    least = ctx.reduce("ReduceMin", size, [1], keepdims=False)
    big = ctx.node("Not", [ctx.node("Less", [least, ctx.node("Mul", [ctx.const(min_size, "min_size"), scale])])])
    return ctx.node("Where", [big, scores, ctx.const(-1.0, "dropped")])
