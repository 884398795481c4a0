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
    """The named blobs as OpenCV's Caffe importer computes them (asked for by the layer that last wrote them)."""
    import cv2

    loaded = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    loaded.setInput(inputs)
    return dict(zip(names, loaded.forward([net.final(name).producer for name in names])))


def compare(a_values: dict[str, np.ndarray], b_values: dict[str, np.ndarray], names: list[str]) -> list[BlobDifference]:
    """The per-blob differences, in order."""
    return [difference(name, a_values[name], b_values[name]) for name in names]
