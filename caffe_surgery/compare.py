"""Two nets blob by blob: where do they start to differ?

Both nets run on the same inputs; for every blob name they share (its final
version) the table gives the max abs difference, the difference relative to
max(1, max |A|), and the cosine similarity. The first blob, in A's layer
order, whose relative difference exceeds the tolerance is the first
divergence.

The outputs (A's deploy outputs that B also produces) are checked against
tolerances the polygraphy way: every element within |a - b| <= atol + rtol * |b|
(a from net A, b from net B); their agreement figures (detections reproduced for a
DetectionOutput, relative error and cosine otherwise) come with them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import CaffeSurgeryError
from .graph import Net

DIVERGENCE = 1e-4
ATOL = 1e-4
RTOL = 1e-4


@dataclass
class BlobDifference:
    name: str
    shape_a: tuple
    shape_b: tuple
    max_abs: float | None
    relative: float | None
    cosine: float | None

    @property
    def diverges(self) -> bool:
        return self.relative is None or self.relative > DIVERGENCE


def shared_blobs(a: Net, b: Net) -> list[str]:
    """Blob names both nets produce, in A's order (data inputs excluded)."""
    produced_b = {v.name for layer in b.layers if layer.bottoms for v in layer.tops}
    names = []
    for layer in a.layers:
        for top in layer.tops:
            if layer.bottoms and top.name in produced_b and top.name not in names:
                names.append(top.name)
    return names


def difference(name: str, x: np.ndarray, y: np.ndarray) -> BlobDifference:
    """How far ``y`` is from ``x`` (None figures when the shapes differ)."""
    if x.shape != y.shape:
        return BlobDifference(name, x.shape, y.shape, None, None, None)
    x64, y64 = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    max_abs = float(np.abs(x64 - y64).max()) if x64.size else 0.0
    norm = np.linalg.norm(x64) * np.linalg.norm(y64)
    cosine = float(x64 @ y64 / norm) if norm else (1.0 if max_abs == 0 else 0.0)
    return BlobDifference(name, x.shape, y.shape, max_abs, max_abs / max(1.0, float(np.abs(x64).max(initial=0))), cosine)


def run_onnxruntime(net: Net, shapes, names: list[str], inputs: np.ndarray, runtime_options: dict) -> dict[str, np.ndarray]:
    """Final versions of the named blobs, computed by onnxruntime."""
    from .runtime import Runtime

    taps = [net.final(name) for name in names]
    outputs = Runtime(net, shapes, taps=taps, outputs=(), **runtime_options).run(inputs)
    return {name: outputs[tap.key] for name, tap in zip(names, taps)}


def run_opencv(net: Net, prototxt: str, weights: str, names: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The named blobs as OpenCV's Caffe importer computes them (asked for by the layer that last wrote them);
    a net OpenCV cannot run (a fork type it lacks, such as Upsample) is one line naming OpenCV's reason."""
    import cv2

    try:
        loaded = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        loaded.setInput(inputs)
        return dict(zip(names, loaded.forward([net.final(name).producer for name in names])))
    except cv2.error as exc:
        reason = re.sub(r"^.*? error: \([^)]*\)\s*", "", str(exc).strip().splitlines()[0])
        raise CaffeSurgeryError(f"OpenCV cannot run this net: {reason}", file=str(prototxt)) from None


def compare(a_values: dict[str, np.ndarray], b_values: dict[str, np.ndarray], names: list[str]) -> list[BlobDifference]:
    """The per-blob differences, in order."""
    return [difference(name, a_values[name], b_values[name]) for name in names]


@dataclass
class OutputCheck:
    """One output against the tolerances: the largest absolute and relative (to |b|) differences."""

    name: str
    max_abs: float | None
    max_rel: float | None
    passed: bool
    agreement: dict


def check_output(name: str, x: np.ndarray, y: np.ndarray, atol: float, rtol: float, detections: bool,
                 score_threshold: float) -> OutputCheck:
    """``y`` (net B) against ``x`` (net A): every element within atol + rtol * |y|; shapes must agree.
    ``detections``: the output is a DetectionOutput top, compared as its detections sorted by image, label
    and score (whatever the order and padding of the consumer); its agreement is the share of A's
    detections scoring at least ``score_threshold`` that B reproduces."""
    from .agreement import agreement, sorted_detections

    if detections:
        x, y = sorted_detections(x), sorted_detections(y)
        figures = {"detections": agreement(x, y, "detections", score_threshold)}
    elif x.shape == y.shape:
        figures = {kind: agreement(x, y, kind) for kind in ("rel-error", "cosine")}
    else:
        figures = {}
    if x.shape != y.shape:
        return OutputCheck(name, None, None, False, figures)
    a, b = x.astype(np.float64), y.astype(np.float64)
    gap = np.abs(a - b)
    if not gap.size:
        return OutputCheck(name, 0.0, 0.0, True, figures)
    relative = np.divide(gap, np.abs(b), out=np.where(gap > 0, np.inf, 0.0), where=np.abs(b) > 0)
    passed = bool((gap <= atol + rtol * np.abs(b)).all())
    return OutputCheck(name, float(gap.max()), float(relative.max()), passed, figures)


def output_names(a: Net) -> list[str]:
    """A's deploy outputs (blob names), which B must produce too."""
    from .onnx_export import default_outputs

    return [v.name for v in default_outputs(a)]


def comparison_document(differences: list[BlobDifference], checks: list[OutputCheck], atol: float,
                        rtol: float) -> dict:
    """The ``compare --json`` document: every shared blob, then the outputs against the tolerances."""
    first = next((d.name for d in differences if d.diverges), None)
    failing = next((c.name for c in checks if not c.passed), None)
    return {"atol": atol, "rtol": rtol, "first_divergence": first, "first_failing_output": failing,
            "passed": failing is None,
            "blobs": [{"name": d.name, "shape_a": list(d.shape_a), "shape_b": list(d.shape_b), "max_abs": d.max_abs,
                       "relative": d.relative, "cosine": d.cosine} for d in differences],
            "outputs": [{"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "passed": c.passed,
                         "agreement": c.agreement} for c in checks]}
