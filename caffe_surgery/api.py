"""The Python API: a few functions over the library's own steps, the ones the command line runs.

Their names differ from the package's module names (``save``, ``groups``,
``evaluate``), which as attributes of the package would hide them.

``import caffe_surgery as cs`` exposes them (imported on first use, so the
package itself imports fast and never imports PyTorch)::

    model = cs.load("net.prototxt", "net.caffemodel")
    data = cs.open_data(model, "idx:images.gz:labels.gz", scale=1 / 255)
    plan = cs.make_plan(model, "apoz", ratio=0.5, statistics=cs.gather_statistics(model, "apoz", data))
    small = cs.prune(model, plan)
    cs.save_pair(small, "out/small")
"""
from __future__ import annotations

import os
from pathlib import Path

from . import caffe_pb2
from .model import Model


def load(prototxt: str | os.PathLike, weights: str | os.PathLike | None = None, *,
         input_shapes: dict[str, tuple[int, ...]] | None = None, phase: str = "TEST") -> Model:
    """Read a prototxt (current, V1 or V0) and optionally its caffemodel into a checked ``Model``
    (``samples/...`` paths fall back to the samples shipped in the package)."""
    from .pipeline import NetRequest, load as load_request
    from .resources import input_path

    request = NetRequest(input_path(str(prototxt)), None if weights is None else input_path(str(weights)),
                         input=list((input_shapes or {}).items()), phase=caffe_pb2.Phase.Value(phase.upper()))
    return load_request(request)[0]


def channel_groups(model: Model):
    """The channel groups of the model: what can be removed together (``Groups``)."""
    from .groups import build_groups

    return build_groups(model.net, model.shapes)


def summary(model: Model) -> dict:
    """The ``info`` document: per-layer types, shapes, parameters and MACs, and totals."""
    from .model import layer_weights_nbytes
    from .report import net_summary

    return net_summary(model.net, model.shapes, layer_weights_nbytes(model.net))


def export_onnx(model: Model, path: str | os.PathLike, *, opset: int = 17, dynamic_batch: bool = False) -> Path:
    """Write the model as ONNX (checked) with Caffe's blob names; return the path."""
    from .onnx_export import export_onnx as export, save_onnx

    save_onnx(export(model.net, model.shapes, opset=opset, dynamic_batch=dynamic_batch), path)
    return Path(path)


def run(model: Model, inputs, *, device: str = "auto"):
    """The model's outputs (blob name -> array) for a batch of inputs, computed by onnxruntime."""
    from .runtime import Runtime

    return Runtime(model.net, model.shapes, device=device).run(inputs)


def open_data(model: Model, spec: str | None = None, *, scale: float | None = None,
              mean: list[float] | None = None, limit: int | None = None):
    """A data source (``lmdb:``, ``list:``, ``idx:``, ``npy:``, ``csv:`` spec; None: the net's data layer),
    transformed by ``scale``/``mean`` or else by the net's own transform_param."""
    from .dataflow import open_source
    from .pipeline import transform_parameter

    source = open_source(model.net, spec, transform_parameter(scale, mean))
    return source.head(limit) if limit is not None else source


def accuracy(model: Model, data, *, top_k=(1,), batch_size: int | None = None, device: str = "auto"):
    """Top-k accuracy (and loss) of the model on a data source (``Evaluation``)."""
    from .evaluate import evaluate as run_evaluation
    from .pipeline import data_batches

    return run_evaluation(model.net, model.shapes, data_batches(model, data, batch_size, "eval"), top_k,
                          {"device": device})


def gather_statistics(model: Model, criterion: str, data, *, layers: list[str] | None = None,
                      batch_size: int | None = None, device: str = "auto"):
    """Stream the data through the model and gather what a data-driven criterion needs (``Statistics``)."""
    from .criteria import get_criterion
    from .pipeline import data_batches
    from .pruning import chosen_groups, gather, statistics_plan

    rule, net_groups = get_criterion(criterion), channel_groups(model)
    group_list = chosen_groups(net_groups, layers, maxout_only=rule.name == "maxout-wins")
    stats = statistics_plan(model, net_groups, group_list, rule)
    return gather(model, stats, net_groups, data_batches(model, data, batch_size, f"relevance ({rule.name})"),
                  {"device": device})


def make_plan(model: Model, criterion: str = "weight-l1", *, ratio: float | None = None, keep: int | None = None,
              statistics=None, layers: list[str] | None = None, **budget):
    """A pruning plan: per group, the channels the criterion ranks best within the budget (``Plan``).

    ``budget``: the other ``selection.Budget`` fields (min_keep, round_to, global_ranking, maxout_k, ...).
    Data-driven criteria need ``statistics`` from ``gather_statistics``.
    """
    from .criteria import get_criterion
    from .errors import CaffeSurgeryError
    from .pruning import chosen_groups, make_plan as plan_from_scores, score
    from .selection import Budget

    rule, net_groups = get_criterion(criterion), channel_groups(model)
    if rule.needs_data and statistics is None:
        raise CaffeSurgeryError(f"criterion '{rule.name}' needs statistics: pass gather_statistics(...)")
    group_list = chosen_groups(net_groups, layers, maxout_only=rule.name == "maxout-wins")
    scores = score(model, net_groups, group_list, rule, statistics)
    return plan_from_scores(scores, net_groups, group_list, Budget(ratio=ratio, keep=keep, **budget),
                            {"criterion": rule.name, "ratio": ratio})


def prune(model: Model, plan) -> Model:
    """The smaller model the plan leaves (exact surgery on weights and shapes)."""
    from .plan import Plan
    from .pruning import prune as apply

    pruned = apply(model, plan if isinstance(plan, Plan) else Plan.load(plan))
    return Model(net=pruned.net, shapes=pruned.shapes)


def save_pair(model: Model, prefix: str | os.PathLike, *, precision: str = "fp32") -> tuple[Path, Path]:
    """Write ``PREFIX.prototxt`` and ``PREFIX.caffemodel`` (float32, or fp16 as OpenCV's shrinkCaffeModel)."""
    from .save import save_pair as save

    return save(model.net, prefix, precision)
