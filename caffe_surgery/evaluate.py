"""Accuracy and loss of a net on a data source, computed the way Caffe's layers define them.

The score blob is the first bottom of the net's Accuracy (or SoftmaxWithLoss)
layer, else the net's single output (the Softmax's input when that output is
a Softmax); top-k accuracy counts a sample right when
fewer than k other classes score at least as high as its label (Caffe's
Accuracy layer, where ties count against); the loss is SoftmaxWithLoss's mean -log softmax(score)[label].
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import CaffeSurgeryError
from .graph import BlobVersion, Net


@dataclass
class Evaluation:
    """Results of one evaluation pass."""

    samples: int = 0
    correct: dict[int, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    has_loss: bool = False
    seconds: float = 0.0

    def __repr__(self) -> str:
        figures = ", ".join(f"top-{k} {self.accuracy(k):.4f}" for k in sorted(self.correct))
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return f"Evaluation({self.samples} samples: {figures}{loss})"

    def accuracy(self, k: int) -> float:
        return self.correct.get(k, 0) / max(self.samples, 1)

    @property
    def loss(self) -> float | None:
        return self.loss_sum / max(self.samples, 1) if self.has_loss else None

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The counts and sums as arrays that add up over shards (``statistics.merge_arrays``)."""
        arrays = {"samples": np.array(self.samples), "loss_sum": np.array(self.loss_sum, dtype=np.float64),
                  "about/has_loss": np.array(self.has_loss)}
        arrays.update({f"correct/{k}": np.array(hits) for k, hits in self.correct.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], seconds: float = 0.0) -> "Evaluation":
        """An evaluation from (merged) ``to_arrays`` output."""
        correct = {int(key.split("/")[1]): int(value) for key, value in arrays.items() if key.startswith("correct/")}
        return cls(samples=int(arrays["samples"]), correct=correct, loss_sum=float(arrays["loss_sum"]),
                   has_loss=bool(arrays["about/has_loss"]), seconds=seconds)

    def as_dict(self) -> dict:
        return {"samples": self.samples, "accuracy": {f"top{k}": self.accuracy(k) for k in sorted(self.correct)},
                "loss": self.loss, "images_per_second": self.images_per_second}


def score_blob(net: Net) -> tuple[BlobVersion, bool]:
    """The blob holding class scores, and whether a SoftmaxWithLoss layer reads it."""
    for kind in ("Accuracy", "SoftmaxWithLoss"):
        layer = next((l for l in net.layers if l.type == kind), None)
        if layer is not None:
            has_loss = any(l.type == "SoftmaxWithLoss" and l.bottoms[0] == layer.bottoms[0] for l in net.layers)
            return layer.bottoms[0], has_loss
    outputs = net.outputs()
    if len(outputs) != 1:
        raise CaffeSurgeryError(f"cannot tell which output holds the class scores (outputs: "
                                f"{', '.join(o.name for o in outputs)}); add an Accuracy layer", file=net.source)
    producer = net.producer(outputs[0])
    if producer.type == "DetectionOutput":
        raise CaffeSurgeryError("a detector's output holds detections, not class scores: measure it against the "
                                "original with 'compare' or 'prune --metric agreement'", file=net.source,
                                layer=producer.name)
    if producer.type == "Softmax":
        return producer.bottoms[0], False  # the logits: same ranking, no ties from saturated probabilities
    return outputs[0], False


def top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Samples with fewer than k other classes scoring at least as high as the label (Caffe's Accuracy:
    a tie counts against the sample)."""
    flat = scores.reshape(scores.shape[0], -1)
    own = flat[np.arange(len(labels)), labels][:, None]
    return int(((flat >= own).sum(axis=1) - 1 < k).sum())


def softmax_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over the batch of -log softmax(scores)[label], computed stably."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float((log_norm - shifted[np.arange(len(labels)), labels]).sum())


def evaluate(net: Net, shapes, batches, top_k=(1,), runtime_options: dict | None = None) -> Evaluation:
    """Run every batch through the runtime (``runtime_options``: ``backends.open_runtime``'s) and accumulate
    accuracy (and loss)."""
    from .backends import open_runtime

    blob, has_loss = score_blob(net)
    runtime = open_runtime(net, shapes, taps=[blob], outputs=(), **(runtime_options or {}))
    result = Evaluation(correct={k: 0 for k in top_k}, has_loss=has_loss)
    started = time.perf_counter()
    for images, labels in batches:
        scores = runtime.run(images)[blob.key]
        labels = labels.astype(np.int64)
        result.samples += len(labels)
        for k in top_k:
            result.correct[k] += top_k_hits(scores, labels, k)
        if has_loss:
            result.loss_sum += softmax_loss(scores, labels)
    if not result.samples:
        raise CaffeSurgeryError("no samples to evaluate: an accuracy over nothing is not a figure")
    result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class EvaluationTask:
    """``evaluate`` as a task of ``cluster.map_shards``: (model, batches) -> mergeable counts."""

    top_k: tuple[int, ...]
    runtime_options: dict

    def __call__(self, model, batches) -> dict[str, np.ndarray]:
        return evaluate(model.net, model.shapes, batches, self.top_k, self.runtime_options).to_arrays()
