"""Two nets blob by blob: where do they start to differ?

Both nets run on the same inputs; for every blob name they share (its final
version) the table gives the max abs difference, the difference relative to
max(1, max |A|), and the cosine similarity. The first blob, in A's layer
order, whose relative difference exceeds the tolerance is the first
divergence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Net

DIVERGENCE = 1e-4


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
    layer that last wrote them)."""
    import cv2

    loaded = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    producers = [net.final(name).producer for name in names]

    def run(inputs: np.ndarray) -> dict[str, np.ndarray]:
        loaded.setInput(inputs)
        return dict(zip(names, loaded.forward(producers)))

    return run
