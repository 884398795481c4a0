"""Fine-tuning between pruning steps with the training engine (``caffe_surgery.train``, PyTorch).

The solver's TRAIN net describes the deploy net's architecture with data and
loss layers. Each step prunes it with the same plan as the deploy net, starts
from the pruned deploy weights (copied by layer name, as Caffe does, so a
reconstruction's refits are kept) and trains ``iterations`` iterations; the
tuned weights go back into the pruned deploy net. With ``--tolerance``
(``tolerance_with_retraining``) each round removes ``step`` more of the
original channels (global ranking, scores of the current, retrained net) and
the curve records top-1 before and after each retraining; the last round
within the tolerance after retraining is kept.
"""
from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import caffe_pb2
from .graph import TRAIN, Net
from .groups import Group, Groups, build_groups
from .model import Model, attach_weights, read_stored_weights
from .plan import Plan, resolve_plan
from .pruning import make_plan, prune
from .save import save_caffemodel
from .selection import Budget
from .shapes import NetShapes, infer_shapes
from .surgery import apply_plan

Evaluator = Callable[[Net, NetShapes], float]


@dataclass
class Retrainer:
    """The solver's TRAIN net (pruned along with the deploy net) and how long to fine-tune."""

    solver: str
    iterations: int | None = None
    device: str = "auto"
    train_data: object | None = None
    train_net: Net = field(init=False)
    train_shapes: NetShapes = field(init=False)

    def __post_init__(self):
        from .train.feed import Feed
        from .train.solver_nets import load_solver

        setup = load_solver(self.solver)
        self.param = setup.param
        self.base_dir = os.path.dirname(setup.train_net.source) if setup.train_net.source else setup.base_dir
        self.train_net = setup.train_net
        feed = Feed(self.train_net, TRAIN, self.train_data, self.base_dir)
        self.train_data = feed.source
        self.train_shapes = infer_shapes(self.train_net, data_shapes=feed.item_shapes)
        feed.close()

    def retrain(self, deployed: Net, deployed_shapes: NetShapes, plan: Plan) -> Net:
        """Prune the TRAIN net by ``plan`` (its indices are the current nets'), fine-tune it from the pruned
        deploy net's weights and return a copy of that net with the tuned weights; the TRAIN net follows."""
        from .train import train

        weighted = copy.deepcopy(self.train_net)
        for layer in weighted.layers:
            if layer.type in ("Convolution", "Deconvolution", "InnerProduct") and not layer.blobs:
                layer.blobs = [np.zeros(s, dtype=np.float32) for s in self.train_shapes.layer(layer.name).param_shapes]
        groups = build_groups(weighted, self.train_shapes)
        self.train_net, self.train_shapes = apply_plan(weighted, self.train_shapes, groups,
                                                       resolve_plan(plan, weighted, groups))
        solver = caffe_pb2.SolverParameter()
        solver.CopyFrom(self.param)
        for name in ("net", "train_net", "net_param", "test_net", "test_net_param", "test_iter", "test_state"):
            solver.ClearField(name)
        solver.train_net_param.CopyFrom(self.train_net.to_proto())
        solver.test_interval, solver.snapshot = 0, 0
        with tempfile.TemporaryDirectory() as folder:
            start, tuned = Path(folder) / "start.caffemodel", Path(folder) / "tuned.caffemodel"
            save_caffemodel(deployed, start)
            train(solver, weights=str(start), max_iter=self.iterations, device=self.device,
                  train_data=self.train_data, output=tuned, progress=False)
            result = copy.deepcopy(deployed)
            attach_weights(result, deployed_shapes, read_stored_weights(tuned), str(tuned))
        return result


def tolerance_with_retraining(model: Model, chosen: Callable[[Groups], list[Group]],
                              scores_of: Callable[[Model, Groups, list[Group]], dict[int, np.ndarray]],
                              evaluate: Evaluator, tolerance: float, retrainer: Retrainer, step: float = 0.05,
                              about: dict | None = None) -> tuple[Net, NetShapes, Plan, list[dict]]:
    """Prune ``step`` more of the original channels per round and retrain, while top-1 after retraining
    stays within ``tolerance`` points; return the last such net, a plan describing the rounds and the curve."""
    baseline = evaluate(model.net, model.shapes)
    curve = [{"round": 0, "params": model.shapes.totals()[0], "accuracy": baseline}]
    current, rounds = model, []
    accepted = (model.net, model.shapes, [])
    while step * (len(rounds) + 1) < 1.0:
        groups = build_groups(current.net, current.shapes)
        group_list = chosen(groups)
        ratio = step / (1.0 - step * len(rounds))
        plan = make_plan(scores_of(current, groups, group_list), groups, group_list,
                         Budget(ratio=ratio, global_ranking=True), {})
        pruned = prune(current, plan)
        before = evaluate(pruned.net, pruned.shapes)
        tuned = retrainer.retrain(pruned.net, pruned.shapes, plan)
        after = evaluate(tuned, pruned.shapes)
        rounds.append(plan.keep)
        curve.append({"round": len(rounds), "removed": round(step * len(rounds), 10),
                      "params": pruned.shapes.totals()[0], "accuracy_before_retraining": before,
                      "accuracy": after})
        if 100.0 * (baseline - after) > tolerance:
            break
        current = Model(tuned, pruned.shapes)
        accepted = (tuned, pruned.shapes, list(rounds))
    net, shapes, kept_rounds = accepted
    plan = Plan({}, about={**(about or {}), "tolerance": tolerance, "curve": curve,
                           "rounds": kept_rounds, "note": "each round's indices number the previous round's "
                                                          "(retrained) net; replay them in order"})
    return net, shapes, plan, curve
