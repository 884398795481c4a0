"""Human-readable tables and JSON documents for the command line."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def net_batch(net: Net, shapes: NetShapes) -> int:
    """The batch the shapes were inferred for: the first input's first dimension (1 without inputs)."""
    source = next((layer for layer in net.layers if not layer.bottoms and layer.tops), None)
    shape = shapes.blobs.get(source.tops[0]) if source is not None else None
    return int(shape[0]) if shape else 1


def per_image(macs: int, batch: int) -> int:
    """MACs of one image from the MACs of a batch."""
    return round(macs / batch) if batch > 0 else macs


def net_summary(net: Net, shapes: NetShapes, weight_bytes: int) -> dict:
    """The ``info`` document: one entry per layer (MACs per image), the batch of the shapes, and totals."""
    batch = net_batch(net, shapes)
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
            "macs": per_image(info.macs, batch),
        })
    totals = {
        "layers": len(layers),
        "params": sum(entry["params"] for entry in layers),
        "macs": sum(entry["macs"] for entry in layers),
        "weight_bytes": weight_bytes,
    }
    return {"name": net.name, "batch": batch, "layers": layers, "totals": totals}


def format_summary(summary: dict) -> str:
    """The ``info`` table."""
    rows = [(entry["name"], entry["type"], f"{', '.join(entry['bottoms']) or '-'} -> {', '.join(entry['tops']) or '-'}",
             ", ".join(format_shape(s) for s in entry["top_shapes"]) or "-", f"{entry['params']:,}", f"{entry['macs']:,}")
            for entry in summary["layers"]]
    table = format_table(("layer", "type", "bottoms -> tops", "output shape", "params", "MACs/image"), rows,
                         right=(4, 5))
    totals = summary["totals"]
    return (f"{table}\n\nnet '{summary['name']}': {totals['layers']} layers, {totals['params']:,} parameters, "
            f"{totals['macs']:,} MACs per image (shapes at batch {summary['batch']}), "
            f"{totals['weight_bytes']:,} weight bytes")


def groups_summary(groups) -> dict:
    """The ``info --groups`` document."""
    entries = []
    for group in groups.groups:
        if not group.producers:
            continue
        entry = {"id": group.id, "name": group.name, "size": group.size, "producers": group.producers,
                 "prunable": group.prunable, "pinned": group.pinned,
                 "members": [{"layer": m.layer, "role": m.role} for m in group.members]}
        if group.chunks > 1:
            entry["even_per"] = group.chunks
        if group.maxout is not None:
            entry["maxout"] = {"form": group.maxout.form, "units": group.maxout.units, "k": group.maxout.k,
                               "layers": group.maxout.layers, "branches": group.maxout.branches}
        entries.append(entry)
    return {"groups": entries, "prunable": sum(e["prunable"] for e in entries)}


def format_groups(summary: dict) -> str:
    """The ``info --groups`` table: one line per group, then its members or why it is pinned."""
    lines = []
    for entry in summary["groups"]:
        maxout = entry.get("maxout")
        kind = (f"maxout {maxout['form']}: {maxout['units']} units x k={maxout['k']}" if maxout
                else f"{entry['size']} channels")
        state = "prunable" if entry["prunable"] else "pinned"
        lines.append(f"group {entry['id']} '{entry['name']}' ({kind}) {state}"
                     + (f", kept even over {entry['even_per']} groups" if "even_per" in entry else ""))
        lines.append(f"    producers: {', '.join(entry['producers'])}")
        members = sorted({f"{m['layer']} ({m['role']})" for m in entry["members"]} - {f"{p} (out)" for p in entry["producers"]})
        if members:
            lines.append(f"    members: {', '.join(members)}")
        for reason in entry["pinned"]:
            lines.append(f"    pinned: {reason}")
    lines.append(f"\n{summary['prunable']} of {len(summary['groups'])} groups can be pruned")
    return "\n".join(lines)


def format_differences(differences) -> str:
    """The ``compare`` table, with the first divergence marked."""
    rows, marked = [], False
    for d in differences:
        flag = ""
        if d.diverges and not marked:
            flag, marked = "<- first divergence", True
        if d.max_abs is None:
            rows.append((d.name, format_shape(d.shape_a), format_shape(d.shape_b), "-", "-", "-", flag or "shapes differ"))
        else:
            rows.append((d.name, format_shape(d.shape_a), format_shape(d.shape_b), f"{d.max_abs:.3g}",
                         f"{d.relative:.3g}", f"{d.cosine:.6f}", flag))
    return format_table(("blob", "shape A", "shape B", "max |A-B|", "relative", "cosine", ""), rows)


def format_output_checks(checks, atol: float, rtol: float) -> str:
    """The outputs against the tolerances, one line each, then the verdict."""
    lines = [f"\noutputs (|A-B| <= {atol:g} + {rtol:g}*|B|):"]
    for check in checks:
        figures = "shapes differ" if check.max_abs is None else \
            f"max |A-B| {check.max_abs:.3g}, max relative {check.max_rel:.3g}"
        figures += "".join(f", {kind} {value:.4f}" for kind, value in check.agreement.items())
        lines.append(f"  {check.name}: {figures}: {'ok' if check.passed else 'EXCEEDS the tolerance'}")
    failing = next((check.name for check in checks if not check.passed), None)
    lines.append(f"first failing output: {failing}" if failing else "every output is within the tolerance")
    return "\n".join(lines)


def prune_report(before: NetShapes, after: NetShapes, net_before: Net, net_after: Net) -> dict:
    """Per layer params/MACs (per image) before -> after, the batch of the shapes, and totals."""
    batch = net_batch(net_before, before)
    layers = []
    for layer in net_before.layers:
        old = before.layer(layer.name)
        new = after.layer(layer.name) if net_after.has_layer(layer.name) else None
        layers.append({"name": layer.name, "type": layer.type, "params": [old.params, new.params if new else 0],
                       "macs": [per_image(old.macs, batch), per_image(new.macs, batch) if new else 0],
                       "top_shapes": [[list(s) for s in old.top_shapes], [list(s) for s in new.top_shapes] if new else []]})
    (params_before, macs_before), (params_after, macs_after) = before.totals(), after.totals()
    return {"layers": layers, "batch": batch,
            "totals": {"params": [params_before, params_after],
                       "macs": [per_image(macs_before, batch), per_image(macs_after, batch)]}}


def format_prune_report(report: dict) -> str:
    """The human-readable prune table."""
    rows = []
    for entry in report["layers"]:
        (p0, p1), (m0, m1) = entry["params"], entry["macs"]
        if p0 != p1 or m0 != m1:
            rows.append((entry["name"], entry["type"], f"{p0:,} -> {p1:,}", f"{m0:,} -> {m1:,}"))
    table = format_table(("layer", "type", "params", "MACs/image"), rows)
    totals = report["totals"]
    (p0, p1), (m0, m1) = totals["params"], totals["macs"]
    lines = [table, "", f"parameters {p0:,} -> {p1:,} ({_percent(p1, p0)}), MACs per image {m0:,} -> {m1:,} "
                        f"({_percent(m1, m0)}; shapes at batch {report.get('batch', 1)})"]
    if "files" in report:
        files = report["files"]
        lines.append(f"caffemodel {files['caffemodel'][0]:,} -> {files['caffemodel'][1]:,} bytes")
    if "latency_ms" in report:
        latency = report["latency_ms"]
        lines.append(f"latency {latency['before']:.3f} -> {latency['after']:.3f} ms per run of batch {latency['batch']} "
                     f"({latency['backend']}, mean of {latency['runs']} runs)")
    if "accuracy" in report:
        acc = report["accuracy"]
        lines.append(f"top-1 accuracy {acc['before']:.4f} -> {acc['after']:.4f} on {acc['samples']} samples")
    if "agreement" in report:
        agree = report["agreement"]
        if "detections" in agree:
            lines.append(f"agreement with the original: {100 * agree['detections']:.1f}% of its detections (score >= "
                         f"{agree['score_threshold']:g}) reproduced at IoU >= 0.5 on {agree['samples']} samples")
        else:
            lines.append(f"against the original's outputs: relative error {agree['rel-error']:.4g}, cosine "
                         f"{agree['cosine']:.6f} on {agree['samples']} samples")
    return "\n".join(lines)


def _percent(new: int, old: int) -> str:
    return f"{100.0 * (new - old) / old:+.1f}%" if old else "n/a"


def format_written(paths, precision: str = "fp32") -> str:
    """``wrote A (1,234 bytes), B (…)``: what a writer wrote; an fp16 caffemodel says so."""
    parts = []
    for path in paths:
        half = ", fp16" if precision == "fp16" and str(path).endswith(".caffemodel") else ""
        parts.append(f"{path} ({Path(path).stat().st_size:,} bytes{half})")
    return f"wrote {', '.join(parts)}"
