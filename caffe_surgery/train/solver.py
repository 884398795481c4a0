"""Caffe's parameter update (Solver::ApplyUpdate) for SGD, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam.

Per iteration: clip the accumulated gradients to ``clip_gradients`` (global L2
norm), then per blob divide by ``iter_size``, add the weight decay
(``weight_decay x decay_mult``, L2 or L1) and compute the type's update with
``local_rate = rate x lr_mult``; the blob moves by ``-update``.
"""
from __future__ import annotations

import torch

from .. import caffe_pb2
from ..errors import CaffeSurgeryError
from .torch_net import Learnable

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


class Solver:
    """The update state (histories) of one set of learnable blobs."""

    def __init__(self, param: caffe_pb2.SolverParameter, learnables: list[Learnable]):
        if param.type not in SOLVER_TYPES:
            raise CaffeSurgeryError(f"unknown solver type '{param.type}' (known: {', '.join(SOLVER_TYPES)})")
        if param.regularization_type not in ("L1", "L2"):
            raise CaffeSurgeryError(f"unknown regularization_type '{param.regularization_type}' (L1 or L2)")
        if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
            raise CaffeSurgeryError(f"momentum cannot be used with {param.type}")
        self.param = param
        self.learnables = learnables
        self.history = [torch.zeros_like(l.tensor) for l in learnables]
        self.second = [torch.zeros_like(l.tensor) for l in learnables] if param.type in ("AdaDelta", "Adam") else []

    @torch.no_grad()
    def apply_update(self, iteration: int, rate: float) -> None:
        """Update every blob from its accumulated ``.grad`` (a missing grad counts as zero)."""
        diffs = [l.tensor.grad if l.tensor.grad is not None else torch.zeros_like(l.tensor) for l in self.learnables]
        diffs = self._clip(diffs)
        for index, (learnable, diff) in enumerate(zip(self.learnables, diffs)):
            if self.param.iter_size > 1:
                diff = diff / self.param.iter_size
            decay = self.param.weight_decay * learnable.decay_mult
            if decay:
                weights = learnable.tensor
                diff = diff + decay * (weights if self.param.regularization_type == "L2" else torch.sign(weights))
            learnable.tensor.sub_(self._update(index, diff, rate * learnable.lr_mult, iteration))

    def _clip(self, diffs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scale all diffs by clip/norm when their global L2 norm exceeds ``clip_gradients`` (>= 0)."""
        clip = self.param.clip_gradients
        if clip < 0 or not diffs:
            return diffs
        norm = float(torch.sqrt(sum(d.double().square().sum() for d in diffs)))
        return [d * (clip / norm) for d in diffs] if norm > clip else diffs

    def _update(self, index: int, diff: torch.Tensor, local_rate: float, iteration: int) -> torch.Tensor:
        """The amount to subtract from the blob (Caffe's ComputeUpdateValue)."""
        p, kind = self.param, self.param.type
        history = self.history[index]
        if kind == "SGD":
            history.mul_(p.momentum).add_(diff, alpha=local_rate)
            return history
        if kind == "Nesterov":
            previous = history.clone()
            history.mul_(p.momentum).add_(diff, alpha=local_rate)
            return (1 + p.momentum) * history - p.momentum * previous
        if kind == "AdaGrad":
            history.add_(diff.square())
            return local_rate * diff / (history.sqrt() + p.delta)
        if kind == "RMSProp":
            history.mul_(p.rms_decay).add_(diff.square(), alpha=1 - p.rms_decay)
            return local_rate * diff / (history.sqrt() + p.delta)
        second = self.second[index]
        if kind == "AdaDelta":
            history.mul_(p.momentum).add_(diff.square(), alpha=1 - p.momentum)
            step = diff * torch.sqrt((second + p.delta) / (history + p.delta))
            second.mul_(p.momentum).add_(step.square(), alpha=1 - p.momentum)
            return local_rate * step
        history.mul_(p.momentum).add_(diff, alpha=1 - p.momentum)
        second.mul_(p.momentum2).add_(diff.square(), alpha=1 - p.momentum2)
        t = iteration + 1
        correction = (1 - p.momentum2 ** t) ** 0.5 / (1 - p.momentum ** t)
        return local_rate * correction * history / (second.sqrt() + p.delta)
