"""The ONNX graph of SSD's DetectionOutput (the detection family's export facet): decode the boxes,
per-class NMS, keep the best across classes.

The graph follows Caffe's layer: bottoms are the location offsets (N, priors * 4, or
priors * classes * 4 without ``share_location``), the confidences (N, priors * classes,
softmaxed already) and the priors (1, 2, priors * 4: corner boxes, then variances). Per
image and class other than ``background_label_id``, the ``top_k`` best scores above
``confidence_threshold`` go through greedy NMS (IoU > ``nms_threshold`` suppresses; with ``eta`` < 1
the threshold shrinks after each kept box while above 0.5, a Loop);
then each image keeps its ``keep_top_k`` best detections. The top is (1, 1, M, 7) rows
``[image, label, score, xmin, ymin, xmax, ymax]`` ordered by image, label, then score
(descending), M data-dependent; with no detection at all, one row per image
``[image, -1, -1, -1, -1, -1, -1]`` as Caffe writes it. Decoded boxes are not clipped
(Caffe's DetectionOutput decodes with ``clip_bbox`` false). Only standard ops of opset 13.
"""
import math

import numpy as np
from google.protobuf.unknown_fields import UnknownFieldSet
from onnx import TensorProto, helper

from ..caffe_pb2 import PriorBoxParameter
from ..export.context import LayerContext

ROW_WIDTH = 7
CORNER, CENTER_SIZE, CORNER_SIZE = PriorBoxParameter.CORNER, PriorBoxParameter.CENTER_SIZE, 3
"""SSD's CodeType values; CORNER_SIZE is not in this schema (its facts), so it arrives as an unknown field."""
_CODE_TYPE_FIELD = 6
FLT_MAX = float(np.finfo(np.float32).max)
"""Caffe's confidence threshold when none is given is -FLT_MAX: every finite score competes."""
ADAPTIVE_LIMIT = 1 << 22
"""Most candidate overlaps per (image, class) adaptive NMS computes (top_k^2; 2048 candidates)."""


def detection_output(ctx: LayerContext) -> None:
    """Decode, per-class NMS, keep_top_k, Caffe's row order (see the module docstring)."""
    p = ctx.param.detection_output_param
    classes = p.num_classes
    nms = p.nms_param
    priors = _prior_count(ctx, classes)
    loc_classes = 1 if p.share_location else classes
    decoded = _decode(ctx, code_type(p), p.variance_encoded_in_target, priors, loc_classes)
    labels = [c for c in range(classes) if c != p.background_label_id]
    top_k = priors if not nms.HasField("top_k") or nms.top_k < 0 else min(nms.top_k, priors)
    threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX
    rows = _per_class_nms(ctx, decoded, labels, priors, p.share_location, top_k, nms, threshold)
    rows = _sort_rows(ctx, rows, classes, p.keep_top_k)
    rows = _or_empty_rows(ctx, rows)
    ctx.unsqueeze(rows, [0, 1], ctx.top())
    ctx.builder.declare_output(ctx.top(), [1, 1, f"{ctx.layer.name}_detections", ROW_WIDTH])


def code_type(param) -> int:
    """The DetectionOutputParameter's code_type, also when its value (CORNER_SIZE) is unknown to the schema."""
    unknown = [f.data for f in UnknownFieldSet(param) if f.field_number == _CODE_TYPE_FIELD and f.wire_type == 0]
    return unknown[-1] if unknown and not param.HasField("code_type") else param.code_type


def _prior_count(ctx: LayerContext, classes: int) -> int:
    """Priors in the prior bottom, checked against the location and confidence sizes."""
    prior_shape = ctx.bottom_shape(2)
    if len(prior_shape) < 2 or prior_shape[-2] != 2 or prior_shape[-1] % 4:
        raise ctx.unsupported(f"with a prior bottom of shape {prior_shape} (expected (1, 2, priors * 4))")
    priors = prior_shape[-1] // 4
    loc_size = math.prod(ctx.bottom_shape(0)[1:])
    conf_size = math.prod(ctx.bottom_shape(1)[1:])
    loc_classes = 1 if ctx.param.detection_output_param.share_location else classes
    if classes < 1 or loc_size != priors * loc_classes * 4 or conf_size != priors * classes:
        raise ctx.unsupported(f"with {loc_size} location and {conf_size} confidence values per sample for "
                              f"{priors} priors and {classes} classes")
    return priors


def _halves(ctx: LayerContext, x: str) -> tuple[str, str]:
    """The first and last two coordinates of the last axis: (xmin, ymin) and (xmax, ymax)."""
    return tuple(ctx.multi("Split", [x, ctx.ints([2, 2], "halves")], [ctx.fresh("low"), ctx.fresh("high")],
                           axis=-1))


def _decode(ctx: LayerContext, code_type: int, variance_in_target: bool, priors: int, loc_classes: int) -> str:
    """Decoded corner boxes, (N, priors, location classes, 4), as Caffe's DecodeBBox (no clipping)."""
    loc = ctx.reshape(ctx.bottom(0), [ctx.bottom_shape(0)[0], priors, loc_classes, 4], keeps_batch=True)
    first = ctx.node("Slice", [ctx.bottom(2), ctx.ints([0], "start"), ctx.ints([1], "end"), ctx.ints([0], "axis")])
    prior_data = ctx.node("Reshape", [first, ctx.ints([2, priors, 1, 4], "prior_shape")])
    boxes, variances = ctx.multi("Split", [prior_data, ctx.ints([1, 1], "split")],
                                 [ctx.fresh("prior_boxes"), ctx.fresh("variances")], axis=0)
    boxes = ctx.node("Squeeze", [boxes, ctx.ints([0], "axes")])
    offsets = loc if variance_in_target else ctx.node("Mul", [loc, ctx.node("Squeeze", [variances, ctx.ints([0], "axes")])])
    if code_type == CORNER:
        return ctx.node("Add", [boxes, offsets])
    low, high = _halves(ctx, boxes)
    size = ctx.node("Sub", [high, low])
    if code_type == CORNER_SIZE:
        return ctx.node("Add", [boxes, ctx.node("Mul", [offsets, ctx.node("Concat", [size, size], axis=-1)])])
    if code_type != CENTER_SIZE:
        raise ctx.unsupported(f"with code_type {code_type}")
    prior_center = ctx.node("Div", [ctx.node("Add", [low, high]), ctx.const(2.0, "two")])
    shift, scale = _halves(ctx, offsets)
    center = ctx.node("Add", [ctx.node("Mul", [shift, size]), prior_center])
    half = ctx.node("Div", [ctx.node("Mul", [ctx.node("Exp", [scale]), size]), ctx.const(2.0, "two")])
    return ctx.node("Concat", [ctx.node("Sub", [center, half]), ctx.node("Add", [center, half])], axis=-1)


def _per_class_nms(ctx: LayerContext, decoded: str, labels: list[int], priors: int, share_location: bool,
                   top_k: int, nms, threshold: float) -> str:
    """(M, 7) rows of the detections NMS keeps per image and class, in no particular order.

    Each (image, class) pair holds its ``top_k`` best candidates, best first (Caffe ranks before NMS;
    ONNX's max_output_boxes_per_class would count after it); those not above ``threshold`` take no part.
    """
    kinds = len(labels)
    conf = ctx.reshape(ctx.bottom(1), [ctx.bottom_shape(1)[0], priors, -1], keeps_batch=True)
    conf = ctx.node("Gather", [ctx.node("Transpose", [conf], perm=[0, 2, 1]), ctx.ints(labels, "labels")], axis=1)
    scores, order = ctx.multi("TopK", [conf, ctx.ints([top_k], "top_k")], [ctx.fresh("scores"), ctx.fresh("order")],
                              axis=2)
    if share_location:  # (N, P, 1, 4) -> (N, kinds, P, 4)
        boxes = ctx.node("Expand", [ctx.node("Transpose", [decoded], perm=[0, 2, 1, 3]), ctx.ints([1, kinds, 1, 1], "kinds")])
    else:
        boxes = ctx.node("Gather", [ctx.node("Transpose", [decoded], perm=[0, 2, 1, 3]), ctx.ints(labels, "box_labels")],
                         axis=1)
    picks = ctx.node("Expand", [ctx.unsqueeze(order, [3]), ctx.ints([1, 1, 1, 4], "corners")])
    candidates = ctx.node("Reshape", [ctx.node("GatherElements", [boxes, picks], axis=2), ctx.ints([-1, top_k, 4], "boxes")])
    above = ctx.node("Reshape", [ctx.node("Greater", [scores, ctx.const(threshold, "confidence")]),
                                 ctx.ints([-1, top_k], "pairs")])
    if nms.eta < 1 and nms.nms_threshold > 0.5:
        pair, slot = _adaptive_nms(ctx, candidates, above, top_k, nms.nms_threshold, nms.eta)
    else:
        pair, slot = _greedy_nms(ctx, candidates, above, top_k, nms.nms_threshold)
    flat = ctx.node("Add", [ctx.node("Mul", [pair, ctx.ints([top_k], "stride")]), slot])
    flat = ctx.node("Squeeze", [flat, ctx.ints([1], "axes")])
    kinds_const = ctx.ints([kinds], "kinds_count")
    image = ctx.node("Cast", [ctx.node("Div", [pair, kinds_const])], to=TensorProto.FLOAT)
    label = ctx.node("Gather", [ctx.const([float(c) for c in labels], "label_values"),
                                ctx.node("Mod", [pair, kinds_const])])
    score = ctx.unsqueeze(ctx.node("Gather", [ctx.node("Reshape", [scores, ctx.ints([-1], "flat")]), flat]), [1])
    box = ctx.node("Gather", [ctx.node("Reshape", [candidates, ctx.ints([-1, 4], "flat_boxes")]), flat])
    return ctx.node("Concat", [image, label, score, box], axis=1)


def _greedy_nms(ctx: LayerContext, candidates: str, above: str, top_k: int, nms_threshold: float) -> tuple[str, str]:
    """(pair, rank) columns of what NonMaxSuppression keeps, one batch per (image, class) pair."""
    low, high = _halves(ctx, candidates)
    # An inverted box has area 0 in Caffe; NonMaxSuppression would reorder its corners instead.
    nms_boxes = ctx.node("Concat", [low, ctx.node("Max", [low, high])], axis=-1)
    # NMS visits candidates by rank (top_k for the best ... 1), so equal scores keep Caffe's stable order;
    # those not above confidence_threshold get rank 0, which the score threshold 0 drops.
    ranks = ctx.node("Where", [above, ctx.const(list(range(top_k, 0, -1)), "ranks"), ctx.const(0.0, "rank_zero")])
    nms_scores = ctx.unsqueeze(ranks, [1])
    selected = ctx.node("NonMaxSuppression", [nms_boxes, nms_scores, ctx.ints([top_k], "max_boxes"),
                                              ctx.const([nms_threshold], "iou"), ctx.const([0.0], "no_rank")])
    pair, _, slot = ctx.multi("Split", [selected, ctx.ints([1, 1, 1], "columns")],
                              [ctx.fresh("pair"), ctx.fresh("class"), ctx.fresh("slot")], axis=1)
    return pair, slot


def _adaptive_nms(ctx: LayerContext, candidates: str, above: str, top_k: int, nms_threshold: float,
                  eta: float) -> tuple[str, str]:
    """(pair, rank) columns of what Caffe's adaptive NMS keeps: a Loop over the ranks, every pair at once,
    the threshold shrinking by ``eta`` after each kept box while above 0.5 (Caffe's IoU, top_k^2 per pair)."""
    if top_k * top_k > ADAPTIVE_LIMIT:
        raise ctx.unsupported(f"with adaptive NMS over {top_k} candidates per class (its top_k x top_k overlaps "
                              f"exceed {ADAPTIVE_LIMIT:,}; set nms_param.top_k)")
    iou = _caffe_iou(ctx, candidates)
    ranks = ctx.const(np.arange(top_k, dtype=np.int64)[None], "rank_index", np.int64)
    outer, ctx.builder.nodes = ctx.builder.nodes, []
    step, go, kept, limit = (ctx.fresh(name) for name in ("step", "go", "kept_in", "limit_in"))
    overlaps = ctx.node("Gather", [iou, step], axis=1)  # (pairs, top_k): rank ``step`` against every rank
    clash = ctx.node("And", [kept, ctx.node("Not", [ctx.node("LessOrEqual", [overlaps, limit])])])  # NaN clashes
    clashes = ctx.reduce("ReduceSum", ctx.node("Cast", [clash], to=TensorProto.INT64), [1], keepdims=True)
    keep = ctx.node("And", [ctx.unsqueeze(ctx.node("Gather", [above, step], axis=1), [1]),
                            ctx.node("Equal", [clashes, ctx.ints([0], "none")])])
    kept_out = ctx.node("Or", [kept, ctx.node("And", [ctx.node("Equal", [ranks, step]), keep])])
    shrink = ctx.node("And", [keep, ctx.node("Greater", [limit, ctx.const(0.5, "half")])])
    limit_out = ctx.node("Where", [shrink, ctx.node("Mul", [limit, ctx.const(eta, "eta")]), limit])
    go_out = ctx.identity(go, ctx.fresh("go_out"))
    body_nodes, ctx.builder.nodes = ctx.builder.nodes, outer
    body = helper.make_graph(
        body_nodes, ctx.fresh("adaptive_nms_body"),
        [helper.make_tensor_value_info(step, TensorProto.INT64, []), helper.make_tensor_value_info(go, TensorProto.BOOL, []),
         helper.make_tensor_value_info(kept, TensorProto.BOOL, None),
         helper.make_tensor_value_info(limit, TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(go_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(kept_out, TensorProto.BOOL, None),
         helper.make_tensor_value_info(limit_out, TensorProto.FLOAT, None)])
    nothing = ctx.node("ConstantOfShape", [ctx.node("Shape", [above])],
                       value=helper.make_tensor("value", TensorProto.BOOL, [1], [False]))
    pair_count = ctx.node("Slice", [ctx.node("Shape", [above]), ctx.ints([0], "s"), ctx.ints([1], "e")])
    start = ctx.node("ConstantOfShape", [ctx.node("Concat", [pair_count, ctx.ints([1], "one_column")], axis=0)],
                     value=helper.make_tensor("value", TensorProto.FLOAT, [1], [nms_threshold]))
    kept_final, _ = ctx.multi("Loop", [ctx.const(top_k, "trips", np.int64), ctx.const(True, "always", np.bool_),
                                       nothing, start], [ctx.fresh("kept"), ctx.fresh("final_limit")], body=body)
    chosen = ctx.node("Transpose", [ctx.node("NonZero", [kept_final])], perm=[1, 0])
    pair, slot = ctx.multi("Split", [chosen, ctx.ints([1, 1], "columns")], [ctx.fresh("pair"), ctx.fresh("slot")],
                           axis=1)
    return pair, slot


def _caffe_iou(ctx: LayerContext, boxes: str) -> str:
    """(pairs, k, k) IoU of every two of a pair's k boxes as Caffe's JaccardOverlap: 0 for boxes apart,
    0 area for inverted boxes, NaN for two empty boxes that touch (0 / 0)."""
    corners = ctx.multi("Split", [boxes, ctx.ints([1, 1, 1, 1], "corners4")],
                        [ctx.fresh(n) for n in ("xmin", "ymin", "xmax", "ymax")], axis=2)
    a = corners  # (pairs, k, 1)
    b = [ctx.node("Transpose", [c], perm=[0, 2, 1]) for c in corners]  # (pairs, 1, k)
    apart = ctx.node("Or", [ctx.node("Or", [ctx.node("Greater", [b[0], a[2]]), ctx.node("Less", [b[2], a[0]])]),
                            ctx.node("Or", [ctx.node("Greater", [b[1], a[3]]), ctx.node("Less", [b[3], a[1]])])])
    inter = _area(ctx, *(ctx.node(op, [a[i], b[i]]) for op, i in (("Max", 0), ("Max", 1), ("Min", 2), ("Min", 3))))
    union = ctx.node("Sub", [ctx.node("Add", [_area(ctx, *a), _area(ctx, *b)]), inter])
    return ctx.node("Where", [apart, ctx.const(0.0, "zero_iou"), ctx.node("Div", [inter, union])])


def _area(ctx: LayerContext, xmin: str, ymin: str, xmax: str, ymax: str) -> str:
    """Caffe's BBoxSize: width * height, 0 for an inverted box."""
    width, height = ctx.node("Sub", [xmax, xmin]), ctx.node("Sub", [ymax, ymin])
    inverted = ctx.node("Or", [ctx.node("Less", [width, ctx.const(0.0, "zero")]),
                               ctx.node("Less", [height, ctx.const(0.0, "zero")])])
    return ctx.node("Where", [inverted, ctx.const(0.0, "zero_area"), ctx.node("Mul", [width, height])])


def _stable_order(ctx: LayerContext, rows: str, column: int, largest: bool) -> str:
    """``rows`` sorted by one column; equal keys keep their order (TopK's ties go to the lower index)."""
    return _sorted_by(ctx, rows, _column(ctx, rows, column), largest)


def _sorted_by(ctx: LayerContext, rows: str, key: str, largest: bool) -> str:
    count = ctx.node("Shape", [key])
    _, order = ctx.multi("TopK", [key, count], [ctx.fresh("keys"), ctx.fresh("order")], axis=0,
                         largest=int(largest), sorted=1)
    return ctx.node("Gather", [rows, order])


def _sort_rows(ctx: LayerContext, rows: str, classes: int, keep_top_k: int) -> str:
    """Caffe's order (image, label, score descending), keeping each image's ``keep_top_k`` best (-1: all)."""
    rows = _stable_order(ctx, rows, 2, largest=True)
    if keep_top_k > -1:
        rows = _keep_best_per_image(ctx, _stable_order(ctx, rows, 0, largest=False), keep_top_k)
    image, label = (_column(ctx, rows, c) for c in (0, 1))
    key = ctx.node("Add", [ctx.node("Mul", [image, ctx.const(float(classes), "classes")]), label])
    return _sorted_by(ctx, rows, key, largest=False)


def _keep_best_per_image(ctx: LayerContext, rows: str, keep_top_k: int) -> str:
    """The first ``keep_top_k`` rows of every image, of rows sorted by image then descending score."""
    image = ctx.node("Cast", [_column(ctx, rows, 0)], to=TensorProto.INT64)
    images = ctx.node("Range", [_int(ctx, 0, "zero"), _batch(ctx), _int(ctx, 1, "one")])
    member = ctx.node("Cast", [ctx.node("Equal", [ctx.unsqueeze(image, [1]), ctx.unsqueeze(images, [0])])],
                      to=TensorProto.INT64)
    starts = ctx.node("CumSum", [ctx.reduce("ReduceSum", member, [0], keepdims=False), _int(ctx, 0, "axis0")],
                      exclusive=1)
    count = ctx.node("Squeeze", [ctx.node("Shape", [image]), ctx.ints([0], "axes")])
    position = ctx.node("Range", [_int(ctx, 0, "zero"), count, _int(ctx, 1, "one")])
    rank = ctx.node("Sub", [position, ctx.node("Gather", [starts, image])])
    kept = ctx.node("NonZero", [ctx.node("Less", [rank, _int(ctx, keep_top_k, "keep_top_k")])])
    return ctx.node("Gather", [rows, ctx.node("Squeeze", [kept, ctx.ints([0], "axes")])])


def _column(ctx: LayerContext, rows: str, column: int) -> str:
    """One column of (M, 7) rows, as (M,)."""
    return ctx.node("Squeeze", [ctx.node("Gather", [rows, ctx.ints([column], "column")], axis=1), ctx.ints([1], "axes")])


def _int(ctx: LayerContext, value: int, hint: str) -> str:
    """An int64 scalar constant."""
    return ctx.const(value, hint, np.int64)


def _batch(ctx: LayerContext) -> str:
    """The batch size as an int64 scalar."""
    shape = ctx.node("Shape", [ctx.bottom(1)])
    return ctx.node("Squeeze", [ctx.node("Slice", [shape, ctx.ints([0], "s"), ctx.ints([1], "e")]), ctx.ints([0], "axes")])


def _or_empty_rows(ctx: LayerContext, rows: str) -> str:
    """``rows``, or Caffe's one row ``[image, -1 x 6]`` per image when there are none."""
    batch = _batch(ctx)
    images = ctx.node("Cast", [ctx.node("Range", [_int(ctx, 0, "zero"), batch,
                                                  _int(ctx, 1, "one")])], to=TensorProto.FLOAT)
    fillers = ctx.node("Expand", [ctx.const([[-1.0] * (ROW_WIDTH - 1)], "fill"),
                                  ctx.node("Concat", [ctx.unsqueeze(batch, [0]), ctx.ints([ROW_WIDTH - 1], "w")],
                                           axis=0)])
    empty = ctx.node("Concat", [ctx.unsqueeze(images, [1]), fillers], axis=1)
    count = ctx.node("Shape", [rows])
    count = ctx.node("Slice", [count, ctx.ints([0], "s"), ctx.ints([1], "e")])
    none = ctx.node("Cast", [ctx.node("Equal", [count, ctx.ints([0], "zero_rows")])], to=TensorProto.INT64)
    end = ctx.node("Add", [count, ctx.node("Mul", [none, ctx.unsqueeze(batch, [0])])])
    return ctx.node("Slice", [ctx.node("Concat", [rows, empty], axis=0), ctx.ints([0], "start"), end, ctx.ints([0], "axis")])
