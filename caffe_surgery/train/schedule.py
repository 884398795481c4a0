"""Caffe's learning-rate policies (SGDSolver::GetLearningRate)."""
from __future__ import annotations

import math

from .. import caffe_pb2
from ..errors import CaffeSurgeryError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    """The rate at ``iteration`` (0-based) for the solver's ``lr_policy``."""
    policy, base, gamma = param.lr_policy, param.base_lr, param.gamma
    if policy == "fixed":
        return base
    if policy == "step":
        if param.stepsize <= 0:
            raise CaffeSurgeryError("lr_policy 'step' needs a positive stepsize")
        return base * gamma ** (iteration // param.stepsize)
    if policy == "exp":
        return base * gamma ** iteration
    if policy == "inv":
        return base * (1 + gamma * iteration) ** -param.power
    if policy == "multistep":
        step = 0
        while step < len(param.stepvalue) and iteration >= param.stepvalue[step]:
            step += 1
        return base * gamma ** step
    if policy == "poly":
        return base * (1 - iteration / param.max_iter) ** param.power
    if policy == "sigmoid":
        return base / (1 + math.exp(-gamma * (iteration - param.stepsize)))
    raise CaffeSurgeryError(f"unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})")
