"""Caffe's weight fillers (filler.hpp), computed with numpy from a seeded generator.

fan_in is count / shape[0] and fan_out count / shape[1] (count for a 1-D
blob), as Caffe defines them for a (num_output, inputs, ...) weight.
"""
from __future__ import annotations

import numpy as np

from .. import caffe_pb2
from ..errors import CaffeSurgeryError

Filler = caffe_pb2.FillerParameter


def constant_filler(value: float) -> Filler:
    """A ``constant`` FillerParameter with the given value."""
    return Filler(type="constant", value=value)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    count = int(np.prod(shape)) if shape else 1
    fan_in = count // shape[0] if shape else count
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(param: Filler, shape: tuple[int, ...]) -> float:
    """The n of xavier/msra: fan_in, fan_out or their average per ``variance_norm``."""
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == Filler.FAN_OUT:
        return float(fan_out)
    if param.variance_norm == Filler.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def _gaussian(param: Filler, shape, rng):
    values = rng.normal(param.mean, param.std, shape)
    if param.sparse >= 0:
        if len(shape) < 2:
            raise CaffeSurgeryError("a sparse gaussian filler needs a blob with at least 2 axes")
        keep = rng.random(shape) < param.sparse / shape[0]
        values = values * keep
    return values


def _positive_unitball(param: Filler, shape, rng):
    values = rng.random(shape)
    rows = values.reshape(shape[0], -1) if shape else values.reshape(1, -1)
    return (rows / rows.sum(axis=1, keepdims=True)).reshape(shape)


def _xavier(param: Filler, shape, rng):
    scale = np.sqrt(3.0 / _variance_n(param, shape))
    return rng.uniform(-scale, scale, shape)


def _msra(param: Filler, shape, rng):
    return rng.normal(0.0, np.sqrt(2.0 / _variance_n(param, shape)), shape)


def _bilinear(param: Filler, shape, rng):
    """Bilinear upsampling kernels for a (C, 1, K, K) Deconvolution weight."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CaffeSurgeryError(f"the bilinear filler needs a 4-D blob with square kernels, got {tuple(shape)}")
    f = np.ceil(shape[3] / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    y, x = np.meshgrid(np.arange(shape[2]), np.arange(shape[3]), indexing="ij")
    kernel = (1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))
    return np.broadcast_to(kernel, shape)


_FILLERS = {
    "constant": lambda p, shape, rng: np.full(shape, p.value),
    "uniform": lambda p, shape, rng: rng.uniform(p.min, p.max, shape),
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(param: Filler, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 array of ``shape`` filled as Caffe's filler ``param.type`` would fill it."""
    try:
        make = _FILLERS[param.type]
    except KeyError:
        raise CaffeSurgeryError(f"unknown filler type '{param.type}' (known: {', '.join(_FILLERS)})") from None
    return np.array(make(param, tuple(shape), rng), dtype=np.float32)
