"""Charts as PNG files, drawn with matplotlib (the optional ``plot`` extra) without a display.

``plot_curves`` draws any set of named (x, y) curves: the reproduction's
accuracy-vs-parameters stages, the tolerance curve a plan records, sensitivity
curves (one per layer). Figures are built with ``matplotlib.figure.Figure``
(no pyplot state, Agg rendering) and written atomically.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence

from .errors import CaffeSurgeryError
from .io import atomic_write

INSTALL_HINT = "plotting needs matplotlib: pip install 'caffe-surgery[plot]'"
Point = tuple[float, float]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CaffeSurgeryError(INSTALL_HINT) from None
    return Figure


def curves_figure(series: Mapping[str, Sequence[Point]], xlabel: str, ylabel: str, title: str, *,
                  point_labels: Mapping[str, Sequence[str]] | None = None,
                  hlines: Mapping[str, float] | None = None):
    """A matplotlib Figure with one marked line per series, labelled axes with ticks, a grid and a legend.

    ``point_labels`` names points of a series (drawn beside them); ``hlines``
    adds dashed horizontal reference lines (e.g. an accuracy floor).
    """
    figure = _figure_class()(figsize=(9, 5.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for name, points in series.items():
        if not points:
            continue
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker="o", label=name)
        for (x, y), text in zip(points, (point_labels or {}).get(name, ())):
            axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    for name, value in (hlines or {}).items():
        axes.axhline(value, linestyle="--", color="grey", linewidth=1, label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize=9)
    return figure


def save_figure(figure, path: str | os.PathLike) -> None:
    """Write a figure as PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, [buffer.getvalue()])


def plot_curves(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, path: str | os.PathLike,
                title: str, **options) -> None:
    """Draw named (x, y) curves into a PNG at ``path`` (options: ``point_labels``, ``hlines``; see curves_figure)."""
    save_figure(curves_figure(series, xlabel, ylabel, title, **options), path)


def tolerance_figure(plan: Mapping):
    """The accuracy-vs-parameters curve ``prune --tolerance`` records in a plan, with the accuracy floor."""
    curve = plan.get("curve")
    if not curve:
        raise CaffeSurgeryError("the plan has no tolerance curve (prune --tolerance records one)")
    baseline = curve[0]["accuracy"]
    points = [(step["params"], step["accuracy"]) for step in curve]
    labels = [f"{100 * step['ratio']:.0f}%" for step in curve]
    floor = {f"tolerance {plan['tolerance']} points": baseline - plan["tolerance"] / 100} if "tolerance" in plan else {}
    return curves_figure({"pruned (global ratio)": points}, "parameters", "top-1 accuracy",
                         f"tolerance curve ({plan.get('criterion', 'plan')})", point_labels={"pruned (global ratio)": labels},
                         hlines=floor)


def reproduction_figure(results: Mapping):
    """The reproduction's stages: accuracy against non-zero parameters, neuron then weight pruning."""
    stages = {row["name"]: row for row in results["stages"]}
    order = {"neuron, then weight pruning": ("k4", "k3", "k2", "k1", "k1_sparse"),
             "with conv filters (beyond)": ("k1", "k1_conv", "k1_conv_sparse")}
    series = {name: [(stages[s]["nonzero"], stages[s]["accuracy"]) for s in names if s in stages]
              for name, names in order.items()}
    labels = {name: [s for s in names if s in stages] for name, names in order.items()}
    return curves_figure(series, "non-zero parameters", "test accuracy", "LeNet maxout: accuracy vs parameters",
                         point_labels=labels)


def plot_file(document_path: str | os.PathLike, output: str | os.PathLike) -> str:
    """Chart a JSON document this tool wrote (a plan with a tolerance curve, or reproduce's results.json);
    return what was drawn."""
    try:
        document = json.loads(open(document_path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise CaffeSurgeryError(f"cannot read JSON: {exc}", file=str(document_path)) from None
    if isinstance(document, dict) and "stages" in document:
        figure, what = reproduction_figure(document), "reproduction stages"
    elif isinstance(document, dict) and "keep" in document:
        try:
            figure, what = tolerance_figure(document), "tolerance curve"
        except CaffeSurgeryError as exc:
            raise exc.with_file(str(document_path))
    else:
        raise CaffeSurgeryError("nothing to plot: expected a plan with a tolerance curve or reproduce's results.json",
                                file=str(document_path))
    save_figure(figure, output)
    return what
