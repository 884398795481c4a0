"""Per-channel summaries computed inside the graph, so statistics need no full activations.

For a blob (N, C, ...) the summary output ``<name>/channel_stats`` is a
(len(kinds), C) tensor holding, per channel and reduced over the batch and
every position, the kinds asked for, in this order: ``sum`` (of the values),
``squares`` (sum of their squares), ``zeros`` (how many are <= 0, i.e. zero
after an activation). onnxruntime then returns a few numbers per channel
instead of the blob, and computes only the reductions a criterion needs.
"""
import numpy as np
from onnx import TensorProto, helper

from ..graph import BlobVersion
from .context import GraphBuilder

SUFFIX = "/channel_stats"
KINDS = ("sum", "squares", "zeros")


def summary_name(name: str) -> str:
    """The graph output holding the summary of tensor ``name``."""
    return name + SUFFIX


def add_channel_summary(builder: GraphBuilder, version: BlobVersion, kinds: tuple[str, ...] = KINDS):
    """Append the summary nodes for one blob version; return the output's declaration."""
    name = builder.names[version]
    shape = tuple(builder.shapes.blob(version))
    if len(shape) < 2:
        raise ValueError(f"blob '{version.key}' has no channel axis to summarise")
    axis_list = [0] + list(range(2, len(shape)))
    as_input = builder.opset >= 18 or any(kind != "squares" for kind in kinds)  # else only an attribute reads them
    axes = builder.const(axis_list, name + "/summary_axes", np.int64) if as_input else None
    first = builder.const([0], name + "/summary_first", np.int64)
    counted = None
    if "zeros" in kinds:
        zero = builder.const(0.0, name + "/summary_zero")
        below = builder.unique(name + "/not_positive")
        counted = builder.unique(name + "/not_positive_float")
        builder.nodes.append(helper.make_node("LessOrEqual", [name, zero], [below]))
        builder.nodes.append(helper.make_node("Cast", [below], [counted], to=TensorProto.FLOAT))
    reductions = {"sum": ("ReduceSum", name), "squares": ("ReduceSumSquare", name), "zeros": ("ReduceSum", counted)}
    parts = []
    for kind in (k for k in KINDS if k in kinds):
        op, source = reductions[kind]
        reduced = builder.unique(f"{name}/{kind}")
        row = builder.unique(f"{name}/{kind}_row")
        if op == "ReduceSum":
            builder.nodes.append(helper.make_node(op, [source, axes], [reduced], keepdims=0))
        else:  # ReduceSumSquare takes its axes as an attribute before opset 18
            builder.nodes.append(helper.make_node(op, [source], [reduced], keepdims=0, axes=axis_list)
                                 if builder.opset < 18 else helper.make_node(op, [source, axes], [reduced], keepdims=0))
        builder.nodes.append(helper.make_node("Unsqueeze", [reduced, first], [row]))
        parts.append(row)
    output = summary_name(name)
    builder.nodes.append(helper.make_node("Concat", parts, [output], axis=0))
    return helper.make_tensor_value_info(output, TensorProto.FLOAT, [len(parts), shape[1]])
