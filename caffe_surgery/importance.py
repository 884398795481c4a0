"""Filter pruning with learned importance weights under an error tolerance (Appl. Sci. 2022, 12(21), 11184).

Reconstruction (the paper's text was not available): every chosen
convolution gets a per-filter importance weight, a Scale layer
``<conv>_importance`` right after it, initialised to ones, to uniform random
values, or to the filters' L1 norms normalised to a maximum of 1. The net
trains with them; filters are ranked by |importance| and removed progressively
(one ranking over all chosen layers) while test accuracy stays within the
tolerance; the importance weights are folded into their convolutions and the
pruned net is fine-tuned. What is written is a plain, smaller Caffe net.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import caffe_pb2
from .data.paths import resolve_path
from .dataflow import item_shapes, open_source
from .deploy import deploy_net
from .errors import CaffeSurgeryError
from .evaluate import evaluate
from .fold import fold_scale
from .graph import TEST, TRAIN
from .groups import build_groups
from .io import read_net_text, read_solver, write_text
from .model import Model, load_model
from .plan import Plan, resolve_plan
from .pruning import tolerance_plan
from .save import save_caffemodel, save_prototxt
from .selection import Budget
from .shapes import infer_shapes
from .surgery import apply_plan

INITS = ("ones", "uniform", "l1")
SUFFIX = "_importance"
PHASES = {TRAIN: "train", TEST: "test"}


def importance_init(weight: np.ndarray, init: str, rng: np.random.Generator) -> np.ndarray:
    """The starting importance of each filter of a convolution weight (O, C, kh, kw)."""
    if init == "ones":
        return np.ones(weight.shape[0], dtype=np.float32)
    if init == "uniform":
        return rng.uniform(0.0, 1.0, weight.shape[0]).astype(np.float32)
    if init == "l1":
        norms = np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)
        return (norms / (norms.max() or 1.0)).astype(np.float32)
    raise CaffeSurgeryError(f"unknown importance initialisation '{init}' (choose {', '.join(INITS)})")


def with_importance(net_param: caffe_pb2.NetParameter, layers: list[str]) -> caffe_pb2.NetParameter:
    """A copy of the net with an in-place per-channel Scale right after each named convolution."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        out.layer.add().CopyFrom(layer)
        if layer.name in layers:
            scale = out.layer.add(name=layer.name + SUFFIX, type="Scale")
            scale.bottom.append(layer.top[0])
            scale.top.append(layer.top[0])
            scale.scale_param.bias_term = False
            scale.param.add(lr_mult=1.0, decay_mult=0.0)
    return out


def _solver_nets(solver: str | os.PathLike) -> tuple[caffe_pb2.SolverParameter, dict[int, caffe_pb2.NetParameter]]:
    """The solver and its train/test nets, with data sources made absolute so the nets can move."""
    param = read_solver(solver)
    base_dir = os.path.dirname(os.path.abspath(solver))
    paths = {TRAIN: param.train_net, TEST: param.test_net[0] if len(param.test_net) else ""}
    if not all(paths.values()):
        raise CaffeSurgeryError("the solver needs train_net and test_net", file=str(solver))
    nets = {}
    for phase, path in paths.items():
        path = resolve_path(path, base_dir)
        net = read_net_text(path)
        for layer in net.layer:
            for holder, field in ((layer.data_param, "source"), (layer.image_data_param, "source"),
                                  (layer.transform_param, "mean_file")):
                if getattr(holder, field):
                    setattr(holder, field, os.path.abspath(resolve_path(getattr(holder, field), os.path.dirname(path))))
        nets[phase] = net
    return param, nets


def _load(prototxt: Path, weights, phase: int, partial_weights: bool = False) -> Model:
    return load_model(prototxt, weights, phase=phase, data_shapes=item_shapes(prototxt),
                      partial_weights=partial_weights)


def _solver_for(solver: caffe_pb2.SolverParameter, nets: dict[int, Path]) -> caffe_pb2.SolverParameter:
    copy = caffe_pb2.SolverParameter()
    copy.CopyFrom(solver)
    copy.train_net = str(nets[TRAIN])
    del copy.test_net[:]
    copy.test_net.append(str(nets[TEST]))
    copy.snapshot = 0
    return copy


@dataclass
class ImportanceResult:
    """Before/after figures (per image: parameters, MACs; test accuracy), the tolerance curve, filters kept."""

    params: tuple[int, int]
    macs: tuple[int, int]
    accuracy: tuple[float, float]
    curve: list[dict]
    kept: dict[str, int]


def importance_prune(solver: str | os.PathLike, weights: str | os.PathLike, output: str | os.PathLike, *,
                     layers: list[str] | None = None, init: str = "l1", train_iter: int = 500,
                     finetune_iter: int = 500, tolerance: float = 1.0, device: str = "auto",
                     test_limit: int | None = None, seed: int = 0) -> ImportanceResult:
    """Run the method on the solver's nets; write OUTPUT.prototxt (deploy) and OUTPUT.caffemodel."""
    from .train import train

    solver_param, nets = _solver_nets(solver)
    work = Path(f"{output}.work")
    work.mkdir(parents=True, exist_ok=True)
    plain = {phase: work / f"original_{name}.prototxt" for phase, name in PHASES.items()}
    for phase, path in plain.items():
        write_text(path, nets[phase])
    original = _load(plain[TEST], weights, TEST)
    chosen = layers or [name for g in build_groups(original.net, original.shapes).prunable()
                        for name in g.producers if original.net.layer(name).type == "Convolution"]
    if not chosen:
        raise CaffeSurgeryError("no prunable convolution to attach importance weights to", file=str(solver))
    rng = np.random.default_rng(seed)

    marked = {phase: work / f"importance_{name}.prototxt" for phase, name in PHASES.items()}
    for phase, path in marked.items():
        write_text(path, with_importance(nets[phase], chosen))
    start = _load(marked[TRAIN], weights, TRAIN, partial_weights=True)  # the importance weights start here
    for name in chosen:
        start.net.layer(name + SUFFIX).blobs = [importance_init(start.net.layer(name).blobs[0], init, rng)]
    save_caffemodel(start.net, work / "importance_start.caffemodel")
    trained = work / "importance_trained.caffemodel"
    train(_solver_for(solver_param, marked), weights=str(work / "importance_start.caffemodel"), max_iter=train_iter,
          device=device, output=trained, progress=False)

    model = _load(marked[TEST], trained, TEST)
    groups = build_groups(model.net, model.shapes)
    group_list = [groups.of_layer(name) for name in chosen]
    scores = {g.id: np.abs(model.net.layer(g.producers[0] + SUFFIX).blobs[0]).astype(np.float64) for g in group_list}
    source = open_source(model.net, None)
    held = list((source.head(test_limit) if test_limit else source).iter_batches(100))

    def accuracy(net, shapes) -> float:
        return evaluate(net, shapes, held, (1,), {"device": "cpu"}).accuracy(1)

    plan, curve = tolerance_plan(model, groups, group_list, scores, Budget(), accuracy, tolerance,
                                 about={"criterion": "importance", "init": init})
    pruned = {phase: work / f"pruned_{name}.prototxt" for phase, name in PHASES.items()}
    _prune_and_fold(marked, trained, plan, pruned, work / "pruned.caffemodel")
    tuned = work / "tuned.caffemodel"
    train(_solver_for(solver_param, pruned), weights=str(work / "pruned.caffemodel"), max_iter=finetune_iter,
          device=device, output=tuned, progress=False)
    final = _load(pruned[TEST], tuned, TEST)
    deployed = deploy_net(final.net, final.shapes)
    save_prototxt(deployed, Path(f"{output}.prototxt"))
    save_caffemodel(deployed, Path(f"{output}.caffemodel"))
    kept = {name: final.net.layer(name).param.convolution_param.num_output for name in chosen}
    before = infer_shapes(deploy_net(original.net, original.shapes)).totals()
    after = infer_shapes(deployed).totals()
    return ImportanceResult((before[0], after[0]), (before[1], after[1]),
                            (accuracy(original.net, original.shapes), accuracy(final.net, final.shapes)), curve, kept)


def _prune_and_fold(marked: dict[int, Path], weights: Path, plan: Plan, targets: dict[int, Path],
                    weights_out: Path) -> None:
    """Apply the plan to the train and test nets with importance layers, then fold those layers away."""
    for phase, path in marked.items():
        model = _load(path, weights, phase)
        groups = build_groups(model.net, model.shapes)
        pruned, pruned_shapes = apply_plan(model.net, model.shapes, groups, resolve_plan(plan, model.net, groups))
        folded, _ = fold_scale(pruned, pruned_shapes)
        save_prototxt(folded, targets[phase])
        if phase == TRAIN:
            save_caffemodel(folded, weights_out)
