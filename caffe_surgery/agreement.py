"""How closely a candidate net (pruned, converted) reproduces a reference net, without labels.

For nets whose outputs are not class scores (detectors, landmark and super-resolution nets):

* ``detections``: the share of the reference's detections (DetectionOutput rows with score >=
  ``score_threshold``) that the candidate reproduces, each matched one-to-one (greedily, best reference
  score first, to the unmatched candidate detection of the same image and label with the highest IoU) at
  IoU >= ``iou_threshold``; the candidate's detections count at the same score threshold. 1.0 when the
  reference has no detection above the threshold.
* ``rel-error``: ||a - b|| / ||a|| over all outputs together (0 is perfect), a the reference.
* ``cosine``: a·b / (||a|| ||b||) over all outputs together (1 is perfect).

``agreement(reference, candidate, kind)`` is the entry point; ``quality`` turns any kind into a figure
where the reference scores 1.0 and higher is better (what a pruning tolerance compares).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import CaffeSurgeryError

KINDS = ("detections", "rel-error", "cosine")
SCORE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.5
ROW = 7  # image, label, score, xmin, ymin, xmax, ymax

Outputs = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [xmin, ymin, xmax, ymax] box with each row of ``boxes`` (0 for empty boxes)."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def sorted_detections(rows: np.ndarray) -> np.ndarray:
    """The real detections of a DetectionOutput top as (M, 7), by image, label and descending score; leaves
    out Caffe's '-1' rows for images without detections and the all-zero rows OpenCV pads with."""
    rows = np.asarray(rows).reshape(-1, ROW)
    rows = rows[(rows[:, 1] >= 0) & np.abs(rows).any(axis=1)]
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def detection_matches(reference: np.ndarray, candidate: np.ndarray, score_threshold: float = SCORE_THRESHOLD,
                      iou_threshold: float = IOU_THRESHOLD) -> tuple[int, int]:
    """(reference detections reproduced, reference detections) for two DetectionOutput tops."""
    wanted, offered = (rows[rows[:, 2] >= score_threshold].astype(np.float64)
                       for rows in (sorted_detections(reference), sorted_detections(candidate)))
    taken = np.zeros(len(offered), dtype=bool)
    matched = 0
    for row in wanted[np.argsort(-wanted[:, 2], kind="stable")]:
        same = np.nonzero(~taken & (offered[:, 0] == row[0]) & (offered[:, 1] == row[1]))[0]
        if same.size == 0:
            continue
        overlaps = box_iou(row[3:], offered[same, 3:])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold:
            taken[same[best]] = True
            matched += 1
    return matched, len(wanted)


def _arrays(outputs: Outputs) -> list[np.ndarray]:
    if isinstance(outputs, np.ndarray):
        return [outputs]
    return [np.asarray(a) for a in (outputs.values() if isinstance(outputs, Mapping) else outputs)]


def _flat(outputs: Outputs) -> np.ndarray:
    """All outputs as one float64 vector."""
    return np.concatenate([a.astype(np.float64).ravel() for a in _arrays(outputs)])


def agreement(reference: Outputs, candidate: Outputs, kind: str, score_threshold: float = SCORE_THRESHOLD,
              iou_threshold: float = IOU_THRESHOLD) -> float:
    """The ``kind`` figure of ``candidate`` against ``reference`` (same output names in the same order, or
    two arrays)."""
    tracker = AgreementTracker(kind, score_threshold, iou_threshold)
    tracker.update(reference, candidate)
    return tracker.value()


def quality(figure: float, kind: str) -> float:
    """``figure`` on a scale where perfect agreement is 1.0 and higher is better (1 - relative error)."""
    return 1.0 - figure if kind == "rel-error" else figure


class AgreementTracker:
    """Accumulates an agreement figure over batches: detections pooled, errors and cosines over all values
    (relative error 0 and cosine 1 when both sides are all zero; inf and 0 when only one is)."""

    def __init__(self, kind: str, score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD):
        if kind not in KINDS:
            raise CaffeSurgeryError(f"unknown agreement kind '{kind}' (choose one of {', '.join(KINDS)})")
        self.kind, self.score_threshold, self.iou_threshold = kind, score_threshold, iou_threshold
        self.matched = self.wanted = 0
        self.dot = self.ref_sq = self.cand_sq = self.diff_sq = 0.0

    def update(self, reference: Outputs, candidate: Outputs) -> None:
        """Add one batch of outputs (arrays in the same order on both sides)."""
        if self.kind == "detections":
            for r, c in zip(_arrays(reference), _arrays(candidate)):
                matched, wanted = detection_matches(r, c, self.score_threshold, self.iou_threshold)
                self.matched += matched
                self.wanted += wanted
            return
        a, b = _flat(reference), _flat(candidate)
        self.dot += float(a @ b)
        self.ref_sq += float(a @ a)
        self.cand_sq += float(b @ b)
        self.diff_sq += float((a - b) @ (a - b))

    def value(self) -> float:
        """The figure over every batch so far."""
        if self.kind == "detections":
            return self.matched / self.wanted if self.wanted else 1.0
        if self.kind == "rel-error":
            return float(np.sqrt(self.diff_sq / self.ref_sq)) if self.ref_sq else (0.0 if not self.diff_sq else float("inf"))
        norm = np.sqrt(self.ref_sq * self.cand_sq)
        return float(self.dot / norm) if norm else (1.0 if not self.ref_sq and not self.cand_sq else 0.0)


# ------------------------------------------------------------- the measure a pruning tolerance uses

METRICS = ("top1", "agreement", "rel-error")
"""What ``prune --metric`` can hold a tolerance on: top-1 accuracy (needs labels), the share of the
original's detections reproduced (a net with a DetectionOutput output), the relative error of the outputs."""
_KIND_OF_METRIC = {"agreement": "detections", "rel-error": "rel-error"}


def detection_outputs(net) -> list[str]:
    """Names of the net's outputs that a DetectionOutput layer writes."""
    return [v.name for v in net.outputs() if net.producer(v).type == "DetectionOutput"]


def is_classifier(net) -> bool:
    """Whether the net scores classes: an Accuracy or SoftmaxWithLoss layer, or a single Softmax output."""
    if any(layer.type in ("Accuracy", "SoftmaxWithLoss") for layer in net.layers):
        return True
    outputs = net.outputs()
    return len(outputs) == 1 and net.producer(outputs[0]).type == "Softmax"


def choose_metric(net, has_labels: bool, requested: str = "auto") -> str:
    """The metric to use: ``requested``, or for 'auto' agreement on a detector, top-1 on a classifier with
    labelled data, else the relative error; an error for a metric the net or data cannot give."""
    detects = bool(detection_outputs(net))
    if requested == "auto":
        if detects:
            return "agreement"
        return "top1" if has_labels and is_classifier(net) else "rel-error"
    if requested == "top1" and not has_labels:
        raise CaffeSurgeryError("the data has no labels, so top-1 accuracy cannot be measured: use --metric "
                                "rel-error" + (" or agreement" if detects else "") + " (agreement with the original "
                                "net's outputs)")
    if requested == "agreement" and not detects:
        raise CaffeSurgeryError("--metric agreement needs a DetectionOutput output; use rel-error for other nets")
    if requested not in METRICS:
        raise CaffeSurgeryError(f"unknown metric '{requested}' (choose auto or one of {', '.join(METRICS)})")
    return requested


class OutputAgreement:
    """The original net's outputs on held batches, and how closely another net reproduces them."""

    def __init__(self, net, shapes, batches, metric: str, runtime_options: dict | None = None,
                 score_threshold: float = SCORE_THRESHOLD):
        self.kind = _KIND_OF_METRIC[metric]
        self.names = detection_outputs(net) if self.kind == "detections" else [v.name for v in net.outputs()]
        self.batches = batches
        self.runtime_options = runtime_options or {}
        self.score_threshold = score_threshold
        self.reference = self._outputs(net, shapes)

    def _outputs(self, net, shapes) -> list[list[np.ndarray]]:
        from .backends import open_runtime

        taps = [net.final(name) for name in self.names]
        runtime = open_runtime(net, shapes, taps=taps, outputs=(), **self.runtime_options)
        return [[result[tap.key] for tap in taps] for result in map(runtime.run, (images for images, _ in self.batches))]

    def figures(self, net, shapes) -> dict[str, float]:
        """The net against the original: detections reproduced, or relative error and cosine similarity."""
        kinds = ("detections",) if self.kind == "detections" else ("rel-error", "cosine")
        trackers = [AgreementTracker(kind, self.score_threshold) for kind in kinds]
        for reference, candidate in zip(self.reference, self._outputs(net, shapes)):
            for tracker in trackers:
                tracker.update(reference, candidate)
        return {kind: tracker.value() for kind, tracker in zip(kinds, trackers)}

    def quality(self, net, shapes) -> float:
        """1.0 for a net that reproduces the original, less the further it is (what a tolerance compares)."""
        return quality(self.figures(net, shapes)[self.kind], self.kind)
