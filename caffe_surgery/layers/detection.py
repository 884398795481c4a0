"""Detection layers: SSD's PriorBox and OpenCV's PriorBoxClustered (folded to constants), DetectionOutput,
Faster R-CNN's Proposal."""
from __future__ import annotations

from .. import caffe_pb2
from ..export.context import LayerContext
from ..export.priorbox import prior_boxes
from ..graph import Layer
from ..priors import box_sizes
from .channels import PIN
from .detection_output import detection_output
from .fork_params import fork_param
from .proposal import DEFAULT_RATIOS, DEFAULT_SCALES, proposal, proposal_param
from .registry import Departure, LayerType, NotApplicable, declare
from .shape_rules import Rule, Shape, fail


def prior_box(ctx: LayerContext) -> None:
    """A constant computed from the feature map (bottom 0) and image (bottom 1) sizes."""
    layer_hw = ctx.bottom_shape(0)[-2:]
    image_hw = ctx.bottom_shape(1)[-2:]
    try:
        priors = prior_boxes(ctx.param.prior_box_param, layer_hw, image_hw)
    except ValueError as exc:
        raise ctx.unsupported(f"with invalid parameters ({exc})") from exc
    ctx.node("Identity", [ctx.const(priors, "priors")], ctx.top())


def clustered_sizes(p: caffe_pb2.PriorBoxParameter) -> list[tuple[float, float]]:
    """PriorBoxClustered's explicit (width, height) pairs: OpenCV's ``width``/``height`` fields of
    prior_box_param, which this schema lacks (read from the kept fork text)."""
    fork = fork_param(p)
    widths, heights = fork.values("width"), fork.values("height")
    if not widths or len(widths) != len(heights):
        fail(f"PriorBoxClustered needs as many width as height values (at least one), got {len(widths)} "
             f"and {len(heights)}")
    if fork.values("offset_w") or fork.values("offset_h"):
        fail("PriorBoxClustered with offset_w/offset_h lists is not supported")
    return list(zip(widths, heights))


def prior_box_clustered(ctx: LayerContext) -> None:
    """A constant like PriorBox's, with the explicit box sizes."""
    sizes = clustered_sizes(ctx.param.prior_box_param)
    try:
        priors = prior_boxes(ctx.param.prior_box_param, ctx.bottom_shape(0)[-2:], ctx.bottom_shape(1)[-2:], sizes)
    except ValueError as exc:
        raise ctx.unsupported(f"with invalid parameters ({exc})") from exc
    ctx.node("Identity", [ctx.const(priors, "priors")], ctx.top())


def _prior_box_clustered(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(1, 2, H*W*boxes*4): box corners, then their variances."""
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"PriorBoxClustered needs a 4-D feature map, got {shape}")
    return Rule([(1, 2, shape[2] * shape[3] * len(clustered_sizes(layer.param.prior_box_param)) * 4)])


def _num_priors(p: caffe_pb2.PriorBoxParameter) -> int:
    """Caffe-SSD's count: one prior per min_size and aspect ratio, plus one per max_size."""
    if not len(p.min_size):
        fail("prior_box_param needs at least one min_size")
    if len(p.max_size) and len(p.max_size) != len(p.min_size):
        fail(f"{len(p.max_size)} max_size values for {len(p.min_size)} min_size values")
    return len(box_sizes(p))


def _prior_box(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(1, 2, H*W*num_priors*4): box corners, then their variances."""
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"PriorBox needs a 4-D feature map, got {shape}")
    return Rule([(1, 2, shape[2] * shape[3] * _num_priors(layer.param.prior_box_param) * 4)])


def _detection_output(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Data-dependent in Caffe: forward reshapes to (1, 1, detections kept, 7). The declared
    shape here is (1, 1, keep_top_k, 7), or (1, 1, 1, 7) without keep_top_k (Caffe's pre-forward shape)."""
    keep = layer.param.detection_output_param.keep_top_k
    return Rule([(1, 1, keep if keep > 0 else 1, 7)])


def _proposal(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Faster R-CNN's RPN proposals from (scores (1, 2A, H, W), deltas (1, 4A, H, W), im_info (1, 3)):
    at most post_nms_topn rows [0, x1, y1, x2, y2] (data-dependent in Caffe; the declared shape is the
    bound), plus their scores (rows, 1) with a second top (see ``proposal``)."""
    p = proposal_param(layer)
    anchors = len(p.values("ratio") or DEFAULT_RATIOS) * len(p.values("scale") or DEFAULT_SCALES)
    scores, deltas = bottoms[0], bottoms[1]
    if len(scores) != 4 or scores[1] != 2 * anchors or deltas != (scores[0], 4 * anchors) + scores[2:]:
        fail(f"Proposal with {anchors} anchors needs (N, {2 * anchors}, H, W) scores and (N, {4 * anchors}, H, W) "
             f"deltas, got {scores} and {deltas}")
    rows = p.get("post_nms_topn", 300)
    rows = rows if rows > 0 else scores[2] * scores[3] * anchors
    return Rule([(rows, 5), (rows, 1)][:len(layer.tops)])


def _priorbox_departs(layer: Layer) -> bool:
    p = layer.param.prior_box_param
    return p.HasField("img_size") or p.HasField("img_h") or p.HasField("img_w") or not len(p.variance)


_NO_TORCH = NotApplicable("not differentiable with respect to its inputs; no torch op")

declare(
    LayerType("PriorBox", shape=_prior_box, export=prior_box, channels=PIN,
              rewrite=NotApplicable("it reads only its bottoms' shapes and has no blobs"), train=_NO_TORCH,
              bottoms=2,
              departures=(Departure("OpenCV's PriorBox ignores img_size/img_h/img_w and needs a variance",
                                    _priorbox_departs),)),
    LayerType("PriorBoxClustered", shape=_prior_box_clustered, export=prior_box_clustered, channels=PIN,
              rewrite=NotApplicable("it reads only its bottoms' shapes and has no blobs"), train=_NO_TORCH,
              bottoms=2,
              departures=(Departure("OpenCV's PriorBox ignores img_size/img_h/img_w and needs a variance",
                                    _priorbox_departs),)),
    LayerType("Proposal", shape=_proposal,
              export=proposal,
              channels=PIN, rewrite=NotApplicable("it mixes channels (pinned) and has no blobs"), train=_NO_TORCH,
              bottoms=3, tops=(1, 2),
              departures=(Departure("OpenCV's Proposal gives other ROIs than py-faster-rcnn's (its own decoding and "
                                    "box convention: 7 of 40 rows agree on the generated net)"),)),
    LayerType("DetectionOutput", shape=_detection_output,
              export=detection_output,
              channels=PIN, rewrite=NotApplicable("it mixes channels (pinned)"), train=_NO_TORCH, bottoms=(3, 4),
              departures=(
                  Departure("OpenCV pads each image's rows with zeros up to keep_top_k and, where keep_top_k cuts, "
                            "orders them by score (Caffe: by label)", as_sets=True),
                  Departure("OpenCV rejects a prior bottom with variances when variance_encoded_in_target",
                            lambda layer: layer.param.detection_output_param.variance_encoded_in_target),)),
)
