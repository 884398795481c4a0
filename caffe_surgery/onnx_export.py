"""Export a Caffe net, or the part of it some blobs need, to a checked ONNX model.

Tensor names follow the Caffe blobs: a data layer's tops and the final version
of every other blob keep the blob name; an earlier version of a blob rewritten
in place (``fc`` before ``relu`` wrote it again) is ``name@producer``, e.g.
``fc@fc``, and a rewritten data blob's final version is its key ``data@scale``.
Training-only layers (losses, Accuracy, Silence) are left out, and so are data
tops no exported layer reads.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import onnx
from onnx import helper

from . import layers
from .errors import GraphError, UnsupportedLayerError
from .export.context import GraphBuilder, LayerContext
from .export.summaries import KINDS, add_channel_summary
from .graph import BlobVersion, Layer, Net
from .io import atomic_write

class BatchDependentError(GraphError):
    """A net whose Caffe result depends on the batch size (literal batch dims), asked for a dynamic batch."""

    def __init__(self, why: str, *, file: str | None = None, layer: str | None = None):
        self.why = why
        super().__init__(f"{why}; a dynamic batch cannot follow it: export with a fixed batch (leave out "
                         "--dynamic-batch; set the batch with --input NAME=N,C,H,W)", file=file, layer=layer)


MIN_OPSET = 13
"""Softmax along one axis and Split sizes as an input need opset 13."""

BlobSpec = BlobVersion | str


def tensor_names(net: Net) -> dict[BlobVersion, str]:
    """The ONNX tensor name of every blob version of ``net`` (see the module docstring)."""
    data_blobs = {top.name for layer in net.layers if layers.is_data(layer.type) for top in layer.tops}
    names = {}
    for layer in net.layers:
        for top in layer.tops:
            keeps_name = top.version == 0 if top.name in data_blobs else top == net.final(top.name)
            names[top] = top.name if keeps_name else f"{top.name}@{top.producer}"
    if len(set(names.values())) != len(names):
        raise GraphError("blob names clash with the 'name@layer' names of in-place versions")
    return names


def default_outputs(net: Net) -> list[BlobVersion]:
    """The deploy outputs: final blob versions of deploy layers that no deploy layer reads.

    What only a loss or Accuracy reads is a prediction, so it is an output; what a Silence
    layer reads was meant to be thrown away, so it is not.
    """
    kept = [layer for layer in net.layers if not layers.is_training_only(layer.type)]
    read = {bottom for layer in net.layers if layer.type == "Silence" or not layers.is_training_only(layer.type)
            for bottom in layer.bottoms}
    return [top for layer in kept if not layers.is_data(layer.type) for top in layer.tops
            if top == net.final(top.name) and top not in read]


def graph_outputs(net: Net, taps: Iterable[BlobSpec] = (), outputs: Iterable[BlobSpec] | None = None
                  ) -> list[BlobVersion]:
    """The blob versions an export produces: ``outputs`` (default: the deploy outputs), then the taps."""
    chosen = default_outputs(net) if outputs is None else [_resolve(net, spec) for spec in outputs]
    for spec in taps:
        chosen.append(_resolve(net, spec))
    return list(dict.fromkeys(chosen))


def _resolve(net: Net, spec: BlobSpec) -> BlobVersion:
    return spec if isinstance(spec, BlobVersion) else net.resolve(spec)


def needed_layers(net: Net, targets: Sequence[BlobVersion]) -> list[Layer]:
    """The layers computing ``targets``, in net order; an UnsupportedLayerError for the first unknown type."""
    needed: set[str] = set()
    pending = [net.producer(version) for version in targets]
    while pending:
        layer = pending.pop()
        if layer.name not in needed:
            needed.add(layer.name)
            pending.extend(net.producer(bottom) for bottom in layer.bottoms)
    chosen = [layer for layer in net.layers if layer.name in needed]
    for layer in chosen:
        converter(layer, net.source)
    return chosen


def supported_types() -> list[str]:
    """The layer types the exporter can convert, sorted."""
    return layers.types_with("export")


def converter(layer: Layer, source: str | None = None):
    """The converter of the layer's type; an UnsupportedLayerError (with the reason, where one is declared)."""
    declaration = layers.lookup(layer.type)
    if declaration is not None and not isinstance(declaration.export, layers.NotApplicable):
        return declaration.export
    reason = f"; {declaration.export.reason}" if declaration is not None else ""
    raise UnsupportedLayerError(f"layer type '{layer.type}' cannot be exported to ONNX "
                                f"(supported: {', '.join(supported_types())}){reason}", file=source, layer=layer.name)


def export_onnx(net: Net, shapes, *, opset: int = 17, dynamic_batch: bool = False,
                taps: Iterable[BlobSpec] = (), outputs: Iterable[BlobSpec] | None = None,
                summaries: Iterable[BlobSpec] = (), summary_kinds: tuple[str, ...] = KINDS,
                check: bool = True) -> onnx.ModelProto:
    """Convert ``net`` to an ONNX model that passes the full checker and strict shape inference.

    ``shapes`` needs only ``shapes.blob(version) -> tuple``. ``outputs`` (blob versions or
    ``name``/``name@layer`` specs) restricts the graph to what they need, default the net's deploy
    outputs; ``taps`` are extra outputs; ``summaries`` are blobs whose per-channel ``summary_kinds``
    (sums, sums of squares, counts of values <= 0) become extra outputs (see ``export.summaries``). With
    ``dynamic_batch`` dim 0 of the inputs is symbolic. ``check=False`` skips the checker and shape
    inference (for sessions built in memory, where onnxruntime validates the graph itself).
    """
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is outside {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    targets = graph_outputs(net, taps, outputs)
    summarised = [_resolve(net, spec) for spec in summaries]
    if not targets and not summarised:
        raise GraphError("the net has no outputs to export", file=net.source)
    chosen = needed_layers(net, targets + summarised)
    names = tensor_names(net)
    used = {bottom for layer in chosen for bottom in layer.bottoms} | set(targets) | set(summarised)
    builder = GraphBuilder(shapes, names, used, opset, dynamic_batch)
    for layer in chosen:
        converter(layer)(LayerContext(builder, layer))
    if builder.batch_dependent:
        layer_name, why = builder.batch_dependent[0]
        raise BatchDependentError(why, file=net.source, layer=layer_name)
    declared = [builder.value_info(names[v], shapes.blob(v), None) for v in targets]
    declared += [add_channel_summary(builder, v, summary_kinds) for v in summarised]
    graph = helper.make_graph(builder.nodes, net.name or "caffe_net", builder.inputs, declared,
                              initializer=builder.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="caffe-surgery",
                              ir_version=helper.find_min_ir_version_for(opsets))
    if check:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write the model to ``path`` atomically (a temporary file, then a rename)."""
    atomic_write(path, [model.SerializeToString()])
