"""The forward pass of each trainable Caffe layer type in torch, with Caffe's semantics.

``make_op(layer, bottom_shapes, phase)`` reads the layer's parameters once and
returns ``op(bottoms, blobs) -> tops``; autograd gives the backward pass.
Labels arrive as float tensors (Caffe blobs are float) and are rounded to
class indexes by the layers that read them.
"""
from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import torch
import torch.nn.functional as F

from .. import caffe_pb2
from ..errors import CaffeSurgeryError, UnsupportedLayerError
from ..graph import TEST, Layer
from ..layer_shapes import RULES, canonical_axis, pool_output

Tensor = torch.Tensor
Op = Callable[[list[Tensor], list[Tensor]], list[Tensor]]
Shape = tuple[int, ...]

_OPS: dict[str, Callable[[Layer, list[Shape], int], Op]] = {}
LOG_FLT_MIN = float(np.log(np.finfo(np.float32).tiny))

POOL = caffe_pb2.PoolingParameter
ELTWISE = caffe_pb2.EltwiseParameter
NORMALIZATION = caffe_pb2.LossParameter


def op(*types: str):
    """Register the op builder of the given layer types."""
    def register(fn):
        for name in types:
            _OPS[name] = fn
        return fn
    return register


def supported_types() -> list[str]:
    """Layer types ``make_op`` knows (data layers are fed by the caller)."""
    return sorted(_OPS)


def make_op(layer: Layer, bottoms: list[Shape], phase: int) -> Op:
    """The op computing ``layer``'s tops from its bottoms and blobs in ``phase``."""
    builder = _OPS.get(layer.type)
    if builder is None:
        raise UnsupportedLayerError(f"layer type '{layer.type}' cannot be trained (supported: "
                                    f"{', '.join(supported_types())})", layer=layer.name)
    return builder(layer, bottoms, phase)


def _spatial(p, name: str, hw: tuple[str, str], n: int, default: int) -> list[int]:
    """A convolution setting: the _h/_w pair, else the repeated field (one value or one per axis)."""
    if p.HasField(hw[0]) or p.HasField(hw[1]):
        return [int(getattr(p, hw[0])), int(getattr(p, hw[1]))]
    values = [int(v) for v in getattr(p, name)] or [default]
    return values * n if len(values) == 1 else values


@op("Convolution")
def _convolution(layer, bottoms, phase):
    p = layer.param.convolution_param
    n = len(bottoms[0]) - 2
    if canonical_axis(p.axis, len(bottoms[0])) != 1 or n not in (1, 2, 3):
        raise UnsupportedLayerError("only convolutions over 1 to 3 spatial axes after axis 1 can be trained",
                                    layer=layer.name)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    stride = _spatial(p, "stride", ("stride_h", "stride_w"), n, 1)
    pad = _spatial(p, "pad", ("pad_h", "pad_w"), n, 0)
    dilation = [int(v) for v in p.dilation] or [1]
    dilation = dilation * n if len(dilation) == 1 else dilation

    def run(x, blobs):
        bias = blobs[1] if p.bias_term else None
        return [conv(b, blobs[0], bias, stride, pad, dilation, p.group) for b in x]
    return run


@op("InnerProduct")
def _inner_product(layer, bottoms, phase):
    p = layer.param.inner_product_param
    axis = canonical_axis(p.axis, len(bottoms[0]))

    def run(x, blobs):
        flat = x[0].reshape(*x[0].shape[:axis], -1)
        weight = blobs[0].t() if p.transpose else blobs[0]
        return [F.linear(flat, weight, blobs[1] if p.bias_term else None)]
    return run


def _pool_pair(p, name: str, hw: tuple[str, str], default: int) -> tuple[int, int]:
    if p.HasField(hw[0]) or p.HasField(hw[1]):
        return int(getattr(p, hw[0])), int(getattr(p, hw[1]))
    value = int(getattr(p, name)) if p.HasField(name) else default
    return value, value


def _window_sizes(out: int, size: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's AVE divisor per output position: the window clipped to the padded extent [-pad, size+pad)."""
    start = np.arange(out) * stride - pad
    return np.minimum(start + kernel, size + pad) - start


@op("Pooling")
def _pooling(layer, bottoms, phase):
    """MAX/AVE with Caffe's rounding (CEIL unless round_mode FLOOR), last-window rule and AVE divisor."""
    p = layer.param.pooling_param
    if p.pool not in (POOL.MAX, POOL.AVE) or len(layer.tops) != 1:
        raise UnsupportedLayerError("only MAX and AVE pooling with one top can be trained", layer=layer.name)
    pad = (0, 0) if p.global_pooling else _pool_pair(p, "pad", ("pad_h", "pad_w"), 0)
    stride = (1, 1) if p.global_pooling else _pool_pair(p, "stride", ("stride_h", "stride_w"), 1)
    ceil_mode = p.round_mode == POOL.CEIL

    def run(x, blobs):
        x = x[0]
        size = tuple(x.shape[2:])
        kernel = size if p.global_pooling else _pool_pair(p, "kernel_size", ("kernel_h", "kernel_w"), 0)
        out = pool_output(tuple(x.shape), kernel, stride, pad, ceil_mode)
        extra = [max(0, (o - 1) * s + k - n - q) for o, s, k, n, q in zip(out, stride, kernel, size, pad)]
        border = (pad[1], extra[1], pad[0], extra[0])
        if p.pool == POOL.MAX:
            padded = F.pad(x, border, value=float("-inf")) if any(border) else x
            return [F.max_pool2d(padded, kernel, stride)[:, :, :out[0], :out[1]]]
        padded = F.pad(x, border) if any(border) else x
        sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)[:, :, :out[0], :out[1]]
        divisor = np.outer(*(_window_sizes(o, n, k, s, q) for o, n, k, s, q in zip(out, size, kernel, stride, pad)))
        return [sums / torch.as_tensor(divisor, dtype=x.dtype, device=x.device)]
    return run


@op("ReLU")
def _relu(layer, bottoms, phase):
    slope = layer.param.relu_param.negative_slope
    return lambda x, blobs: [F.leaky_relu(x[0], slope) if slope else F.relu(x[0])]


@op("Sigmoid")
def _sigmoid(layer, bottoms, phase):
    return lambda x, blobs: [torch.sigmoid(x[0])]


@op("TanH")
def _tanh(layer, bottoms, phase):
    return lambda x, blobs: [torch.tanh(x[0])]


@op("PReLU")
def _prelu(layer, bottoms, phase):
    return lambda x, blobs: [F.prelu(x[0], blobs[0].reshape(-1))]


@op("Dropout")
def _dropout(layer, bottoms, phase):
    """TRAIN: keep with probability 1-p and scale by 1/(1-p); TEST: identity."""
    ratio = layer.param.dropout_param.dropout_ratio
    if phase == TEST:
        return lambda x, blobs: [x[0]]
    scale = 1.0 / (1.0 - ratio)

    def run(x, blobs):
        keep = torch.rand_like(x[0]) >= ratio
        return [x[0] * keep * scale]
    return run


@op("LRN")
def _lrn(layer, bottoms, phase):
    p = layer.param.lrn_param
    if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        raise UnsupportedLayerError("only ACROSS_CHANNELS LRN can be trained", layer=layer.name)
    return lambda x, blobs: [F.local_response_norm(x[0], p.local_size, p.alpha, p.beta, p.k)]


@op("BatchNorm")
def _batch_norm(layer, bottoms, phase):
    """Batch statistics (and Caffe's moving sums in blobs 0-2) unless use_global_stats."""
    p = layer.param.batch_norm_param
    use_global = p.use_global_stats if p.HasField("use_global_stats") else phase == TEST
    fraction = p.moving_average_fraction

    def run(x, blobs):
        x = x[0]
        axes = [0] + list(range(2, x.dim()))
        view = (1, -1) + (1,) * (x.dim() - 2)
        if use_global:
            factor = blobs[2].reshape(())
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            mean, var = blobs[0] * scale, blobs[1] * scale
        else:
            mean = x.mean(axes)
            var = (x - mean.reshape(view)).square().mean(axes)
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                blobs[2].mul_(fraction).add_(1)
                blobs[0].mul_(fraction).add_(mean)
                blobs[1].mul_(fraction).add_(var, alpha=m / (m - 1) if m > 1 else 1.0)
        return [(x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + p.eps)]
    return run


@op("Scale")
def _scale(layer, bottoms, phase):
    """x * scale (+ bias); the scale is bottom[1] or a learned blob spanning axis..axis+num_axes."""
    p = layer.param.scale_param
    two = len(bottoms) == 2

    def run(x, blobs):
        scale = x[1] if two else blobs[0]
        start = canonical_axis(p.axis, x[0].dim()) if scale.dim() or not two else 0
        view = (1,) * start + tuple(scale.shape) + (1,) * (x[0].dim() - start - scale.dim())
        y = x[0] * scale.reshape(view)
        return [y + blobs[-1].reshape(view) if p.bias_term else y]
    return run


@op("Eltwise")
def _eltwise(layer, bottoms, phase):
    p = layer.param.eltwise_param
    coeffs = list(p.coeff) or [1.0] * len(bottoms)

    def run(x, blobs):
        if p.operation == ELTWISE.SUM:
            return [sum(c * b for c, b in zip(coeffs, x))]
        if p.operation == ELTWISE.PROD:
            return [prod(x[1:], start=x[0])]
        return [torch.stack(x).max(dim=0).values]
    return run


@op("Concat")
def _concat(layer, bottoms, phase):
    p = layer.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else canonical_axis(p.axis, len(bottoms[0]))
    return lambda x, blobs: [torch.cat(x, dim=axis)]


@op("Slice")
def _slice(layer, bottoms, phase):
    p = layer.param.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(p.axis, len(bottoms[0]))
    sizes = [shape[axis] for shape in RULES["Slice"][0](layer, bottoms).tops]
    return lambda x, blobs: list(torch.split(x[0], sizes, dim=axis))


@op("Split")
def _split(layer, bottoms, phase):
    return lambda x, blobs: [x[0]] * len(layer.tops)


@op("Silence")
def _silence(layer, bottoms, phase):
    return lambda x, blobs: []


@op("Reshape")
def _reshape(layer, bottoms, phase):
    rule = RULES["Reshape"][0]
    return lambda x, blobs: [x[0].reshape(rule(layer, [tuple(x[0].shape)]).tops[0])]


@op("Flatten")
def _flatten(layer, bottoms, phase):
    p = layer.param.flatten_param
    ndim = len(bottoms[0])
    start, end = canonical_axis(p.axis, ndim), canonical_axis(p.end_axis, ndim)
    return lambda x, blobs: [x[0].flatten(start, end)]


@op("Softmax")
def _softmax(layer, bottoms, phase):
    axis = canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return lambda x, blobs: [F.softmax(x[0], dim=axis)]


def _class_layout(scores: Tensor, labels: Tensor, axis: int, ignore: int | None, layer: Layer):
    """Scores as (outer, classes, inner), labels as (outer, inner) indexes, and the mask of counted labels."""
    outer, classes = prod(scores.shape[:axis]), scores.shape[axis]
    scores = scores.reshape(outer, classes, -1)
    labels = labels.reshape(outer, scores.shape[2]).round().long()
    valid = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    if bool(((labels < 0) | (labels >= classes))[valid].any()):
        raise CaffeSurgeryError(f"a label is outside [0, {classes})", layer=layer.name)
    return scores, torch.where(valid, labels, 0), valid


def _ignore_label(param) -> int | None:
    return param.ignore_label if param.HasField("ignore_label") else None


def _normalization(p: caffe_pb2.LossParameter) -> int:
    """Caffe's rule: the legacy ``normalize`` bool counts only when ``normalization`` is not given."""
    if not p.HasField("normalization") and p.HasField("normalize"):
        return NORMALIZATION.VALID if p.normalize else NORMALIZATION.BATCH_SIZE
    return p.normalization


@op("SoftmaxWithLoss")
def _softmax_loss(layer, bottoms, phase):
    """-log(max(softmax[label], FLT_MIN)) summed over counted labels, over Caffe's normalizer (at least 1)."""
    if len(bottoms) != 2:
        raise UnsupportedLayerError("SoftmaxWithLoss with a third (weights) bottom cannot be trained",
                                    layer=layer.name)
    axis = canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    ignore = _ignore_label(layer.param.loss_param)
    mode = _normalization(layer.param.loss_param)

    def run(x, blobs):
        log_prob = F.log_softmax(x[0], dim=axis)
        scores, labels, valid = _class_layout(log_prob, x[1], axis, ignore, layer)
        picked = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
        picked = picked + (picked.clamp_min(LOG_FLT_MIN) - picked).detach()
        normalizer = {NORMALIZATION.FULL: labels.numel(), NORMALIZATION.VALID: valid.sum(),
                      NORMALIZATION.BATCH_SIZE: scores.shape[0], NORMALIZATION.NONE: 1}[mode]
        normalizer = torch.as_tensor(normalizer, dtype=picked.dtype, device=picked.device).clamp_min(1)
        loss = -(picked * valid).sum() / normalizer
        return [loss, log_prob.exp()][:len(layer.tops)]
    return run


@op("Accuracy")
def _accuracy(layer, bottoms, phase):
    """Correct when fewer than top_k other classes score at least the label's score (ties count against)."""
    p = layer.param.accuracy_param
    axis = canonical_axis(p.axis, len(bottoms[0]))
    ignore = _ignore_label(p)

    def run(x, blobs):
        with torch.no_grad():
            scores, labels, valid = _class_layout(x[0], x[1], axis, ignore, layer)
            true = scores.gather(1, labels.unsqueeze(1))
            correct = ((scores >= true).sum(1) <= p.top_k) & valid
            accuracy = correct.sum() / valid.sum().clamp_min(1)
            if len(layer.tops) == 1:
                return [accuracy]
            classes = scores.shape[1]
            seen = torch.bincount(labels[valid], minlength=classes)
            hits = torch.bincount(labels[correct], minlength=classes)
            return [accuracy, hits / seen.clamp_min(1)]
    return run


@op("EuclideanLoss")
def _euclidean_loss(layer, bottoms, phase):
    """sum((a - b)^2) / (2 N)."""
    def run(x, blobs):
        diff = x[0] - x[1].reshape(x[0].shape)
        return [diff.square().sum() / x[0].shape[0] / 2]
    return run

