"""Per-channel summaries computed inside the graph, so statistics need no full activations.

For a blob (N, C, ...) the summary output ``<name>/channel_stats`` is a (3, C)
tensor holding, per channel, the sum of the values, the sum of their squares
and how many are <= 0 (zeros after an activation), reduced over the batch and
every position. onnxruntime then returns 3·C numbers instead of the blob.
"""
import numpy as np
from onnx import TensorProto, helper

from ..graph import BlobVersion
from .context import GraphBuilder

SUFFIX = "/channel_stats"


def summary_name(name: str) -> str:
    """The graph output holding the summary of tensor ``name``."""
    return name + SUFFIX


def add_channel_summary(builder: GraphBuilder, version: BlobVersion):
    """Append the summary nodes for one blob version; return the output's declaration."""
    name = builder.names[version]
    shape = tuple(builder.shapes.blob(version))
    if len(shape) < 2:
        raise ValueError(f"blob '{version.key}' has no channel axis to summarise")
    axes = builder.const([0] + list(range(2, len(shape))), name + "/summary_axes", np.int64)
    first = builder.const([0], name + "/summary_first", np.int64)
    zero = builder.const(0.0, name + "/summary_zero")
    parts = []
    for kind, source in (("sum", name), ("squares", None), ("zeros", None)):
        if kind == "squares":
            source = builder.unique(name + "/squared")
            builder.nodes.append(helper.make_node("Mul", [name, name], [source]))
        if kind == "zeros":
            below = builder.unique(name + "/not_positive")
            source = builder.unique(name + "/not_positive_float")
            builder.nodes.append(helper.make_node("LessOrEqual", [name, zero], [below]))
            builder.nodes.append(helper.make_node("Cast", [below], [source], to=TensorProto.FLOAT))
        reduced = builder.unique(f"{name}/{kind}")
        row = builder.unique(f"{name}/{kind}_row")
        builder.nodes.append(helper.make_node("ReduceSum", [source, axes], [reduced], keepdims=0))
        builder.nodes.append(helper.make_node("Unsqueeze", [reduced, first], [row]))
        parts.append(row)
    output = summary_name(name)
    builder.nodes.append(helper.make_node("Concat", parts, [output], axis=0))
    return helper.make_tensor_value_info(output, TensorProto.FLOAT, [3, shape[1]])
