"""Half-precision caffemodels, as OpenCV's ``cv::dnn::shrinkCaffeModel`` writes them, and what fp16 changes.

OpenCV's format: the blobs of Convolution and InnerProduct layers keep their
shape but hold their values as IEEE half floats in NVIDIA Caffe's ``raw_data``
(field 12) with ``raw_data_type: FLOAT16`` (field 10), the float ``data``
cleared; every other blob stays float32. OpenCV's Caffe importer and
``blobs.blob_to_array`` read both.
"""
from __future__ import annotations

import os

import numpy as np

from . import caffe_pb2
from .graph import Net

PRECISIONS = ("fp32", "fp16")
HALF_LAYER_TYPES = frozenset({"Convolution", "InnerProduct"})
"""The layer types whose blobs shrinkCaffeModel converts (its default list)."""


def halved(precision: str, layer_type: str) -> bool:
    """Whether a layer's blobs are written as half floats at this precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "fp16" and layer_type in HALF_LAYER_TYPES


def half_values(array: np.ndarray) -> bytes:
    """The little-endian IEEE half-float bytes of an array (round to nearest even)."""
    return np.ascontiguousarray(array, dtype="<f4").astype("<f2").tobytes()


def to_half_blob(blob: caffe_pb2.BlobProto) -> caffe_pb2.BlobProto:
    """A float32 ``data`` blob as shrinkCaffeModel leaves it: same shape fields, values in ``raw_data``."""
    out = caffe_pb2.BlobProto()
    out.CopyFrom(blob)
    out.ClearField("data")
    out.raw_data_type = caffe_pb2.FLOAT16
    out.raw_data = half_values(np.asarray(blob.data, dtype=np.float32))
    return out


def probe_difference(net: Net, shapes, prototxt: str | os.PathLike, weights: str | os.PathLike,
                     seed: int = 0) -> float:
    """Largest absolute difference between the outputs of an in-memory net and a written pair read back,
    both run by onnxruntime on one seeded random probe input (standard normal, batch 1)."""
    from .dataflow import item_shapes
    from .model import load_model
    from .runtime import Runtime

    inputs = {top.name: tuple(shapes.blob(top)) for layer in net.layers if not layer.bottoms for top in layer.tops}
    written = load_model(prototxt, weights, input_shapes=inputs, data_shapes=item_shapes(prototxt))
    runtimes = [Runtime(net, shapes), Runtime(written.net, written.shapes)]
    rng = np.random.default_rng(seed)
    probe = {name: rng.standard_normal((1,) + tuple(shape[1:])).astype(np.float32)
             for name, shape in runtimes[0].inputs.items()}
    ours, theirs = (runtime.run(probe) for runtime in runtimes)
    return max((float(np.max(np.abs(ours[key] - theirs[key]), initial=0.0)) for key in ours), default=0.0)


def fp16_note(net: Net, shapes, prototxt: str | os.PathLike, weights: str | os.PathLike) -> str:
    """One line saying what writing in fp16 changed: the outputs' largest difference on a probe input."""
    difference = probe_difference(net, shapes, prototxt, weights)
    return (f"fp16: {' and '.join(sorted(HALF_LAYER_TYPES))} blobs stored as half floats; outputs differ from "
            f"float32 by at most {difference:.3g} on a random probe input")
