"""Training-only layers: losses, Accuracy and Silence (left out of deploy graphs; trained with Caffe's rules).

Labels arrive as float tensors (Caffe blobs are float) and are rounded to class
indexes by the layers that read them.
"""
from __future__ import annotations

from math import prod

import numpy as np

from .. import caffe_pb2
from ..errors import CaffeSurgeryError
from ..graph import Layer
from .channels import TRAINING_OUTPUT
from .registry import TRAINING_ONLY, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, canonical_axis

LOG_FLT_MIN = float(np.log(np.finfo(np.float32).tiny))
NORMALIZATION = caffe_pb2.LossParameter


def _accuracy_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Top 0 is a scalar; the optional top 1 holds one accuracy per class."""
    shape = bottoms[0]
    axis = canonical_axis(layer.param.accuracy_param.axis, len(shape))
    return Rule([(), (shape[axis],)][:len(layer.tops)])


def _softmax_loss_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """A scalar loss; the optional second top is the softmax of bottom[0]."""
    return Rule([(), bottoms[0]][:len(layer.tops)])


def _loss_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([()])


def _sink_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([])


# ------------------------------------------------------------------ training


def _class_layout(scores, labels, axis: int, ignore: int | None, layer: Layer):
    """Scores as (outer, classes, inner), labels as (outer, inner) indexes, and the mask of counted labels."""
    import torch
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


def _softmax_loss_op(layer, bottoms, phase):
    """-log(max(softmax[label], FLT_MIN)) summed over counted labels, over Caffe's normalizer (at least 1)."""
    import torch
    import torch.nn.functional as F

    from ..errors import UnsupportedLayerError
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


def _accuracy_op(layer, bottoms, phase):
    """Correct when fewer than top_k other classes score at least the label's score (ties count against)."""
    import torch
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


def _euclidean_loss_op(layer, bottoms, phase):
    """sum((a - b)^2) / (2 N)."""
    def run(x, blobs):
        diff = x[0] - x[1].reshape(x[0].shape)
        return [diff.square().sum() / x[0].shape[0] / 2]
    return run



def _silence_op(layer, bottoms, phase):
    return lambda x, blobs: []


# ------------------------------------------------------------------ declarations

_DROPPED = NotApplicable("training-only: left out of deploy graphs")
_NO_PARAMS = NotApplicable("training-only: nothing in it counts channels")
_NO_TORCH = NotApplicable("no torch op is written for it yet")


def _training(name: str, shape, train=_NO_TORCH, bottoms=(2, None), tops=1) -> LayerType:
    return LayerType(name, shape=shape, export=_DROPPED, channels=TRAINING_OUTPUT, rewrite=_NO_PARAMS, train=train,
                     kind=TRAINING_ONLY, bottoms=bottoms, tops=tops)


declare(
    _training("SoftmaxWithLoss", _softmax_loss_shape, Train(_softmax_loss_op), bottoms=(2, 3), tops=(1, 2)),
    _training("InfogainLoss", _softmax_loss_shape, bottoms=(2, 3), tops=(1, 2)),
    _training("EuclideanLoss", _loss_shape, Train(_euclidean_loss_op)),
    _training("HingeLoss", _loss_shape),
    _training("MultinomialLogisticLoss", _loss_shape),
    _training("SigmoidCrossEntropyLoss", _loss_shape),
    _training("MultiBoxLoss", _loss_shape),
    _training("ContrastiveLoss", _loss_shape, bottoms=3),
    _training("Accuracy", _accuracy_shape, Train(_accuracy_op), bottoms=2, tops=(1, 2)),
    _training("Silence", _sink_shape, Train(_silence_op), bottoms=(1, None), tops=0),
)
