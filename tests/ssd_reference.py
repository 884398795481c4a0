"""A numpy reference of Caffe's DetectionOutput layer (SSD), written from its semantics, box by box.

decode: CORNER adds the (variance-scaled) offsets to the prior corners; CORNER_SIZE scales them by the
prior's width/height first; CENTER_SIZE moves the prior's center by offset * size and scales its size by
exp(offset). Per image and non-background class: scores > confidence_threshold, the top_k best (stable
order), greedy NMS (a candidate goes when its IoU with a kept box exceeds the threshold; the threshold
shrinks by eta after each kept box while above 0.5); then the image keeps its keep_top_k best over all
classes. Rows: image, label, score, box; by image, label, descending score. No detection at all: one
row [image, -1 x 6] per image.
"""
from __future__ import annotations

import numpy as np

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def decode(loc: np.ndarray, prior: np.ndarray, variance: np.ndarray, code_type: int, in_target: bool) -> np.ndarray:
    """One box: ``loc``, ``prior``, ``variance`` are [xmin, ymin, xmax, ymax]-shaped 4-vectors (float32)."""
    v = np.ones(4, np.float32) if in_target else variance
    width, height = prior[2] - prior[0], prior[3] - prior[1]
    if code_type == CORNER:
        return prior + v * loc
    if code_type == CORNER_SIZE:
        return prior + v * loc * np.array([width, height, width, height], np.float32)
    center_x, center_y = (prior[0] + prior[2]) / np.float32(2), (prior[1] + prior[3]) / np.float32(2)
    cx = v[0] * loc[0] * width + center_x
    cy = v[1] * loc[1] * height + center_y
    w = np.exp(v[2] * loc[2]) * width
    h = np.exp(v[3] * loc[3]) * height
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def box_size(box: np.ndarray) -> float:
    if box[2] < box[0] or box[3] < box[1]:
        return 0.0
    return float((box[2] - box[0]) * (box[3] - box[1]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Caffe's JaccardOverlap of normalized boxes (0 when they do not touch)."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    inter = np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])], np.float32)
    inter_size = box_size(inter)
    union = box_size(a) + box_size(b) - inter_size
    return inter_size / union if union else float("nan")  # Caffe's 0 / 0: NaN, which suppresses


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, nms_threshold: float, eta: float,
        top_k: int) -> list[int]:
    """Caffe's ApplyNMSFast: indices kept, best first."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > threshold]
    if top_k > -1:
        order = order[:top_k]
    kept: list[int] = []
    adaptive = nms_threshold
    for index in order:
        keep = all(iou(boxes[index], boxes[k]) <= adaptive for k in kept)
        if keep:
            kept.append(index)
            if eta < 1 and adaptive > 0.5:
                adaptive *= eta
    return kept


def detection_output(loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, *, num_classes: int,
                     share_location: bool = True, background_label_id: int = 0, code_type: int = CORNER,
                     variance_encoded_in_target: bool = False, confidence_threshold: float = -np.inf,
                     nms_threshold: float = 0.3, top_k: int = -1, eta: float = 1.0, keep_top_k: int = -1
                     ) -> np.ndarray:
    """The layer's top, (1, 1, rows, 7), for bottoms of shapes (N, ...), (N, ...), (1, 2, priors * 4)."""
    batch = loc.shape[0]
    priors = prior.shape[-1] // 4
    loc_classes = 1 if share_location else num_classes
    loc = loc.reshape(batch, priors, loc_classes, 4).astype(np.float32)
    conf = conf.reshape(batch, priors, num_classes).astype(np.float32)
    prior_boxes = prior[0, 0].reshape(priors, 4).astype(np.float32)
    variances = prior[0, 1].reshape(priors, 4).astype(np.float32)
    rows = []
    for image in range(batch):
        decoded = np.array([[decode(loc[image, p, c], prior_boxes[p], variances[p], code_type,
                                    variance_encoded_in_target) for c in range(loc_classes)]
                            for p in range(priors)])
        kept = {}
        for label in range(num_classes):
            if label == background_label_id:
                continue
            boxes = decoded[:, 0 if share_location else label]
            kept[label] = nms(boxes, conf[image, :, label], confidence_threshold, nms_threshold, eta, top_k)
        found = [(conf[image, i, label], label, i) for label, indices in kept.items() for i in indices]
        if keep_top_k > -1 and len(found) > keep_top_k:
            found = sorted(found, key=lambda f: -f[0])[:keep_top_k]
            kept = {label: [i for _, l, i in found if l == label] for label in kept}
        for label in sorted(kept):
            for i in kept[label]:
                box = decoded[i, 0 if share_location else label]
                rows.append([image, label, conf[image, i, label], *box])
    if not rows:
        rows = [[image] + [-1] * 6 for image in range(batch)]
    return np.asarray(rows, np.float32).reshape(1, 1, -1, 7)


def comparable(detections: np.ndarray) -> np.ndarray:
    """Rows (image, label, score, box) sorted, less the all-zero rows OpenCV pads up to keep_top_k with: the
    same set of detections compares equal whatever the order (OpenCV sorts by score when keep_top_k cuts,
    Caffe by label)."""
    rows = detections.reshape(-1, 7)
    rows = rows[np.abs(rows).sum(axis=1) != 0]
    return rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0]))]
