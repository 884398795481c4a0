"""The ``caffe-surgery`` command line: one small function per verb."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from . import __version__, caffe_pb2, layers
from .agreement import METRICS, SCORE_THRESHOLD
from .compare import ATOL, RTOL
from .criteria import CRITERIA
from .data.spec import SPEC_FORMS
from .errors import CaffeSurgeryError
from .report import format_written
from .resources import input_path

EXAMPLES = {
    "info": ["caffe-surgery info samples/lenet_maxout.prototxt -w samples/lenet_maxout.caffemodel",
             "caffe-surgery info train_val.prototxt --phase TRAIN --input data=64,3,32,32 --json",
             "caffe-surgery info samples/lenet_maxout.prototxt --groups"],
    "upgrade": ["caffe-surgery upgrade old_deploy.prototxt new_deploy.prototxt",
                "caffe-surgery upgrade old.prototxt new.prototxt -w old.caffemodel -o new.caffemodel"],
    "check": ["caffe-surgery check deploy.prototxt -w weights.caffemodel"],
    "export": ["caffe-surgery export deploy.prototxt -w weights.caffemodel -o model.onnx --dynamic-batch"],
    "eval": ["caffe-surgery eval lenet_test.prototxt -w lenet.caffemodel --top-k 1,5",
             "caffe-surgery eval deploy.prototxt -w w.caffemodel --data idx:t10k-images.gz:t10k-labels.gz --limit 1000"],
    "compare": ["caffe-surgery compare a.prototxt a.caffemodel b.prototxt b.caffemodel --limit 8",
                "caffe-surgery compare a.prototxt a.caffemodel a.prototxt a.caffemodel --backend opencv"],
    "convert-data": ["caffe-surgery convert-data idx:train-images.gz:train-labels.gz -o mnist_train_lmdb"],
    "relevance": ["caffe-surgery relevance net.prototxt -w w.caffemodel --criterion maxout-wins --data lmdb:train_lmdb -o stats.npz",
                  "caffe-surgery relevance net.prototxt -w w.caffemodel --criterion apoz --data lmdb:db --shard 0/4 -o part_0.npz",
                  "caffe-surgery relevance merge part_*.npz -o stats.npz"],
    "sparsify": ["caffe-surgery sparsify net.prototxt -w w.caffemodel --sparsity 0.9 --global -o out/sparse",
                 "caffe-surgery sparsify net.prototxt -w w.caffemodel --std-factor 0.7 -o out/sparse"],
    "train": ["caffe-surgery train solver.prototxt -o trained.caffemodel",
              "caffe-surgery train solver.prototxt -w pruned.caffemodel --keep-zeros --max-iter 2000 -o tuned.caffemodel"],
    "importance": ["caffe-surgery importance solver.prototxt -w trained.caffemodel --tolerance 0.5 -o out/small"],
    "reproduce": ["caffe-surgery reproduce lenet --data idx:train-images-idx3-ubyte.gz:train-labels-idx1-ubyte.gz "
                  "--test-data idx:t10k-images-idx3-ubyte.gz:t10k-labels-idx1-ubyte.gz -o results/lenet"],
    "fold-bn": ["caffe-surgery fold-bn net.prototxt -w w.caffemodel -o out/folded"],
    "reshape": ["caffe-surgery reshape deploy.prototxt -w w.caffemodel --input data=8,3,300,300 -o deploy_b8"],
    "draw": ["caffe-surgery draw deploy.prototxt -o net.svg",
             "caffe-surgery draw net.prototxt -w w.caffemodel --plan small.plan.json -o pruned.png"],
    "profile": ["caffe-surgery profile deploy.prototxt -w w.caffemodel --runs 20",
                "caffe-surgery profile deploy.prototxt -w w.caffemodel --backend opencv --json"],
    "plot": ["caffe-surgery plot out/net_small.plan.json -o tolerance.png",
             "caffe-surgery plot results/lenet/results.json -o stages.png"],
    "sensitivity": ["caffe-surgery sensitivity net.prototxt -w w.caffemodel --data lmdb:val_lmdb --ratios 0.2,0.5,0.8 "
                    "-o out/sensitivity"],
    "prune": ["caffe-surgery prune net.prototxt -w w.caffemodel --criterion weight-l1 --ratio 0.5 -o out/net_small",
              "caffe-surgery prune net.prototxt -w w.caffemodel --criterion weight-l1 --budget macs=0.5 --data lmdb:db "
              "--reconstruct -o out/half_macs",
              "caffe-surgery prune net.prototxt -w w.caffemodel --plan plan.json -o out/net_small",
              "caffe-surgery prune net.prototxt -w w.caffemodel --criterion maxout-wins --maxout-k 3 --data lmdb:db -o small"],
}


PROFILE_RUNS = 20  # timed runs behind prune --profile's latencies


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=N,C,H,W`` -> (name, shape)."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W with positive integers, got '{text}'")
    return name, shape


def _phase(text: str) -> int:
    try:
        return caffe_pb2.Phase.Value(text.upper())
    except ValueError:
        raise argparse.ArgumentTypeError(f"phase must be TRAIN or TEST, got '{text}'") from None


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got '{text}'")
    return int(index), int(count)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {text}")
    return value


DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _ratio_list(text: str) -> list[float]:
    try:
        return sorted({_ratio(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios in [0, 1), got '{text}'") from None


def _override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LAYER=RATIO, got '{text}'")
    return name, _ratio(value)


# -- shared arguments and loading ---------------------------------------------------

def _net_arguments(parser, weights_required=False, data=False):
    parser.add_argument("prototxt", type=input_path, help="net definition (current, V1 or V0 format)")
    parser.add_argument("-w", "--weights", type=input_path, required=weights_required,
                        help="caffemodel with the weights")
    parser.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W",
                        help="shape of a data/input blob (repeatable); overrides the net's own")
    parser.add_argument("--phase", type=_phase, default=caffe_pb2.TEST, help="TRAIN or TEST (default TEST)")
    parser.add_argument("--top-shape", action="append", type=parse_input_shape, default=[], metavar="LAYER=N,C,H,W",
                        help="output shape of a layer type caffe-surgery has no rule for (repeat for more tops)")
    if data:
        _data_arguments(parser)


def _data_arguments(parser):
    parser.add_argument("--data", metavar="SPEC", help=f"{SPEC_FORMS} (default: the net's own Data/ImageData layer)")
    parser.add_argument("--scale", type=float, help="multiply pixels by this after the mean (when the net has no "
                                                     "data layer with a transform_param), e.g. 0.00390625")
    parser.add_argument("--mean", type=lambda t: [float(v) for v in t.split(",")],
                        help="mean value(s) to subtract per channel, e.g. 104,117,123")
    parser.add_argument("--skip", type=int, help="leave out the first N samples (before --limit)")
    parser.add_argument("--limit", type=int, help="use only the first N samples")
    parser.add_argument("--batch-size", type=int, help="samples per run (default: the data layer's, else 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime device")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "opencv"), default="auto",
                        help="what runs the net: onnxruntime, opencv (dnn, CPU) or auto (default: the faster of "
                             "the two on the first batch, when their results agree)")


def _precision_argument(parser):
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="caffemodel blobs: fp32 (default) or fp16 (Convolution/InnerProduct as half floats, "
                             "the format of OpenCV's shrinkCaffeModel)")


def _engine_arguments(parser):
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where the pass runs: here, or on a Ray cluster (pip install 'caffe-surgery[cluster]')")
    parser.add_argument("--address", help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 "
                                          "(default: start one on this machine)")
    parser.add_argument("--shards", type=int, help="split the data into N contiguous shards, one task each, merged "
                                                   "in order (default: 1 locally, the cluster's CPUs on Ray)")


def _data_request(args, net):
    """What the data arguments ask for, as a request a worker can open by itself."""
    from .dataflow import DataRequest, base_dir, batch_size_for

    return DataRequest(args.data, _transform(args), args.limit, batch_size=batch_size_for(net, args.batch_size),
                       directory=base_dir(net), skip=args.skip or 0)


def _runtime_options(args) -> dict:
    return {"device": args.device, "threads": args.threads, "backend": args.backend}


def _task_runtime_options(args) -> dict:
    """The runtime options of a pass's tasks: on Ray one onnxruntime thread per task (each task holds
    one CPU) unless --threads says otherwise, and onnxruntime unless --backend names another (workers
    probing on their own could choose differently, and the shards must be computed alike)."""
    on_ray = args.engine == "ray"
    return {**_runtime_options(args), "threads": args.threads or (1 if on_ray else None),
            "backend": "onnxruntime" if on_ray and args.backend == "auto" else args.backend}


def _transform(args):
    """A TransformationParameter from --scale/--mean, or None to use the net's own."""
    if args.scale is None and args.mean is None:
        return None
    transform = caffe_pb2.TransformationParameter()
    if args.scale is not None:
        transform.scale = args.scale
    transform.mean_value.extend(args.mean or [])
    return transform


def _load(args, with_data: bool = False):
    """The model, plus its data source when the verb reads data (--data, else the net's data layer)."""
    from .dataflow import batch_size_for, input_layer, item_shapes
    from .model import load_model, load_net

    shapes = dict(args.input)
    source = None
    if with_data:
        net = load_net(args.prototxt, phase=args.phase)
        source = _data_request(args, net).open(net)
        top = input_layer(net).tops[0].name
        shapes.setdefault(top, (batch_size_for(net, args.batch_size),) + tuple(source.shape))
    top_shapes: dict[str, list[tuple[int, ...]]] = {}
    for layer, shape in args.top_shape:
        top_shapes.setdefault(layer, []).append(shape)
    model = load_model(args.prototxt, args.weights, phase=args.phase, input_shapes=shapes,
                       data_shapes=item_shapes(args.prototxt), top_shapes=top_shapes)
    if source is not None:
        top = input_layer(model.net).tops[0]
        if tuple(model.shapes.blob(top)[1:]) != tuple(source.shape):
            raise CaffeSurgeryError(f"data samples are {tuple(source.shape)} but the net's '{top.name}' takes "
                                    f"{tuple(model.shapes.blob(top)[1:])}", file=source.name)
    return model, source


def _batches(model, source, args, desc: str):
    from .dataflow import batch_size_for, batches

    return batches(source, batch_size_for(model.net, args.batch_size), desc)


# -- verbs ------------------------------------------------------------------------------

def cmd_info(args) -> int:
    """Print the per-layer table (or JSON) of a net, or its channel groups."""
    from .model import layer_weights_nbytes
    from .report import format_groups, format_summary, groups_summary, net_summary

    model, _ = _load(args)
    if args.groups:
        from .groups import build_groups
        summary = groups_summary(build_groups(model.net, model.shapes))
        print(json.dumps(summary, indent=2) if args.json else format_groups(summary))
        return 0
    summary = net_summary(model.net, model.shapes, layer_weights_nbytes(model.net))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_upgrade(args) -> int:
    """Write a current-format copy of a V0/V1 prototxt and, optionally, its caffemodel."""
    from .io import read_net_text, read_weights, write_text
    from .save import save_float32_weights
    from .upgrade import upgrade_net

    if (args.weights is None) != (args.output_weights is None):
        raise CaffeSurgeryError("-w and -o go together: give both or neither")
    upgraded = upgrade_net(read_net_text(args.input_prototxt))
    if args.weights is not None:
        save_float32_weights(upgrade_net(read_weights(args.weights)), args.output_weights, args.precision)
    write_text(args.output_prototxt, upgraded)
    written = [args.output_prototxt] + ([args.output_weights] if args.weights is not None else [])
    print(format_written(written, args.precision))
    return 0


def cmd_check(args) -> int:
    """Validate a prototxt/caffemodel pair as strictly as Caffe's loader; list every problem."""
    from .check import check_files
    from .dataflow import item_shapes

    problems = check_files(args.prototxt, args.weights, input_shapes=dict(args.input), phase=args.phase,
                           data_shapes=item_shapes(args.prototxt))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {args.prototxt} and {args.weights} load as a Caffe pair")
    return 1 if problems else 0


def cmd_export(args) -> int:
    """Export to ONNX (checked with full_check and strict shape inference)."""
    from .onnx_export import export_onnx, save_onnx

    model, _ = _load(args)
    onnx_model = export_onnx(model.net, model.shapes, opset=args.opset, dynamic_batch=args.dynamic_batch)
    save_onnx(onnx_model, args.output)
    print(f"{format_written([args.output])}: inputs {', '.join(i.name for i in onnx_model.graph.input)}; "
          f"outputs {', '.join(o.name for o in onnx_model.graph.output)}")
    return 0


def cmd_eval(args) -> int:
    """Top-k accuracy (and loss) on data."""
    import time

    from .cluster import map_shards
    from .evaluate import Evaluation, EvaluationTask

    model, _ = _load(args, with_data=True)
    started = time.perf_counter()
    task = EvaluationTask(tuple(args.top_k), _task_runtime_options(args))
    counts = map_shards(task, model, _data_request(args, model.net), args.shards, engine=args.engine,
                        address=args.address, desc="eval")
    result = Evaluation.from_arrays(counts, time.perf_counter() - started)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    figures = ", ".join(f"top-{k} {result.accuracy(k):.4f}" for k in args.top_k)
    loss = f", loss {result.loss:.4f}" if result.loss is not None else ""
    print(f"{result.samples} samples: {figures}{loss} ({result.images_per_second:.1f} img/s)")
    return 0


def cmd_compare(args) -> int:
    """Run two nets on the same inputs, list blob by blob how far B is from A, and check A's outputs
    against --atol/--rtol (exit 1 when one exceeds them)."""
    import numpy as np

    from .compare import (check_output, compare, comparison_document, output_names, run_onnxruntime, run_opencv,
                          shared_blobs)
    from .dataflow import input_layer, open_source
    from .model import load_model
    from .report import format_differences, format_output_checks

    model_a = load_model(args.a_prototxt, args.a_weights, input_shapes=dict(args.input))
    model_b = load_model(args.b_prototxt, args.b_weights, input_shapes=dict(args.input))
    names = shared_blobs(model_a.net, model_b.net)
    outputs = output_names(model_a.net)
    missing = [name for name in outputs if name not in names]
    if missing:
        raise CaffeSurgeryError(f"net B does not produce net A's output(s) {', '.join(missing)}", file=args.b_prototxt)
    top = input_layer(model_a.net).tops[0]
    count = args.limit or 1
    if args.data:
        images, _ = next(iter(open_source(model_a.net, args.data).head(count).iter_batches(count)))
    else:
        images = np.random.default_rng(0).standard_normal((count,) + tuple(model_a.shapes.blob(top)[1:])).astype(np.float32)
    options = {"device": args.device, "threads": args.threads}
    values_a = run_onnxruntime(model_a.net, model_a.shapes, names, images, options)
    if args.backend == "opencv":
        values_b = run_opencv(model_b.net, args.b_prototxt, args.b_weights, names, images)
    else:
        values_b = run_onnxruntime(model_b.net, model_b.shapes, names, images, options)
    differences = compare(values_a, values_b, names)
    checks = [check_output(name, values_a[name], values_b[name], args.atol, args.rtol,
                           model_a.net.producer(model_a.net.final(name)).type == "DetectionOutput", args.score_threshold)
              for name in outputs]
    if args.json:
        print(json.dumps(comparison_document(differences, checks, args.atol, args.rtol), indent=1))
    else:
        print(format_differences(differences))
        print(format_output_checks(checks, args.atol, args.rtol))
    return 0 if all(check.passed for check in checks) else 1


def cmd_convert_data(args) -> int:
    """Write a Caffe LMDB of Datum records from any data spec."""
    from .data import convert_data

    count = convert_data(args.spec, args.output, limit=args.limit, overwrite=args.force)
    print(f"wrote {count} records to {args.output}")
    return 0


def _statistics_pass(args, model, criterion, group_list, groups, request=None):
    """The criterion's statistics over the data (``request``, default the --data arguments; --shard I/N:
    only that part), on the chosen engine."""
    from dataclasses import replace

    from .cluster import map_shards
    from .pruning import StatisticsTask, statistics_plan

    stats = statistics_plan(model, groups, group_list, criterion)
    data = replace(request or _data_request(args, model.net), window=getattr(args, "shard", None) or (0, 1))
    task = StatisticsTask(criterion.name, tuple(g.id for g in group_list), _task_runtime_options(args))
    stats.load_arrays(map_shards(task, model, data, args.shards, engine=args.engine, address=args.address,
                                 desc=f"relevance ({criterion.name})"), "the merged shards")
    return stats


def cmd_relevance(args) -> int:
    """Gather a data-driven criterion's statistics (optionally one shard) into an .npz."""
    from .criteria import get_criterion
    from .groups import build_groups
    from .pruning import chosen_groups

    criterion = get_criterion(args.criterion)
    if not criterion.needs_data or criterion.score is None:
        raise CaffeSurgeryError(f"criterion '{criterion.name}' gathers no relevance statistics; use it directly "
                                "with prune")
    model, source = _load(args, with_data=True)
    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, args.layers, maxout_only=criterion.name == "maxout-wins")
    stats = _statistics_pass(args, model, criterion, group_list, groups)
    about = {"criterion": criterion.name, "layers": ",".join(g.name for g in group_list),
             "shard": f"{args.shard[0]}/{args.shard[1]}" if args.shard else "0/1"}
    stats.save(args.output, about)
    print(f"{format_written([args.output])}: {stats.samples} samples, {len(group_list)} groups")
    return 0


def cmd_relevance_merge(args) -> int:
    """Add the statistics of shards into one file."""
    from .statistics import merge_files, save_arrays

    merged = merge_files(args.parts)
    save_arrays(args.output, merged)
    print(f"{format_written([args.output])}: {int(merged['samples'])} samples from {len(args.parts)} files")
    return 0


def _measure(model, source, args):
    """How a pruned net is judged on the (limited) data, batches decoded once and reused: top-1 accuracy, or
    agreement with the original net's outputs (--metric). Returns the metric, an evaluator ``(net, shapes) ->
    figure`` (higher is better; the original scores its accuracy, or 1.0) and the agreement (None for top-1)."""
    from .agreement import OutputAgreement, choose_metric
    from .evaluate import evaluate

    metric = choose_metric(model.net, source.has_labels, args.metric)
    held = list(_batches(model, source, args, "validation data"))
    if metric != "top1":
        measure = OutputAgreement(model.net, model.shapes, held, metric, _runtime_options(args), args.score_threshold)
        return metric, measure.quality, measure

    def accuracy(net, shapes) -> float:
        return evaluate(net, shapes, held, (1,), _runtime_options(args)).accuracy(1)

    return metric, accuracy, None


def _budget(args):
    from .selection import Budget

    if args.criterion and args.ratio is None and args.keep is None and args.maxout_k is None and args.tolerance is None:
        raise CaffeSurgeryError("say how much to remove: --ratio, --keep, --maxout-k, --tolerance or --budget")
    return Budget(ratio=args.ratio, keep=args.keep, min_keep=args.min_keep, round_to=args.round_to,
                  overrides=dict(args.layer_ratio), global_ranking=args.global_ranking, maxout_k=args.maxout_k,
                  maxout_units=args.maxout_units)


def _scores(args, model, source, groups, group_list, calibration=None):
    """Scores per group id by --criterion, and the statistics read (thinet and the data-driven criteria
    learn from ``calibration``, default ``source``)."""
    from .criteria import get_criterion
    from .pruning import score, statistics_plan

    criterion = get_criterion(args.criterion)
    if criterion.name == "thinet":
        from .thinet import thinet_scores

        held = list(_batches(model, calibration or source, args, "thinet statistics"))
        return thinet_scores(model.net, model.shapes, groups, group_list, lambda: held, _runtime_options(args)), None
    if criterion.score is None:
        raise CaffeSurgeryError(f"criterion '{criterion.name}' chooses what to remove itself; it gives no scores")
    stats = None
    if criterion.needs_data:
        stats = statistics_plan(model, groups, group_list, criterion)
        if getattr(args, "stats", None):
            import numpy as np
            with np.load(args.stats) as arrays:
                stats.load_arrays(arrays, args.stats)
        else:
            stats = _statistics_pass(args, model, criterion, group_list, groups, _calibration_request(args, model.net))
    return score(model, groups, group_list, criterion, stats), stats


def _sensitivity_measure(args, model, batches):
    """What sensitivity measures: top-1 on labelled data, else the outputs' relative error."""
    from .sensitivity import output_error, top1

    if args.measure == "output-error":
        return output_error(model, batches, _runtime_options(args))
    return top1(batches, _runtime_options(args))


def _budget_plan(args, model, source, groups, group_list, calibration, scores):
    """Per-group ratios reaching --budget with the least loss predicted by sensitivity curves (on the
    calibration data, or --sensitivity FILE), or by the scores without data."""
    from .budget import choose_ratios, parse_budget, plan_for, score_losses, total
    from .sensitivity import load_losses, sensitivity_curves

    kind, fraction = parse_budget(args.budget)
    ratios = args.ratios
    if args.sensitivity:
        losses, predicts = load_losses(args.sensitivity, groups), "loss from " + args.sensitivity
    elif source is not None:
        measure = _sensitivity_measure(args, model, list(_batches(model, calibration or source, args, "sensitivity")))
        baseline, curves = sensitivity_curves(model, groups, group_list, scores, ratios, measure)
        losses = {groups.of_layer(name).id: {p.ratio: measure.loss(baseline, p.value) for p in points}
                  for name, points in curves.items()}
        predicts = f"{measure.name} loss, calibration data (unpruned {baseline:.4f})"
    else:
        losses, predicts = score_losses(group_list, scores, ratios), "fraction of score mass removed"
    chosen, predicted, reached = choose_ratios(model, groups, group_list, scores, losses, kind, fraction)
    about = {"criterion": args.criterion, "budget": {
        "target": args.budget, "reached": reached / total(model.shapes, kind),
        "ratios": {groups.groups[gid].name: ratio for gid, ratio in chosen.items()},
        "predicted_loss": predicted, "predicted_by": predicts}}
    return plan_for(scores, groups, group_list, chosen, about)


def _plan(args, model, source, groups, group_list, calibration=None):
    """The plan to apply, the net to apply it to (weights may be adjusted) and notes for the report;
    data-driven statistics come from ``calibration`` (default ``source``), accuracy from ``source``."""
    from .plan import Plan
    from .pruning import make_plan, plan_by_similarity, random_masks_plan, tolerance_plan

    if args.plan:
        return Plan.load(args.plan), model.net, [], None
    if args.budget:
        scores, stats = _scores(args, model, source, groups, group_list, calibration)
        return _budget_plan(args, model, source, groups, group_list, calibration, scores), model.net, [], stats
    budget = _budget(args)
    about = {"criterion": args.criterion}
    if args.criterion == "similarity":
        plan, net, notes = plan_by_similarity(model, groups, group_list, budget)
        return plan, net, notes, None
    if args.criterion == "random-masks":
        plan, _ = random_masks_plan(model, groups, group_list, budget, _measure(model, source, args)[1],
                                    args.masks, args.seed)
        return plan, model.net, [f"random-masks: best of {args.masks} masks"], None
    scores, stats = _scores(args, model, source, groups, group_list, calibration)
    if args.tolerance is not None:
        metric, evaluator, _ = _measure(model, source, args)
        plan, _ = tolerance_plan(model, groups, group_list, scores, budget, evaluator, args.tolerance,
                                 about={**about, "metric": metric})
        return plan, model.net, [], stats
    return make_plan(scores, groups, group_list, budget, {**about, "ratio": args.ratio}), model.net, [], stats


def _calibration_request(args, net):
    """The data statistics, compensation and reconstruction learn from: --calib-data, else --data, up to
    --calib-limit samples."""
    from dataclasses import replace

    request = _data_request(args, net)
    if getattr(args, "calib_data", None):
        request = replace(request, spec=args.calib_data, skip=0, limit=None)
    calib_limit = getattr(args, "calib_limit", None)
    if calib_limit is not None:
        request = replace(request, limit=calib_limit if request.limit is None else min(request.limit, calib_limit))
    return request


def _calibration(args, model, source):
    """The calibration source (``_calibration_request``), checked to fit the net as the --data samples do."""
    calibration = _calibration_request(args, model.net).open(model.net)
    if tuple(calibration.shape) != tuple(source.shape):
        raise CaffeSurgeryError(f"calibration samples are {tuple(calibration.shape)}, the --data samples "
                                f"{tuple(source.shape)}", file=calibration.name)
    return calibration


def _pruned(args, model, source, calibration, groups, group_list, protected):
    """The plan, the pruned net and its shapes (compensated or reconstructed when asked), notes and refits."""
    from .plan import resolve_plan
    from .reconstruct import compensate, reconstruct
    from .surgery import apply_plan

    plan, net, notes, _ = _plan(args, model, source, groups, group_list, calibration)
    keep = resolve_plan(plan, net, groups, args.plan)
    if protected & {p for gid in keep for p in groups.groups[gid].producers}:
        raise CaffeSurgeryError(f"the plan prunes protected layers: {', '.join(sorted(protected))}", file=args.plan)
    refits = []
    if args.compensate or args.reconstruct:
        held = list(_batches(model, calibration, args, "calibration"))
        options = {"runtime_options": _runtime_options(args)}
        if args.reconstruct:
            pruned_net, pruned_shapes, refits, skipped = reconstruct(
                net, model.shapes, groups, keep, lambda: held, sequential=not args.independent, **options)
            return plan, pruned_net, pruned_shapes, notes + [r.note() for r in refits] + skipped, refits
        net, refits, skipped = compensate(net, model.shapes, groups, keep, lambda: held, **options)
        notes += [refit.note() for refit in refits] + skipped
    pruned_net, pruned_shapes = apply_plan(net, model.shapes, groups, keep)
    return plan, pruned_net, pruned_shapes, notes, refits


def _retrainer(args):
    from .retrain import Retrainer

    return Retrainer(args.retrain, args.retrain_iter, args.device)


def cmd_prune(args) -> int:
    """Prune by plan, by criterion and ratio, to a budget or to an accuracy tolerance (optionally retraining);
    write the smaller pair."""
    from .check import check_files
    from .criteria import get_criterion
    from .dataflow import input_layer, item_shapes
    from .deploy import deploy_net
    from .finetune import finetune_files, is_train_val
    from .groups import build_groups
    from .io import atomic_write, write_text
    from .pruning import chosen_groups
    from .report import format_prune_report, prune_report
    from .reshape import reshape_net
    from .save import save_caffemodel, save_prototxt
    from .shapes import infer_shapes

    criterion = get_criterion(args.criterion) if args.criterion else None
    if args.compensate and args.reconstruct:
        raise CaffeSurgeryError("--compensate and --reconstruct are alternatives: choose one")
    if args.retrain and args.tolerance is not None and (args.compensate or args.reconstruct or args.plan):
        raise CaffeSurgeryError("--retrain with --tolerance ranks by --criterion and retrains instead of refitting")
    needs_data = bool(args.data) or args.tolerance is not None or args.compensate or args.reconstruct or (
        criterion is not None and criterion.needs_data and not (args.stats and criterion.score is not None))
    model, source = _load(args, with_data=needs_data)
    calibration = _calibration(args, model, source) if source is not None else None
    metric, evaluator, measure = _measure(model, source, args) if source is not None else (None, None, None)
    protected = set(args.protect)

    def chosen(groups):
        return [g for g in chosen_groups(groups, args.layers, maxout_only=args.criterion == "maxout-wins")
                if not protected & set(g.producers)]

    groups = build_groups(model.net, model.shapes)
    retrained_from = None
    if args.retrain and args.tolerance is not None:
        from .retrain import tolerance_with_retraining

        pruned_net, pruned_shapes, plan, _ = tolerance_with_retraining(
            model, chosen, lambda current, g, g_list: _scores(args, current, source, g, g_list, calibration)[0],
            evaluator, args.tolerance, _retrainer(args), about={"criterion": args.criterion, "metric": metric})
        notes, refits = [f"retrained after each of {len(plan.about['curve']) - 1} rounds (curve in the plan)"], []
    else:
        plan, pruned_net, pruned_shapes, notes, refits = _pruned(args, model, source, calibration, groups,
                                                                 chosen(groups), protected)
        if args.retrain and not args.dry_run:
            retrained_from = pruned_net
            pruned_net = _retrainer(args).retrain(pruned_net, pruned_shapes, plan)
    report = prune_report(model.shapes, pruned_shapes, model.net, pruned_net)
    report["notes"] = notes
    report["refits"] = [refit.as_dict() for refit in refits]
    if args.dry_run:
        print(plan.to_json())
        print(format_prune_report(report))
        return 0
    prefix = Path(args.output)
    if source is not None:
        if measure is None:
            report["accuracy"] = {"before": evaluator(model.net, model.shapes),
                                  "after": evaluator(pruned_net, pruned_shapes), "samples": len(source)}
            if retrained_from is not None:
                report["accuracy"]["before_retraining"] = evaluator(retrained_from, pruned_shapes)
                notes.append(f"top-1 before retraining {report['accuracy']['before_retraining']:.4f}")
        else:
            report["agreement"] = {"metric": metric, **measure.figures(pruned_net, pruned_shapes), "samples": len(source)}
            if metric == "agreement":
                report["agreement"]["score_threshold"] = args.score_threshold
    if "budget" in plan.about:
        report["budget"] = plan.about["budget"]
        if "accuracy" in report and args.measure == "top1" and not args.sensitivity:
            report["budget"]["predicted_accuracy"] = report["accuracy"]["before"] - report["budget"]["predicted_loss"]
            notes.append(f"budget: predicted top-1 {report['budget']['predicted_accuracy']:.4f}, measured "
                         f"{report['accuracy']['after']:.4f}")
        notes.append(f"budget {report['budget']['target']}: reached {report['budget']['reached']:.3f}, ratios "
                     + ", ".join(f"{k} {v:g}" for k, v in report["budget"]["ratios"].items())
                     + f"; predicted loss {report['budget']['predicted_loss']:.4g} ({report['budget']['predicted_by']})")
    if args.profile:
        from .profile import latency_ms

        report["latency_ms"] = {"backend": "onnxruntime", "batch": report["batch"], "runs": PROFILE_RUNS,
                                "before": latency_ms(model.net, model.shapes, PROFILE_RUNS, args.threads),
                                "after": latency_ms(pruned_net, pruned_shapes, PROFILE_RUNS, args.threads)}
    outputs = {kind: Path(f"{prefix}.{kind}") for kind in ("prototxt", "caffemodel", "plan.json", "report.json")}
    train_val = args.train_val or (args.prototxt if is_train_val(model.net.to_proto()) else None)
    if args.solver and not train_val:
        raise CaffeSurgeryError("--solver needs the training net: pass --train-val FILE")
    images = input_layer(pruned_net).tops[0]
    finetuning = finetune_files(prefix, train_val, plan, model.net, pruned_net,
                                {images.name: tuple(pruned_shapes.blob(images)[1:])}, args.solver) if train_val else {}
    written = deploy_net(pruned_net, pruned_shapes) if train_val == args.prototxt else pruned_net
    written = reshape_net(written, dict(args.input))
    save_prototxt(written, outputs["prototxt"])
    save_caffemodel(written, outputs["caffemodel"], args.precision)
    written_shapes = pruned_shapes if written is pruned_net else infer_shapes(written, data_shapes=item_shapes(
        args.prototxt, {name: shape[1:] for name, shape in args.input}))
    problems = check_files(outputs["prototxt"], outputs["caffemodel"],
                           input_shapes={t.name: tuple(written_shapes.blob(t)) for l in written.layers
                                         if not l.bottoms for t in l.tops})
    if problems:
        for path in (outputs["prototxt"], outputs["caffemodel"]):
            path.unlink()
        raise CaffeSurgeryError("internal error: the pruned pair fails check: " + "; ".join(problems))
    for path, message in finetuning.items():
        write_text(path, message)
        outputs[path.name[len(prefix.name) + 1:]] = path
    report["files"] = {"caffemodel": [Path(args.weights).stat().st_size, outputs["caffemodel"].stat().st_size]}
    if args.precision == "fp16":
        notes.append(_fp16_change(written, written_shapes, outputs, evaluator if source is not None else None,
                                  measure if source is not None else None, report))
    plan.save(outputs["plan.json"])
    atomic_write(outputs["report.json"], [json.dumps(report, indent=1).encode("utf-8")])
    print(format_prune_report(report))
    for note in notes:
        print(f"note: {note}")
    print(format_written(outputs.values(), args.precision))
    return 0


def _fp16_change(net, shapes, outputs, evaluator, measure, report) -> str:
    """The fp16 note of a pruned pair: the probe difference and, with data, the figure read back in fp16
    (top-1 accuracy, or agreement with the original net)."""
    from .model import load_model
    from .precision import fp16_note

    note = fp16_note(net, shapes, outputs["prototxt"], outputs["caffemodel"])
    if evaluator is None:
        return note
    written = load_model(outputs["prototxt"], outputs["caffemodel"], input_shapes={
        t.name: tuple(shapes.blob(t)) for layer in net.layers if not layer.bottoms for t in layer.tops})
    if measure is not None:
        report["agreement"]["after_fp16"] = measure.figures(written.net, written.shapes)
        return f"{note}; agreement read back in fp16: {report['agreement']['after_fp16']}"
    report["accuracy"]["after_fp16"] = evaluator(written.net, written.shapes)
    return f"{note}; top-1 accuracy {report['accuracy']['after_fp16']:.4f} in fp16"


def cmd_reshape(args) -> int:
    """Write new input shapes into a prototxt once every layer is known to fit them; copy the weights."""
    from .reshape import reshape_command

    if not args.input:
        raise CaffeSurgeryError("say the new shape: --input NAME=N,C,H,W")
    outputs = reshape_command(args.prototxt, args.weights, dict(args.input), args.output, args.phase)
    print(f"wrote {', '.join(str(p) for p in outputs)}")
    return 0


def cmd_draw(args) -> int:
    """Draw the net with Graphviz, pruned channels marked from a plan or a prune report."""
    from .draw import channel_changes, net_graph, read_report_changes, write_graph

    model, _ = _load(args)
    changes = None
    if args.plan:
        from .plan import Plan
        from .pruning import prune
        from .report import prune_report

        if not args.weights:
            raise CaffeSurgeryError("--plan needs the weights (-w) to apply the plan; or draw from --report")
        pruned = prune(model, Plan.load(args.plan), source=args.plan)
        changes = channel_changes(prune_report(model.shapes, pruned.shapes, model.net, pruned.net))
    elif args.report:
        changes = read_report_changes(args.report)
    write_graph(net_graph(model.net, model.shapes, changes), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_profile(args) -> int:
    """Time per layer with onnxruntime's profiler or OpenCV's getPerfProfile, next to MACs."""
    from .profile import format_profile, profile_net

    model, _ = _load(args)
    profile = profile_net(model.net, model.shapes, args.backend, args.runs, args.prototxt, args.weights, args.threads)
    print(json.dumps(profile.as_dict(), indent=2) if args.json else format_profile(profile))
    return 0


def cmd_plot(args) -> int:
    """Chart a plan's tolerance curve or a reproduction's results as PNG (needs the plot extra: matplotlib)."""
    from .plot import plot_file

    what = plot_file(args.document, args.output)
    print(f"wrote {args.output} ({what})")
    return 0


def cmd_sensitivity(args) -> int:
    """Prune each group alone at each ratio and measure the net; write CSV, JSON and a PNG of the curves."""
    from .groups import build_groups
    from .pruning import chosen_groups
    from .report import format_table
    from .sensitivity import sensitivity_curves, write_sensitivity

    model, source = _load(args, with_data=True)
    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, args.layers)
    scores, _ = _scores(args, model, source, groups, group_list)
    measure = _sensitivity_measure(args, model, list(_batches(model, source, args, "sensitivity")))
    baseline, curves = sensitivity_curves(model, groups, group_list, scores, args.ratios, measure)
    paths = write_sensitivity(args.output, baseline, curves, measure,
                              {"criterion": args.criterion, "samples": len(source)})
    rows = [(layer, *(f"{p.value:.4f}" for p in points[1:])) for layer, points in curves.items()]
    print(f"{measure.name} of the unpruned net: {baseline:.4f}")
    print(format_table(["layer"] + [f"{r:g}" for r in args.ratios], rows))
    print(f"wrote {', '.join(paths)}")
    return 0


def cmd_sparsify(args) -> int:
    """Magnitude weight pruning: exact zeros in a dense caffemodel, with sparse and compressed sizes."""
    from .sparsify import sparsify_command

    return sparsify_command(args.prototxt, args.weights, args.output, sparsity=args.sparsity,
                            threshold=args.threshold, std_factor=args.std_factor, layers=args.layers,
                            scope=args.scope, input_shapes=dict(args.input), precision=args.precision)


def cmd_fold_bn(args) -> int:
    """Fold BatchNorm/Scale layers into the preceding Convolution/InnerProduct."""
    from .fold import fold_command

    return fold_command(args.prototxt, args.weights, args.output, input_shapes=dict(args.input),
                        precision=args.precision)


def cmd_train(args) -> int:
    """Train a net from its solver with Caffe's semantics (needs the train extra: PyTorch)."""
    from .train import train_command

    return train_command(args.solver, args.weights, args.max_iter, args.device, args.output, args.data,
                         args.test_data, args.keep_zeros, args.precision)


def cmd_importance(args) -> int:
    """Importance-weight filter pruning under an accuracy tolerance (train, rank, prune, fold, fine-tune)."""
    from .importance import importance_prune

    result = importance_prune(args.solver, args.weights, args.output, layers=args.layers, init=args.init,
                              train_iter=args.train_iter, finetune_iter=args.finetune_iter,
                              tolerance=args.tolerance, device=args.device, test_limit=args.test_limit,
                              seed=args.seed)
    (p0, p1), (m0, m1), (a0, a1) = result.params, result.macs, result.accuracy
    print(f"filters kept: {', '.join(f'{k} {v}' for k, v in result.kept.items())}")
    print(f"parameters {p0:,} -> {p1:,}, MACs {m0:,} -> {m1:,}, test accuracy {a0:.4f} -> {a1:.4f}")
    print(format_written([f"{args.output}.prototxt", f"{args.output}.caffemodel"]))
    return 0


def cmd_reproduce(args) -> int:
    """Reproduce the LeNet maxout neuron-pruning experiment; write results.json/.md/.png."""
    from .reproduce import reproduce_lenet

    document = reproduce_lenet(args.data, args.test_data, args.output, max_iter=args.max_iter,
                               train_limit=args.train_limit, test_limit=args.test_limit, device=args.device,
                               weight_sparsity=args.weight_sparsity, conv_tolerance=args.conv_tolerance,
                               resume=args.resume)
    print((Path(args.output) / "results.md").read_text())
    return 0 if document["stages"] else 1


def reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reproduce lenet`` (shared with scripts/reproduce_lenet.py)."""
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help=f"training images: {SPEC_FORMS}, e.g. idx:train-images.gz:train-labels.gz")
    parser.add_argument("--test-data", required=True, metavar="SPEC",
                        help=f"test images: {SPEC_FORMS}, e.g. idx:t10k-images.gz:t10k-labels.gz")
    parser.add_argument("-o", "--output", required=True, help="results folder")
    parser.add_argument("--max-iter", type=int, help="iterations per training (default: the reference solver's "
                                                     "3749 scaled to the training set size)")
    parser.add_argument("--train-limit", type=int, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, help="use only the first N test images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument("--weight-sparsity", type=_ratio, default=0.75,
                        help="fraction of each layer's weights removed by magnitude pruning (default 0.75)")
    parser.add_argument("--conv-tolerance", type=float, default=0.2,
                        help="accuracy points below the unpruned net the conv-filter pruning may cost (default 0.2)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the stages an earlier run with the same data and settings finished in -o DIR")


# -- parser ---------------------------------------------------------------------------------

def _verb(verbs, name, help_text, run):
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
    parser = verbs.add_parser(name, help=help_text, description=help_text.replace("%%", "%"), epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(parser, default=argparse.SUPPRESS)
    parser.set_defaults(run=run)
    return parser


def _common_options(parser, default=None):
    """--debug, -q, -v: accepted before the verb and after it (``default=SUPPRESS`` there)."""
    parser.add_argument("--debug", action="store_true", default=default or False, help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default or False,
                        help="print errors only (no warnings, no progress, no results on stdout)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default or False,
                        help="also print progress messages (e.g. training iterations)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = argparse.ArgumentParser(prog="caffe-surgery", description="Inspect, export and prune legacy Caffe models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser)
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="a Python file declaring layer types (repeatable; before or after the verb)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    info = _verb(verbs, "info", "per-layer table: shapes, parameters, MACs (or the channel groups)", cmd_info)
    _net_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    info.add_argument("--groups", action="store_true", help="list the channel groups, members and pinned reasons")

    upgrade = _verb(verbs, "upgrade", "convert a V0/V1 prototxt (and caffemodel) to the current format", cmd_upgrade)
    upgrade.add_argument("input_prototxt")
    upgrade.add_argument("output_prototxt")
    upgrade.add_argument("-w", "--weights", help="caffemodel to upgrade too")
    upgrade.add_argument("-o", "--output-weights", help="where to write the upgraded caffemodel")
    _precision_argument(upgrade)

    check = _verb(verbs, "check", "validate a pair as strictly as Caffe's own loader", cmd_check)
    _net_arguments(check, weights_required=True)

    export = _verb(verbs, "export", "export to ONNX with Caffe's blob names", cmd_export)
    _net_arguments(export, weights_required=True)
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument("--dynamic-batch", action="store_true", help="make the batch axis symbolic")

    evaluate = _verb(verbs, "eval", "top-k accuracy and loss on data", cmd_eval)
    _net_arguments(evaluate, weights_required=True, data=True)
    evaluate.add_argument("--top-k", type=_int_list, default=[1], help="e.g. 1,5 (default 1)")
    evaluate.add_argument("--json", action="store_true")
    _engine_arguments(evaluate)

    compare = _verb(verbs, "compare", "run two nets on the same inputs and compare every shared blob", cmd_compare)
    for name in ("a_prototxt", "a_weights", "b_prototxt", "b_weights"):
        compare.add_argument(name)
    compare.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W")
    compare.add_argument("--data", metavar="SPEC", help=f"inputs from data: {SPEC_FORMS} (default: seeded random inputs)")
    compare.add_argument("--limit", type=int, help="samples to compare (default 1)")
    compare.add_argument("--backend", choices=("onnxruntime", "opencv"), default="onnxruntime",
                         help="what runs net B (A always runs in onnxruntime)")
    compare.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    compare.add_argument("--threads", type=int)
    compare.add_argument("--atol", type=float, default=ATOL,
                         help=f"absolute tolerance on A's outputs: |a-b| <= atol + rtol*|b| elementwise, else exit 1 "
                              f"(default {ATOL:g})")
    compare.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance, see --atol (default {RTOL:g})")
    compare.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                         help="detections: the score from which A's detections must be reproduced by B (agreement, "
                              f"default {SCORE_THRESHOLD:g})")
    compare.add_argument("--json", action="store_true", help="every figure per blob and output as JSON")

    convert = _verb(verbs, "convert-data", "write a Caffe LMDB of Datum records (keys %%08d)", cmd_convert_data)
    convert.add_argument("spec", help="idx:IMAGES:LABELS, list:FILE[:ROOT], npy:PATH or lmdb:PATH")
    convert.add_argument("-o", "--output", required=True, help="the LMDB folder to create")
    convert.add_argument("--limit", type=int, help="convert only the first N samples")
    convert.add_argument("--force", action="store_true", help="replace an existing output")

    relevance = _verb(verbs, "relevance", "gather relevance statistics on data (or: relevance merge PARTS -o OUT)",
                      cmd_relevance)
    _net_arguments(relevance, data=True)
    relevance.add_argument("--criterion", required=True, help="a data-driven criterion (see prune --help)")
    relevance.add_argument("--layers", type=lambda t: t.split(","), help="only these producer layers (comma-separated)")
    relevance.add_argument("--shard", type=_shard, metavar="I/N", help="gather shard I of N (merge the parts later)")
    relevance.add_argument("-o", "--output", required=True, help="the .npz to write")
    _engine_arguments(relevance)

    prune = _verb(verbs, "prune", "remove channels/neurons and write a smaller prototxt/caffemodel pair", cmd_prune)
    prune.epilog += "\n\ncriteria:\n" + "\n".join(f"  {c.name:16} {c.summary}" for c in sorted(CRITERIA.values(), key=lambda c: c.name))
    _net_arguments(prune, weights_required=True, data=True)
    how = prune.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", help="apply this plan JSON")
    how.add_argument("--criterion", help="rank by this criterion (see the list below)")
    prune.add_argument("--ratio", type=_ratio, help="fraction to remove per group (or globally with --global)")
    prune.add_argument("--keep", type=int, help="channels to keep per group")
    prune.add_argument("--global", dest="global_ranking", action="store_true",
                       help="one threshold over scores normalised per layer")
    prune.add_argument("--min-keep", type=int, default=1, help="never keep fewer channels per group (default 1)")
    prune.add_argument("--round-to", type=int, default=1, help="round kept counts up to a multiple (e.g. 8)")
    prune.add_argument("--layer-ratio", action="append", type=_override, default=[], metavar="LAYER=RATIO",
                       help="a different ratio for one producer layer (repeatable)")
    prune.add_argument("--layers", type=lambda t: t.split(","), help="only prune these producer layers")
    prune.add_argument("--protect", type=lambda t: t.split(","), default=[], help="never prune these layers")
    prune.add_argument("--maxout-k", type=int, help="maxout: neurons kept per unit")
    prune.add_argument("--maxout-units", action="store_true", help="maxout: drop whole units instead of neurons")
    prune.add_argument("--tolerance", type=float, metavar="T",
                       help="prune progressively until the --metric drops by more than T percentage points")
    prune.add_argument("--metric", choices=("auto",) + METRICS, default="auto",
                       help="what --tolerance and the report measure on --data: top1 accuracy (needs labels), "
                            "agreement (share of the original's detections, score >= --score-threshold, reproduced "
                            "at IoU >= 0.5 with the same label; nets with DetectionOutput) or rel-error "
                            "(||a-b||/||a|| against the original's outputs, in percent for --tolerance); auto: "
                            "agreement for detectors, top1 for classifiers with labelled data, else rel-error")
    prune.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                       help=f"agreement: the score from which detections count (default {SCORE_THRESHOLD:g})")
    prune.add_argument("--budget", metavar="macs=F|params=F",
                       help="keep this fraction of the MACs (or parameters), per-group ratios chosen for the least "
                            "predicted loss (sensitivity on the calibration data, else the scores)")
    prune.add_argument("--sensitivity", metavar="JSON", help="--budget: losses from this 'sensitivity' output")
    prune.add_argument("--ratios", type=_ratio_list, default=DEFAULT_RATIOS,
                       help="--budget: the ratios each group may take (default 0.1,0.2,...,0.9)")
    prune.add_argument("--measure", choices=("top1", "output-error"), default="top1",
                       help="--budget: what the sensitivity measures (output-error: data without labels)")
    prune.add_argument("--retrain", metavar="SOLVER", help="fine-tune with this solver's TRAIN net (pruned alike) "
                       "after pruning, or after each --tolerance round (needs the train extra)")
    prune.add_argument("--retrain-iter", type=int, help="iterations per retraining (default: the solver's max_iter)")
    prune.add_argument("--stats", help="statistics .npz from 'relevance' (instead of a data pass)")
    prune.add_argument("--masks", type=int, default=100, help="random-masks: candidate masks to evaluate")
    prune.add_argument("--seed", type=int, default=0, help="random-masks: random seed")
    prune.add_argument("--compensate", action="store_true",
                       help="fold removed inputs' mean values into the bias of the layers reading them")
    prune.add_argument("--reconstruct", action="store_true",
                       help="refit the layers reading pruned channels by least squares to the original outputs")
    prune.add_argument("--independent", action="store_true",
                       help="with --reconstruct: feed each refit from the original net, not the refit upstream")
    prune.add_argument("--calib-data", metavar="SPEC",
                       help="data for statistics, --compensate and --reconstruct (default: --data, which then "
                            "only measures accuracy)")
    prune.add_argument("--calib-limit", type=int, help="use only the first N calibration samples")
    prune.add_argument("--dry-run", action="store_true", help="print the plan and projected sizes; write nothing")
    prune.add_argument("--profile", action="store_true",
                       help="measure onnxruntime latency before and after (report's latency_ms)")
    prune.add_argument("--train-val", metavar="FILE", help="the training net (all phases) to prune the same way: "
                       "writes PREFIX.train_val.prototxt and PREFIX.solver.prototxt for fine-tuning (automatic "
                       "when the net itself has a loss or phase rules)")
    prune.add_argument("--solver", help="the solver PREFIX.solver.prototxt starts from (nets replaced, base_lr x 0.1; "
                       "default: SGD at 0.001)")
    prune.add_argument("-o", "--output", required=True, help="output prefix: writes PREFIX.prototxt/.caffemodel/"
                                                              ".report.json/.plan.json")
    _precision_argument(prune)
    _engine_arguments(prune)

    reshape = _verb(verbs, "reshape", "write a new input shape (batch, size) into a prototxt; every layer is "
                    "checked to fit it", cmd_reshape)
    reshape.add_argument("prototxt", help="net definition (current, V1 or V0 format)")
    reshape.add_argument("-w", "--weights", help="caffemodel to check against the new shapes and copy")
    reshape.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W",
                         help="the new shape of a data/input blob (repeatable)")
    reshape.add_argument("--phase", type=_phase, default=caffe_pb2.TEST, help="phase to check (default TEST)")
    reshape.add_argument("-o", "--output", required=True, help="output prefix (.prototxt, and .caffemodel with -w)")

    draw = _verb(verbs, "draw", "draw the net (layers, blob shapes, params/MACs; pruned channels marked) as "
                 "SVG/PNG/DOT (pip install 'caffe-surgery[draw]' and Graphviz)", cmd_draw)
    _net_arguments(draw)
    marks = draw.add_mutually_exclusive_group()
    marks.add_argument("--plan", help="mark the channels this plan keeps (needs -w)")
    marks.add_argument("--report", help="mark the channels a prune report (PREFIX.report.json) kept")
    draw.add_argument("-o", "--output", required=True, help="net.svg, net.png or net.dot")

    profile = _verb(verbs, "profile", "time per layer (onnxruntime's profiler or OpenCV's per-layer timings) next "
                    "to MACs", cmd_profile)
    _net_arguments(profile, weights_required=True)
    profile.add_argument("--backend", choices=("onnxruntime", "opencv"), default="onnxruntime")
    profile.add_argument("--runs", type=int, default=10, help="timed runs after one warm-up (default 10)")
    profile.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    profile.add_argument("--json", action="store_true", help="print one JSON document instead of a table")

    plot = _verb(verbs, "plot", "chart a plan's tolerance curve or reproduce's results.json as PNG (pip install "
                 "'caffe-surgery[plot]')", cmd_plot)
    plot.add_argument("document", help="PREFIX.plan.json of 'prune --tolerance', or reproduce's results.json")
    plot.add_argument("-o", "--output", required=True, help="the .png to write")

    sensitivity = _verb(verbs, "sensitivity", "prune each layer alone at each ratio and measure (CSV, JSON, PNG)",
                        cmd_sensitivity)
    _net_arguments(sensitivity, weights_required=True, data=True)
    sensitivity.add_argument("--criterion", default="weight-l1", help="what each layer removes first (default "
                                                                      "weight-l1; see prune --help)")
    sensitivity.add_argument("--ratios", type=_ratio_list, default=DEFAULT_RATIOS,
                             help="fractions of each layer's channels to remove (default 0.1,0.2,...,0.9)")
    sensitivity.add_argument("--layers", type=lambda t: t.split(","), help="only these producer layers")
    sensitivity.add_argument("--measure", choices=("top1", "output-error"), default="top1",
                             help="top-1 on labelled data, or the outputs' relative error against the original")
    sensitivity.add_argument("-o", "--output", required=True, help="output prefix: PREFIX.csv, .json, .png")

    sparsify = _verb(verbs, "sparsify", "magnitude weight pruning (exact zeros; sparse and zip sizes reported)",
                     cmd_sparsify)
    _net_arguments(sparsify, weights_required=True)
    rule = sparsify.add_mutually_exclusive_group(required=True)
    rule.add_argument("--sparsity", type=_ratio, help="fraction of weights to zero (smallest |w| first)")
    rule.add_argument("--threshold", type=float, help="zero every |w| below this")
    rule.add_argument("--std-factor", type=float, metavar="Q", help="zero |w| below Q times the layer's weight std")
    scope = sparsify.add_mutually_exclusive_group()
    scope.add_argument("--per-layer", dest="scope", action="store_const", const="per-layer", default="per-layer",
                       help="the sparsity applies to each layer (default)")
    scope.add_argument("--global", dest="scope", action="store_const", const="global",
                       help="one cut over all chosen layers")
    sparsify.add_argument("--layers", type=lambda t: t.split(","), help="only these layers (comma-separated)")
    sparsify.add_argument("-o", "--output", required=True, help="output prefix (.prototxt/.caffemodel/.report.json)")
    _precision_argument(sparsify)

    train = _verb(verbs, "train", "train from a solver prototxt with Caffe's semantics (pip install "
                  "'caffe-surgery[train]')", cmd_train)
    train.add_argument("solver", help="solver prototxt (net/train_net/test_net, lr policy, momentum, ...)")
    train.add_argument("-w", "--weights", help="caffemodel to start from (by layer name)")
    train.add_argument("--max-iter", type=int, help="replace the solver's max_iter")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--data", metavar="SPEC",
                       help=f"training data instead of the TRAIN net's data layer source: {SPEC_FORMS}")
    train.add_argument("--test-data", metavar="SPEC",
                       help=f"test data instead of the TEST net's data layer source: {SPEC_FORMS}")
    train.add_argument("--keep-zeros", action="store_true", help="masked fine-tuning: zero weights stay zero")
    train.add_argument("-o", "--output", required=True, help="the trained caffemodel")
    _precision_argument(train)

    importance = _verb(verbs, "importance", "filter pruning with learned importance weights under an accuracy "
                       "tolerance (Appl. Sci. 2022; needs the train extra)", cmd_importance)
    importance.add_argument("solver", help="solver prototxt with train_net and test_net")
    importance.add_argument("-w", "--weights", required=True, help="trained caffemodel to start from")
    importance.add_argument("--layers", type=lambda t: t.split(","), help="convolutions to prune (default: all prunable)")
    importance.add_argument("--init", choices=("ones", "uniform", "l1"), default="l1",
                            help="importance initialisation (default: normalised filter L1 norms)")
    importance.add_argument("--train-iter", type=int, default=500, help="iterations training the importance weights")
    importance.add_argument("--finetune-iter", type=int, default=500, help="fine-tuning iterations after pruning")
    importance.add_argument("--tolerance", type=float, default=1.0, help="accuracy points the pruning may cost")
    importance.add_argument("--test-limit", type=int, help="test images used to check the tolerance")
    importance.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    importance.add_argument("--seed", type=int, default=0)
    importance.add_argument("-o", "--output", required=True, help="output prefix (deploy .prototxt and .caffemodel)")

    reproduce = _verb(verbs, "reproduce", "reproduce a published pruning experiment", cmd_reproduce)
    reproduce.add_argument("experiment", choices=("lenet",), help="lenet: maxout neuron pruning (Moya Rueda et al. 2017)")
    reproduce_arguments(reproduce)

    fold = _verb(verbs, "fold-bn", "fold BatchNorm/Scale into the preceding Convolution/InnerProduct", cmd_fold_bn)
    _net_arguments(fold, weights_required=True)
    fold.add_argument("-o", "--output", required=True, help="output prefix (.prototxt/.caffemodel)")
    _precision_argument(fold)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on bad input (one line on stderr), 2 on usage errors."""
    plugins, argv = _plugin_files(list(sys.argv[1:] if argv is None else argv))
    if argv[:2] == ["relevance", "merge"]:
        return _main_merge(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.plugin = plugins
    return run_command(_with_plugins(args.run, plugins), args, args.debug, args.quiet, args.verbose)


def _plugin_files(argv: list[str]) -> tuple[list[str], list[str]]:
    """The ``--plugin FILE`` options wherever they stand (before or after the verb), and the other arguments."""
    plugins, rest, args = [], [], iter(argv)
    for arg in args:
        if arg == "--plugin":
            plugins.append(next(args, ""))
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def _with_plugins(command, plugins: list[str]):
    """The verb, run after the plugin files have declared their layer types."""
    def run(args):
        for path in plugins:
            layers.load_plugin_file(path)
        return command(args)
    return run


def _main_merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="caffe-surgery relevance merge",
                                     description="add the statistics of shards into one file")
    parser.add_argument("parts", nargs="+", help="the part_*.npz files")
    parser.add_argument("-o", "--output", required=True)
    _common_options(parser)
    args = parser.parse_args(argv)
    return run_command(cmd_relevance_merge, args, args.debug, args.quiet, args.verbose)


def run_command(command, args, debug: bool, quiet: bool = False, verbose: bool = False) -> int:
    """Run one verb: its exit code, 1 with a one-line error for bad input, 141 when stdout's reader left."""
    logging.basicConfig(format="%(levelname)s: %(message)s" if verbose else "warning: %(message)s")
    package_log = logging.getLogger(__package__)
    previous_level = package_log.level
    package_log.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            code = command(args)
        sys.stdout.flush()
        return code
    except CaffeSurgeryError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # e.g. piped into head: stop quietly; stdout goes nowhere so the exit flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        package_log.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
