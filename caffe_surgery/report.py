"""Human-readable tables and JSON documents for the command line."""
from __future__ import annotations

from collections.abc import Sequence

from .graph import Net
from .shapes import NetShapes


def format_shape(shape: Sequence[int] | None) -> str:
    """``1x20x24x24``; ``()`` for a scalar; ``?`` when unknown."""
    if shape is None:
        return "?"
    return "x".join(str(d) for d in shape) if len(shape) else "()"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def net_summary(net: Net, shapes: NetShapes, weight_bytes: int) -> dict:
    """The ``info`` document: one entry per layer, and totals."""
    layers = []
    for layer in net.layers:
        info = shapes.layer(layer.name)
        layers.append({
            "name": layer.name,
            "type": layer.type,
            "bottoms": [b.name for b in layer.bottoms],
            "tops": [t.name for t in layer.tops],
            "top_shapes": [list(s) for s in info.top_shapes],
            "params": info.params,
            "macs": info.macs,
        })
    totals = {
        "layers": len(layers),
        "params": sum(entry["params"] for entry in layers),
        "macs": sum(entry["macs"] for entry in layers),
        "weight_bytes": weight_bytes,
    }
    return {"name": net.name, "layers": layers, "totals": totals}


def format_summary(summary: dict) -> str:
    """The ``info`` table."""
    rows = [(entry["name"], entry["type"], f"{', '.join(entry['bottoms']) or '-'} -> {', '.join(entry['tops']) or '-'}",
             ", ".join(format_shape(s) for s in entry["top_shapes"]) or "-", f"{entry['params']:,}", f"{entry['macs']:,}")
            for entry in summary["layers"]]
    table = format_table(("layer", "type", "bottoms -> tops", "output shape", "params", "MACs"), rows, right=(4, 5))
    totals = summary["totals"]
    return (f"{table}\n\nnet '{summary['name']}': {totals['layers']} layers, {totals['params']:,} parameters, "
            f"{totals['macs']:,} MACs, {totals['weight_bytes']:,} weight bytes")
