"""Sensitivity analysis (as Distiller draws it): each group pruned alone at each ratio, the net measured.

A *measure* scores a pruned net on held data: top-1 accuracy where the data
has labels, else the relative error of the net's outputs against the
original's (``output_error``, the function to swap for another agreement
measure). Curves are written as CSV, JSON and a PNG with one curve per layer.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .backends import open_runtime
from .errors import CaffeSurgeryError
from .dataflow import DataRequest
from .evaluate import Evaluation, EvaluationTask, evaluate
from .graph import Net
from .groups import Group, Groups
from .io import atomic_write
from .model import Model
from .pruning import make_plan, prune
from .selection import Budget
from .shapes import NetShapes


@dataclass(frozen=True)
class Measure:
    """How good a net is on held data: ``score(net, shapes)``; ``higher_is_better`` says which way."""

    name: str
    score: Callable[[Net, NetShapes], float]
    higher_is_better: bool

    def loss(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (negative when better)."""
        return baseline - value if self.higher_is_better else value - baseline


def top1(batches: list, runtime_options: dict | None = None) -> Measure:
    """Top-1 accuracy on labelled batches."""
    return Measure("top-1", lambda net, shapes: evaluate(net, shapes, batches, (1,), runtime_options).accuracy(1), True)


def top1_on_ray(data: DataRequest, runtime_options: dict, shards: int | None, address: str | None) -> Measure:
    """Top-1 accuracy, each net's evaluation split into ``shards`` tasks on the Ray cluster at ``address``
    (``cluster.map_shards``; the caller holds the connection open, see ``cluster.ray_connection``)."""
    from .cluster import map_shards

    def accuracy(net: Net, shapes: NetShapes) -> float:
        counts = map_shards(EvaluationTask((1,), runtime_options), Model(net, shapes), data, shards, engine="ray",
                            address=address, desc="sensitivity")
        return Evaluation.from_arrays(counts).accuracy(1)
    return Measure("top-1", accuracy, True)


def output_error(model: Model, batches: list, runtime_options: dict | None = None) -> Measure:
    """Relative error ||y - y0|| / ||y0|| of the net's outputs y against the original's y0, over all batches."""
    options = runtime_options or {}
    reference = open_runtime(model.net, model.shapes, **options)
    wanted = [reference.run(images) for images, _ in batches]

    def relative_error(net: Net, shapes: NetShapes) -> float:
        runtime = open_runtime(net, shapes, outputs=list(reference.keys), **options)
        squared = norm = 0.0
        for (images, _), want in zip(batches, wanted):
            got = runtime.run(images)
            for key, value in want.items():
                squared += float(((got[key].astype(np.float64) - value) ** 2).sum())
                norm += float((value.astype(np.float64) ** 2).sum())
        return (squared / max(norm, np.finfo(float).tiny)) ** 0.5

    return Measure("output relative error", relative_error, False)


@dataclass
class Point:
    """One pruned net of a sensitivity curve."""

    ratio: float
    params: int
    macs: int
    value: float


def sensitivity_curves(model: Model, groups: Groups, group_list: list[Group], scores: dict[int, np.ndarray],
                       ratios: list[float], measure: Measure) -> tuple[float, dict[str, list[Point]]]:
    """The unpruned net's value and, per group (by name), one point per ratio with only that group pruned."""
    params, macs = model.shapes.totals()
    baseline = measure.score(model.net, model.shapes)
    curves = {}
    for group in group_list:
        points = [Point(0.0, params, macs, baseline)]
        for ratio in ratios:
            plan = make_plan(scores, groups, [group], Budget(ratio=ratio), {"ratio": ratio})
            pruned = prune(model, plan)
            points.append(Point(ratio, *pruned.shapes.totals(), measure.score(pruned.net, pruned.shapes)))
        curves[group.name] = points
    return baseline, curves


def write_sensitivity(prefix: str, baseline: float, curves: dict[str, list[Point]], measure: Measure,
                      about: dict) -> list[str]:
    """PREFIX.csv, PREFIX.json and PREFIX.png; return their paths."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["layer", "ratio", "params", "macs", measure.name, "loss"])
    for layer, points in curves.items():
        for p in points:
            writer.writerow([layer, p.ratio, p.params, p.macs, f"{p.value:.6g}", f"{measure.loss(baseline, p.value):.6g}"])
    paths = [f"{prefix}.csv", f"{prefix}.json", f"{prefix}.png"]
    atomic_write(paths[0], [rows.getvalue().encode("utf-8")])
    document = {**about, "measure": measure.name, "higher_is_better": measure.higher_is_better, "baseline": baseline,
                "curves": {layer: [asdict(p) for p in points] for layer, points in curves.items()}}
    atomic_write(paths[1], [json.dumps(document, indent=1).encode("utf-8")])
    from .plot import plot_curves

    plot_curves({layer: [(p.ratio, p.value) for p in points] for layer, points in curves.items()},
                "fraction of the layer's channels removed", measure.name, paths[2],
                f"sensitivity: each layer pruned alone ({about.get('criterion', '')})")
    return paths


def load_losses(path: str, groups: Groups) -> dict[int, dict[float, float]]:
    """Per group id, loss by ratio, from a sensitivity JSON."""
    try:
        document = json.loads(open(path, encoding="utf-8").read())
        measure = Measure(document["measure"], None, document["higher_is_better"])
        losses = {}
        for layer, points in document["curves"].items():
            group = groups.of_layer(layer)
            if group is None:
                raise CaffeSurgeryError(f"sensitivity names a layer not in the net: '{layer}'", file=path)
            losses[group.id] = {p["ratio"]: measure.loss(document["baseline"], p["value"]) for p in points}
        return losses
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaffeSurgeryError(f"not a sensitivity JSON: {exc}", file=path) from None
