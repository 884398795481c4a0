"""Prune, then fine-tune: the same plan applied to the user's train_val net, and a solver for it.

A train_val prototxt holds every phase (Data layers per phase, losses, accuracy)
that training needs. Each phase is pruned as the deploy net was, and the pruned
layers are put back in the file's own order with their include/exclude rules,
data layers, transform parameters and ParamSpecs (lr_mult, decay_mult)
untouched. The solver points at the pruned train_val; fine-tuning starts from
the pruned caffemodel (``caffe-surgery train OUT.solver.prototxt -w OUT.caffemodel``
or Caffe's ``caffe train -solver OUT.solver.prototxt -weights OUT.caffemodel``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import caffe_pb2
from .dataflow import item_shapes
from .errors import CaffeSurgeryError, PlanError, ShapeError
from .graph import TEST, TRAIN, Net, build_net, layer_included
from .groups import build_groups
from .io import read_solver
from .model import read_upgraded_net
from .plan import Plan, resolve_plan
from .shapes import NetShapes, infer_shapes
from .surgery import apply_plan
from .upgrade import upgrade_solver

PHASES = (TRAIN, TEST)
LR_FACTOR = 0.1  # fine-tuning starts from trained weights: a tenth of the training rate
DEFAULT_SOLVER = {"base_lr": 0.001, "lr_policy": "fixed", "momentum": 0.9, "weight_decay": 0.0005,
                  "max_iter": 2000, "display": 100, "snapshot": 1000, "type": "SGD"}
DEFAULT_TEST = {"test_iter": [50], "test_interval": 500}


def is_train_val(net_param: caffe_pb2.NetParameter) -> bool:
    """True for a net made for training: a loss layer, or layers kept to one phase."""
    for layer in net_param.layer:
        if layer.type.endswith("Loss") or any(rule.HasField("phase") for rule in (*layer.include, *layer.exclude)):
            return True
    return False


def _phase_state(net_param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.NetState:
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase
    return state


def _pruned_phase(net_param: caffe_pb2.NetParameter, phase: int, plan: Plan, source: str, original: Net,
                  fallback_items: dict[str, tuple[int, ...]] | None) -> tuple[Net, NetShapes]:
    """One phase of the train_val with the original weights (by layer name), pruned; layers the deploy net
    lacks are pruned as zero-size views, since only their new shapes are written."""
    state = net_param.state
    net = build_net(net_param, phase=phase, level=state.level, stages=tuple(state.stage), source=source)
    try:
        shapes = infer_shapes(net, data_shapes=item_shapes(source, fallback_items))
    except CaffeSurgeryError as exc:
        raise exc.with_file(source)
    for layer in net.layers:
        expected = shapes.layer(layer.name).param_shapes
        if original.has_layer(layer.name):
            _check_blobs(layer.name, expected, original.layer(layer.name).blobs, source)
            layer.blobs = list(original.layer(layer.name).blobs)
        elif expected:  # a training-only layer (e.g. an auxiliary classifier): only its pruned shape is wanted
            layer.blobs = [np.broadcast_to(np.float32(0), shape) for shape in expected]
    groups = build_groups(net, shapes)
    return apply_plan(net, shapes, groups, resolve_plan(plan, net, groups, source))


def _check_blobs(name: str, expected, blobs, source: str) -> None:
    """The weights of a layer fit the train_val's layer of that name."""
    theirs, mine = [tuple(b.shape) for b in blobs], [tuple(s) for s in expected or ()]
    if theirs and expected is not None and mine != theirs:
        raise ShapeError(f"the layer takes blobs {mine}, the weights of its namesake are {theirs}",
                         file=source, layer=name)


def prune_train_val(path: str | os.PathLike, plan: Plan, original: Net, pruned: Net,
                    fallback_items: dict[str, tuple[int, ...]] | None = None) -> caffe_pb2.NetParameter:
    """The train_val with ``plan`` applied to every phase, layers in their order with their rules.

    ``original`` is the net with the weights the plan was made for (they go
    through the same surgery); ``pruned`` is its pruned version, whose weights
    must fit every pruned phase. ``fallback_items`` gives, by top name, the item
    shape (C, H, W) of data layers whose source cannot be read here.
    """
    source = str(path)
    net_param = read_upgraded_net(path)
    phases = {phase: _pruned_phase(net_param, phase, plan, source, original, fallback_items) for phase in PHASES}
    for net, shapes in phases.values():
        for layer in net.layers:
            if pruned.has_layer(layer.name):
                _check_blobs(layer.name, shapes.layer(layer.name).param_shapes, pruned.layer(layer.name).blobs, source)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        included = [phase for phase in PHASES if layer_included(layer, _phase_state(net_param, phase))]
        if not included:
            out.layer.add().CopyFrom(layer)
            continue
        versions = [phases[p][0].layer(layer.name).param for p in included if phases[p][0].has_layer(layer.name)]
        if not versions:
            continue
        if len(versions) != len(included) or any(v != versions[0] for v in versions[1:]):
            raise PlanError("the plan changes this layer differently in the TRAIN and TEST phases",
                            file=source, layer=layer.name)
        out.layer.add().CopyFrom(versions[0])
    return out


def finetune_solver(train_val: str | os.PathLike, prefix: str | os.PathLike,
                    user_solver: str | os.PathLike | None = None,
                    tests: bool = True) -> caffe_pb2.SolverParameter:
    """A solver fine-tuning the pruned ``train_val``: the user's (nets replaced, base_lr x 0.1) or a default.

    Paths are absolute so both this tool and Caffe (which reads them from its
    working directory) find them; snapshots go to ``PREFIX_finetune_iter_N``.
    ``tests`` adds a test pass over the TEST phase to the default solver.
    """
    if user_solver is not None:
        try:
            solver = upgrade_solver(read_solver(user_solver))
        except CaffeSurgeryError as exc:
            raise exc.with_file(str(user_solver))
        for name in ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param", "weights"):
            solver.ClearField(name)
        solver.base_lr = float(f"{solver.base_lr * LR_FACTOR:.6g}")
    else:
        solver = caffe_pb2.SolverParameter(**DEFAULT_SOLVER, **(DEFAULT_TEST if tests else {}))
    solver.net = str(Path(train_val).resolve())
    solver.snapshot_prefix = str(Path(f"{prefix}_finetune").resolve())
    return solver


def tests_in_phase(net_param: caffe_pb2.NetParameter) -> bool:
    """True when the TEST phase has a data or input layer to test on."""
    state = _phase_state(net_param, TEST)
    return any(not layer.bottom and layer_included(layer, state) for layer in net_param.layer)


def finetune_files(prefix: str | os.PathLike, train_val: str | os.PathLike, plan: Plan, original: Net, pruned: Net,
                   fallback_items: dict[str, tuple[int, ...]] | None,
                   user_solver: str | os.PathLike | None) -> dict[Path, caffe_pb2.NetParameter | caffe_pb2.SolverParameter]:
    """PREFIX.train_val.prototxt (``plan`` applied to every phase) and PREFIX.solver.prototxt, to write."""
    pruned_train_val = prune_train_val(train_val, plan, original, pruned, fallback_items)
    net_path = Path(f"{prefix}.train_val.prototxt")
    solver = finetune_solver(net_path, prefix, user_solver, tests=tests_in_phase(pruned_train_val))
    return {net_path: pruned_train_val, Path(f"{prefix}.solver.prototxt"): solver}
