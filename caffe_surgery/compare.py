"""Two nets blob by blob: where do they start to differ?

Both nets run on the same inputs; for every blob name they share (its final
version) the table gives the max abs difference, the difference relative to
max(1, max |A|), and the cosine similarity. The first blob, in A's layer
order, whose relative difference exceeds the tolerance is the first
divergence. The figures are summed batch by batch, so a long comparison holds
one batch of values at a time.

The outputs (A's deploy outputs that B also produces) are checked against
tolerances the polygraphy way: every element within |a - b| <= atol + rtol * |b|
(a from net A, b from net B); their agreement figures (detections reproduced for a
DetectionOutput, relative error and cosine otherwise) come with them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from .agreement import SCORE_THRESHOLD
from .errors import CaffeSurgeryError
from .graph import Net

DIVERGENCE = 1e-4
ATOL = 1e-4
RTOL = 1e-4
COMPARE_BATCH = 64
"""Samples compared per run of both nets."""

logger = logging.getLogger(__name__)


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


class DifferenceSums:
    """Running figures of how far B's values of one blob are from A's, over batches (so a long comparison
    holds one batch at a time): max |A-B|, max |A|, A.B, |A|^2, |B|^2."""

    def __init__(self):
        self.shape_a = self.shape_b = None
        self.samples, self.max_abs, self.max_a, self.dot, self.norm_a, self.norm_b = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one batch of A's and B's values (batch axis first)."""
        self.shape_a, self.shape_b = x.shape[1:], y.shape[1:]
        self.samples += len(x)
        if x.shape != y.shape:
            return
        x64, y64 = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        if x64.size:
            self.max_abs = max(self.max_abs, float(np.abs(x64 - y64).max()))
            self.max_a = max(self.max_a, float(np.abs(x64).max()))
        self.dot += float(x64 @ y64)
        self.norm_a += float(x64 @ x64)
        self.norm_b += float(y64 @ y64)

    def result(self, name: str) -> BlobDifference:
        shape_a, shape_b = (self.samples,) + tuple(self.shape_a), (self.samples,) + tuple(self.shape_b)
        if shape_a != shape_b:
            return BlobDifference(name, shape_a, shape_b, None, None, None)
        norm = np.sqrt(self.norm_a) * np.sqrt(self.norm_b)
        cosine = float(self.dot / norm) if norm else (1.0 if self.max_abs == 0 else 0.0)
        return BlobDifference(name, shape_a, shape_b, self.max_abs, self.max_abs / max(1.0, self.max_a), cosine)


def onnxruntime_runner(net: Net, shapes, names: list[str], runtime_options: dict):
    """A function of inputs -> final versions of the named blobs, computed by onnxruntime (one session)."""
    from .runtime import Runtime

    taps = [net.final(name) for name in names]
    runtime = Runtime(net, shapes, taps=taps, outputs=(), **runtime_options)

    def run(inputs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = runtime.run(inputs)
        return {name: outputs[tap.key] for name, tap in zip(names, taps)}

    return run


def opencv_runner(net: Net, prototxt: str, weights: str, names: list[str]):
    """A function of inputs -> the named blobs as OpenCV's Caffe importer computes them (asked for by the
    layer that last wrote them); a net OpenCV cannot run (a fork type it lacks, such as Upsample) is one
    line naming OpenCV's reason."""
    import cv2

    def refused(exc: Exception) -> CaffeSurgeryError:
        reason = re.sub(r"^.*? error: \([^)]*\)\s*", "", str(exc).strip().splitlines()[0])
        return CaffeSurgeryError(f"OpenCV cannot run this net: {reason}", file=str(prototxt))

    try:
        loaded = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    except cv2.error as exc:
        raise refused(exc) from None
    producers = [net.final(name).producer for name in names]

    def run(inputs: np.ndarray) -> dict[str, np.ndarray]:
        try:
            loaded.setInput(inputs)
            return dict(zip(names, loaded.forward(producers)))
        except cv2.error as exc:
            raise refused(exc) from None

    return run


@dataclass
class OutputCheck:
    """One output against the tolerances: the largest absolute and relative (to |b|) differences."""

    name: str
    max_abs: float | None
    max_rel: float | None
    passed: bool
    agreement: dict


class OutputTolerance:
    """Running check of one output of B against A's over batches: every element within atol + rtol * |b|
    (shapes must agree), and its agreement figures. ``detections``: a DetectionOutput top, compared as its
    detections sorted by image, label and score (whatever the order and padding of the consumer); its
    agreement is the share of A's detections scoring at least ``score_threshold`` that B reproduces."""

    def __init__(self, name: str, atol: float, rtol: float, detections: bool, score_threshold: float):
        from .agreement import AgreementTracker

        self.name, self.atol, self.rtol, self.detections = name, atol, rtol, detections
        kinds = ("detections",) if detections else ("rel-error", "cosine")
        self.trackers = {kind: AgreementTracker(kind, score_threshold) for kind in kinds}
        self.max_abs, self.max_rel, self.passed, self.shapes_agree = 0.0, 0.0, True, True

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one batch of A's (``x``) and B's (``y``) values."""
        from .agreement import sorted_detections

        if self.detections:
            x, y = sorted_detections(x), sorted_detections(y)
            self.trackers["detections"].update(x, y)
        if x.shape != y.shape:
            self.shapes_agree = self.passed = False
            return
        if not self.detections:
            for tracker in self.trackers.values():
                tracker.update(x, y)
        a, b = x.astype(np.float64), y.astype(np.float64)
        gap = np.abs(a - b)
        if gap.size:
            relative = np.divide(gap, np.abs(b), out=np.where(gap > 0, np.inf, 0.0), where=np.abs(b) > 0)
            self.max_abs = max(self.max_abs, float(gap.max()))
            self.max_rel = max(self.max_rel, float(relative.max()))
            self.passed &= bool((gap <= self.atol + self.rtol * np.abs(b)).all())

    def result(self) -> OutputCheck:
        figures = {kind: tracker.value() for kind, tracker in self.trackers.items()
                   if self.shapes_agree or kind == "detections"}
        if not self.shapes_agree:
            return OutputCheck(self.name, None, None, False, figures)
        return OutputCheck(self.name, self.max_abs, self.max_rel, self.passed, figures)


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


def compare_files(a_prototxt: str, a_weights: str, b_prototxt: str, b_weights: str, *,
                  input_shapes: dict | None = None, data: str | None = None, limit: int | None = None,
                  backend: str = "onnxruntime", device: str = "auto", threads: int | None = None,
                  atol: float = ATOL, rtol: float = RTOL, score_threshold: float = SCORE_THRESHOLD):
    """Run two pairs on the same inputs (``data``, else seeded random inputs; ``limit`` samples, default 1),
    B in onnxruntime or OpenCV (``backend``), and return how far B is from A blob by blob
    (``BlobDifference`` list) and A's outputs checked against atol/rtol (``OutputCheck`` list)."""
    from .dataflow import input_layer, open_source
    from .model import load_model

    model_a = load_model(a_prototxt, a_weights, input_shapes=input_shapes)
    model_b = load_model(b_prototxt, b_weights, input_shapes=input_shapes)
    names = shared_blobs(model_a.net, model_b.net)
    outputs = output_names(model_a.net)
    missing = [name for name in outputs if name not in names]
    if missing:
        raise CaffeSurgeryError(f"net B does not produce net A's output(s) {', '.join(missing)}", file=b_prototxt)
    if backend == "opencv":
        names = _first_tops_only(model_b.net, names, outputs, b_prototxt)
    top = input_layer(model_a.net).tops[0]
    count = limit or 1
    chunk = min(count, COMPARE_BATCH)
    _check_compare_memory(model_a, model_b, names, top, chunk)
    if data:
        chunks = (images for images, _ in open_source(model_a.net, data).head(count).iter_batches(chunk))
    else:
        rng = np.random.default_rng(0)
        shape = tuple(model_a.shapes.blob(top)[1:])
        chunks = (rng.standard_normal((min(chunk, count - start),) + shape).astype(np.float32)
                  for start in range(0, count, chunk))
    options = {"device": device, "threads": threads}
    run_a = onnxruntime_runner(model_a.net, model_a.shapes, names, options)
    run_b = (opencv_runner(model_b.net, b_prototxt, b_weights, names) if backend == "opencv"
             else onnxruntime_runner(model_b.net, model_b.shapes, names, options))
    sums = {name: DifferenceSums() for name in names}
    tolerances = {name: OutputTolerance(name, atol, rtol, model_a.net.producer(model_a.net.final(name)).type
                                        == "DetectionOutput", score_threshold) for name in outputs}
    for images in chunks:  # one batch of inputs and blob values at a time
        values_a, values_b = run_a(images), run_b(images)
        for name in names:
            sums[name].add(values_a[name], values_b[name])
        for name, tolerance in tolerances.items():
            tolerance.add(values_a[name], values_b[name])
    return [sums[name].result(name) for name in names], [tolerance.result() for tolerance in tolerances.values()]


def _first_tops_only(net: Net, names: list[str], outputs: list[str], prototxt: str) -> list[str]:
    """The blobs OpenCV can be asked for: each its layer's first top (OpenCV returns a layer's output by the
    layer's name, and may reuse the memory of its other tops, e.g. a Pooling's mask, for later layers).
    The others are named in a warning; an output among them is an error."""
    later = [name for name in names if net.producer(net.final(name)).tops[0] != net.final(name)]
    if not later:
        return names
    if any(name in outputs for name in later):
        raise CaffeSurgeryError(f"OpenCV cannot return output(s) {', '.join(n for n in later if n in outputs)}: "
                                "not the first top of their layer; compare with --backend onnxruntime", file=prototxt)
    logger.warning("not compared on OpenCV: %s (not the first top of their layer; OpenCV returns only that one "
                   "reliably)", ", ".join(later))
    return [name for name in names if name not in later]


def _check_compare_memory(model_a, model_b, names, top, count: int) -> None:
    """Refuse, before anything is allocated, a comparison whose inputs and blob values exceed the memory limit."""
    from math import prod

    from .limits import check_allocation

    per_sample = prod(model_a.shapes.blob(top)[1:]) + sum(
        prod(model.shapes.blob(model.net.final(name))[1:]) for model in (model_a, model_b) for name in names)
    check_allocation(4 * count * per_sample, f"comparing a batch of {count} samples (inputs and every shared blob "
                                             "of both nets)")
