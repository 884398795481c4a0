"""The net as a Graphviz graph (the optional ``draw`` extra: pydot, and Graphviz's ``dot`` for SVG/PNG).

A node per layer (name, type, parameters, MACs per image), an edge per blob
version read (blob name and shape). Given a prune report, layers whose outputs
lost channels say so ("conv1 20→12") and are filled; layers surgery removed
are dashed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CaffeSurgeryError
from .graph import Net
from .io import atomic_write
from .report import format_shape, net_batch, per_image
from .shapes import NetShapes

FORMATS = ("svg", "png", "dot")
PRUNED_FILL, REMOVED_FILL = "#ffd8a8", "#e9ecef"


def _pydot():
    try:
        import pydot
    except ImportError:
        raise CaffeSurgeryError("drawing needs pydot: pip install 'caffe-surgery[draw]'") from None
    return pydot


def _quantity(value: int) -> str:
    """1234567 -> '1.23M'."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return str(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def channel_changes(report: dict) -> dict[str, tuple[int, int] | None]:
    """From a prune report: layer -> (channels before, after) of its first top where they change; None if removed."""
    changes = {}
    for entry in report["layers"]:
        before, after = entry["top_shapes"]
        if not after and before:
            changes[entry["name"]] = None
        elif before and len(before[0]) > 1 and after and before[0][1] != after[0][1]:
            changes[entry["name"]] = (before[0][1], after[0][1])
    return changes


def net_graph(net: Net, shapes: NetShapes, changes: dict[str, tuple[int, int] | None] | None = None):
    """A pydot graph of the net; ``changes`` (see ``channel_changes``) marks pruned and removed layers."""
    pydot = _pydot()
    changes = changes or {}
    batch = net_batch(net, shapes)
    graph = pydot.Dot(graph_type="digraph", rankdir="TB", fontname="Helvetica",
                      label=_quote(f"{net.name or 'net'} (MACs per image; shapes at batch {batch})"))
    ids = {layer.name: f"layer{index}" for index, layer in enumerate(net.layers)}
    for layer in net.layers:
        info = shapes.layer(layer.name)
        lines = [layer.name, layer.type]
        if info.params or info.macs:
            lines.append(f"{_quantity(info.params)} params, {_quantity(per_image(info.macs, batch))} MACs")
        style = {"shape": "box", "style": "rounded", "fontname": "Helvetica"}
        if layer.name in changes:
            change = changes[layer.name]
            if change is None:
                lines.append("removed")
                style.update(style='"rounded,filled,dashed"', fillcolor=_quote(REMOVED_FILL))
            else:
                lines.append(f"{layer.name} {change[0]}→{change[1]}")
                style.update(style='"rounded,filled"', fillcolor=_quote(PRUNED_FILL))
        graph.add_node(pydot.Node(ids[layer.name], label=_quote("\n".join(lines)), **style))
    for layer in net.layers:
        for bottom in layer.bottoms:
            label = f"{bottom.name}\n{format_shape(shapes.blobs.get(bottom))}"
            graph.add_edge(pydot.Edge(ids[bottom.producer], ids[layer.name], label=_quote(label), fontsize="10",
                                      fontname="Helvetica"))
    for index, output in enumerate(net.outputs()):
        node = f"output{index}"
        graph.add_node(pydot.Node(node, label=_quote(f"{output.name}\n{format_shape(shapes.blobs.get(output))}"),
                                  shape="ellipse", fontname="Helvetica"))
        graph.add_edge(pydot.Edge(ids[output.producer], node))
    return graph


def write_graph(graph, path: str | os.PathLike) -> None:
    """Write the graph as .dot text, or rendered by Graphviz's dot as .svg/.png (by the file's extension)."""
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise CaffeSurgeryError(f"cannot tell the format from '{path}': name it .svg, .png or .dot")
    if kind == "dot":
        atomic_write(path, [graph.to_string().encode("utf-8")])
        return
    try:
        rendered = graph.create(prog="dot", format=kind, encoding="utf-8")
    except FileNotFoundError:
        raise CaffeSurgeryError("rendering needs Graphviz's dot (apt-get install graphviz); .dot output works "
                                "without it") from None
    atomic_write(path, [rendered])


def read_report_changes(path: str | os.PathLike) -> dict[str, tuple[int, int] | None]:
    """``channel_changes`` of a PREFIX.report.json written by prune."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return channel_changes(report)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CaffeSurgeryError(f"not a prune report ({exc.__class__.__name__}: {exc})", file=str(path)) from None


def plan_changes(model, plan_path: str | os.PathLike) -> dict[str, tuple[int, int] | None]:
    """The channels a plan keeps per layer (kept, original), from applying it to the model (with weights)."""
    from .plan import Plan
    from .pruning import prune
    from .report import prune_report

    pruned = prune(model, Plan.load(plan_path), source=plan_path)
    return channel_changes(prune_report(model.shapes, pruned.shapes, model.net, pruned.net))
