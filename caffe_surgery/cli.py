"""The ``caffe-surgery`` command line: one small function per verb."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from . import caffe_pb2
from .criteria import CRITERIA
from .errors import CaffeSurgeryError

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
    "prune": ["caffe-surgery prune net.prototxt -w w.caffemodel --criterion weight-l1 --ratio 0.5 -o out/net_small",
              "caffe-surgery prune net.prototxt -w w.caffemodel --plan plan.json -o out/net_small",
              "caffe-surgery prune net.prototxt -w w.caffemodel --criterion maxout-wins --maxout-k 3 --data lmdb:db -o small"],
}


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {text}")
    return value


def _override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LAYER=RATIO, got '{text}'")
    return name, _ratio(value)


# -- shared arguments and loading ---------------------------------------------------

def _net_arguments(parser, weights_required=False, data=False):
    parser.add_argument("prototxt", help="net definition (current, V1 or V0 format)")
    parser.add_argument("-w", "--weights", required=weights_required, help="caffemodel with the weights")
    parser.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W",
                        help="shape of a data/input blob (repeatable); overrides the net's own")
    parser.add_argument("--phase", type=_phase, default=caffe_pb2.TEST, help="TRAIN or TEST (default TEST)")
    parser.add_argument("--top-shape", action="append", type=parse_input_shape, default=[], metavar="LAYER=N,C,H,W",
                        help="output shape of a layer type caffe-surgery has no rule for (repeat for more tops)")
    if data:
        _data_arguments(parser)


def _data_arguments(parser):
    parser.add_argument("--data", metavar="SPEC", help="lmdb:PATH, list:FILE[:ROOT], idx:IMAGES[:LABELS] or npy:PATH "
                                                       "(default: the net's own Data/ImageData layer)")
    parser.add_argument("--scale", type=float, help="multiply pixels by this after the mean (when the net has no "
                                                     "data layer with a transform_param), e.g. 0.00390625")
    parser.add_argument("--mean", type=lambda t: [float(v) for v in t.split(",")],
                        help="mean value(s) to subtract per channel, e.g. 104,117,123")
    parser.add_argument("--limit", type=_positive, help="use only the first N samples")
    parser.add_argument("--batch-size", type=_positive, help="samples per run (default: the data layer's, else 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime device")
    parser.add_argument("--threads", type=_positive, help="onnxruntime intra-op threads (default: all cores)")


def _runtime_options(args) -> dict:
    return {"device": args.device, "threads": args.threads}


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
    from .dataflow import batch_size_for, input_layer, item_shapes, open_source
    from .model import load_model, load_net

    shapes = dict(args.input)
    source = None
    if with_data:
        net = load_net(args.prototxt, phase=args.phase)
        source = open_source(net, args.data, _transform(args))
        if args.limit is not None:
            source = source.head(args.limit)
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
        save_float32_weights(upgrade_net(read_weights(args.weights)), args.output_weights)
    write_text(args.output_prototxt, upgraded)
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
    print(f"wrote {args.output}: inputs {', '.join(i.name for i in onnx_model.graph.input)}; "
          f"outputs {', '.join(o.name for o in onnx_model.graph.output)}")
    return 0


def cmd_eval(args) -> int:
    """Top-k accuracy (and loss) on data."""
    from .evaluate import evaluate

    model, source = _load(args, with_data=True)
    result = evaluate(model.net, model.shapes, _batches(model, source, args, "eval"), args.top_k,
                      _runtime_options(args))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    figures = ", ".join(f"top-{k} {result.accuracy(k):.4f}" for k in args.top_k)
    loss = f", loss {result.loss:.4f}" if result.loss is not None else ""
    print(f"{result.samples} samples: {figures}{loss} ({result.images_per_second:.1f} img/s)")
    return 0


def cmd_compare(args) -> int:
    """Run two nets on the same inputs and list, blob by blob, how far B is from A."""
    import numpy as np

    from .compare import DifferenceSums, onnxruntime_runner, opencv_runner, shared_blobs
    from .dataflow import input_layer, open_source
    from .model import load_model
    from .report import format_differences

    model_a = load_model(args.a_prototxt, args.a_weights, input_shapes=dict(args.input))
    model_b = load_model(args.b_prototxt, args.b_weights, input_shapes=dict(args.input))
    names = shared_blobs(model_a.net, model_b.net)
    top = input_layer(model_a.net).tops[0]
    count = args.limit or 1
    chunk = min(count, COMPARE_BATCH)
    _check_compare_memory(model_a, model_b, names, top, chunk)
    if args.data:
        chunks = (images for images, _ in open_source(model_a.net, args.data).head(count).iter_batches(chunk))
    else:
        rng = np.random.default_rng(0)
        shape = tuple(model_a.shapes.blob(top)[1:])
        chunks = (rng.standard_normal((min(chunk, count - start),) + shape).astype(np.float32)
                  for start in range(0, count, chunk))
    options = {"device": args.device, "threads": args.threads}
    run_a = onnxruntime_runner(model_a.net, model_a.shapes, names, options)
    run_b = (opencv_runner(model_b.net, args.b_prototxt, args.b_weights, names) if args.backend == "opencv"
             else onnxruntime_runner(model_b.net, model_b.shapes, names, options))
    sums = {name: DifferenceSums() for name in names}
    for images in chunks:  # one batch of inputs and blob values at a time
        values_a, values_b = run_a(images), run_b(images)
        for name in names:
            sums[name].add(values_a[name], values_b[name])
    print(format_differences([sums[name].result(name) for name in names]))
    return 0


COMPARE_BATCH = 64
"""Samples compared per run of both nets."""


def _check_compare_memory(model_a, model_b, names, top, count: int) -> None:
    """Refuse, before anything is allocated, a comparison whose inputs and blob values exceed the memory limit."""
    from math import prod

    from .limits import check_allocation

    per_sample = prod(model_a.shapes.blob(top)[1:]) + sum(
        prod(model.shapes.blob(model.net.final(name))[1:]) for model in (model_a, model_b) for name in names)
    check_allocation(4 * count * per_sample, f"comparing a batch of {count} samples (inputs and every shared blob "
                                             "of both nets)")


def cmd_convert_data(args) -> int:
    """Write a Caffe LMDB of Datum records from any data spec."""
    from .data import convert_data

    count = convert_data(args.spec, args.output, limit=args.limit, overwrite=args.force)
    print(f"wrote {count} records to {args.output}")
    return 0


def _statistics_pass(args, model, source, criterion, group_list, groups):
    from .pruning import gather, statistics_plan

    stats = statistics_plan(model, groups, group_list, criterion)
    shard = getattr(args, "shard", None)
    source = source.shard(*shard) if shard else source
    return gather(model, stats, groups, _batches(model, source, args, f"relevance ({criterion.name})"),
                  _runtime_options(args))


def cmd_relevance(args) -> int:
    """Gather a data-driven criterion's statistics (optionally one shard) into an .npz."""
    from .criteria import get_criterion
    from .groups import build_groups
    from .pruning import chosen_groups

    criterion = get_criterion(args.criterion)
    if not criterion.needs_data:
        raise CaffeSurgeryError(f"criterion '{criterion.name}' needs no data; use it directly with prune")
    model, source = _load(args, with_data=True)
    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, args.layers, maxout_only=criterion.name == "maxout-wins")
    stats = _statistics_pass(args, model, source, criterion, group_list, groups)
    about = {"criterion": criterion.name, "layers": ",".join(g.name for g in group_list),
             "shard": f"{args.shard[0]}/{args.shard[1]}" if args.shard else "0/1"}
    stats.save(args.output, about)
    print(f"wrote {args.output}: {stats.samples} samples, {len(group_list)} groups")
    return 0


def cmd_relevance_merge(args) -> int:
    """Add the statistics of shards into one file."""
    from .statistics import merge_files, save_arrays

    merged = merge_files(args.parts)
    save_arrays(args.output, merged)
    print(f"wrote {args.output}: {int(merged['samples'])} samples from {len(args.parts)} files")
    return 0


def _validation(model, source, args):
    """An evaluator of top-1 accuracy on the (limited) data, batches decoded once and reused."""
    from .evaluate import evaluate

    held = list(_batches(model, source, args, "validation data"))

    def accuracy(net, shapes) -> float:
        return evaluate(net, shapes, held, (1,), _runtime_options(args)).accuracy(1)

    return accuracy


def _budget(args):
    from .selection import Budget

    if args.criterion and args.ratio is None and args.keep is None and args.maxout_k is None and args.tolerance is None:
        raise CaffeSurgeryError("say how much to remove: --ratio, --keep, --maxout-k or --tolerance")
    if args.global_ranking and (args.keep is not None or args.layer_ratio):
        raise CaffeSurgeryError("--global sets one threshold over all layers from --ratio; --keep and --layer-ratio "
                                "set per-layer counts: use one or the other")
    return Budget(ratio=args.ratio, keep=args.keep, min_keep=args.min_keep, round_to=args.round_to,
                  overrides=dict(args.layer_ratio), global_ranking=args.global_ranking, maxout_k=args.maxout_k,
                  maxout_units=args.maxout_units)


def _plan(args, model, source, groups, group_list):
    """The plan to apply, the net to apply it to (weights may be adjusted) and notes for the report."""
    from .criteria import get_criterion
    from .plan import Plan
    from .pruning import (make_plan, plan_by_similarity, random_masks_plan, score, statistics_plan,
                          tolerance_plan)

    if args.plan:
        return Plan.load(args.plan), model.net, [], None
    budget = _budget(args)
    about = {"criterion": args.criterion}
    if args.criterion == "similarity":
        plan, net, notes = plan_by_similarity(model, groups, group_list, budget)
        return plan, net, notes, None
    if args.criterion == "random-masks":
        plan, _ = random_masks_plan(model, groups, group_list, budget, _validation(model, source, args),
                                    args.masks, args.seed)
        return plan, model.net, [f"random-masks: best of {args.masks} masks"], None
    criterion = get_criterion(args.criterion)
    stats = None
    if criterion.needs_data:
        stats = statistics_plan(model, groups, group_list, criterion)
        if args.stats:
            from .statistics import load_file
            stats.load_arrays(load_file(args.stats), args.stats)
        else:
            stats = _statistics_pass(args, model, source, criterion, group_list, groups)
    scores = score(model, groups, group_list, criterion, stats)
    if args.tolerance is not None:
        plan, _ = tolerance_plan(model, groups, group_list, scores, budget, _validation(model, source, args),
                                 args.tolerance, about=about)
        return plan, model.net, [], stats
    return make_plan(scores, groups, group_list, budget, {**about, "ratio": args.ratio}), model.net, [], stats


def cmd_prune(args) -> int:
    """Prune by plan, by criterion and ratio, or to an accuracy tolerance; write the smaller pair."""
    from .check import check_files
    from .criteria import get_criterion
    from .groups import build_groups
    from .io import atomic_write
    from .plan import resolve_plan
    from .pruning import chosen_groups, compensate
    from .report import format_prune_report, prune_report
    from .save import save_caffemodel, save_prototxt
    from .surgery import apply_plan

    criterion = get_criterion(args.criterion) if args.criterion else None
    needs_data = bool(args.data) or args.tolerance is not None or (
        criterion is not None and criterion.needs_data and not (args.stats and criterion.score is not None))
    model, source = _load(args, with_data=needs_data)
    groups = build_groups(model.net, model.shapes)
    protected = set(args.protect)
    group_list = [g for g in chosen_groups(groups, args.layers, maxout_only=args.criterion == "maxout-wins")
                  if not protected & set(g.producers)]
    plan, net, notes, stats = _plan(args, model, source, groups, group_list)
    keep = resolve_plan(plan, net, groups, args.plan)
    if protected & {p for gid in keep for p in groups.groups[gid].producers}:
        raise CaffeSurgeryError(f"the plan prunes protected layers: {', '.join(sorted(protected))}", file=args.plan)
    if args.compensate:
        if stats is None:
            raise CaffeSurgeryError("--compensate needs activation statistics: use a data-driven criterion")
        net, compensation = compensate(net, model.shapes, groups, keep, stats)
        notes += compensation
    pruned_net, pruned_shapes = apply_plan(net, model.shapes, groups, keep)
    report = prune_report(model.shapes, pruned_shapes, model.net, pruned_net)
    report["notes"] = notes
    if args.dry_run:
        print(plan.to_json())
        print(format_prune_report(report))
        return 0
    prefix = Path(args.output)
    if source is not None:
        evaluate_accuracy = _validation(model, source, args)
        report["accuracy"] = {"before": evaluate_accuracy(model.net, model.shapes),
                              "after": evaluate_accuracy(pruned_net, pruned_shapes), "samples": len(source)}
    outputs = {kind: Path(f"{prefix}.{kind}") for kind in ("prototxt", "caffemodel", "plan.json", "report.json")}
    save_prototxt(pruned_net, outputs["prototxt"])
    save_caffemodel(pruned_net, outputs["caffemodel"])
    problems = check_files(outputs["prototxt"], outputs["caffemodel"],
                           input_shapes={t.name: tuple(pruned_shapes.blob(t)) for l in pruned_net.layers
                                         if not l.bottoms for t in l.tops})
    if problems:
        for path in (outputs["prototxt"], outputs["caffemodel"]):
            path.unlink()
        raise CaffeSurgeryError("internal error: the pruned pair fails check: " + "; ".join(problems))
    report["files"] = {"caffemodel": [Path(args.weights).stat().st_size, outputs["caffemodel"].stat().st_size]}
    plan.save(outputs["plan.json"])
    atomic_write(outputs["report.json"], [json.dumps(report, indent=1).encode("utf-8")])
    print(format_prune_report(report))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(p) for p in outputs.values())}")
    return 0


def cmd_sparsify(args) -> int:
    """Magnitude weight pruning: exact zeros in a dense caffemodel, with sparse and compressed sizes."""
    from .sparsify import sparsify_command

    return sparsify_command(args.prototxt, args.weights, args.output, sparsity=args.sparsity,
                            threshold=args.threshold, std_factor=args.std_factor, layers=args.layers,
                            scope=args.scope, input_shapes=dict(args.input))


def cmd_fold_bn(args) -> int:
    """Fold BatchNorm/Scale layers into the preceding Convolution/InnerProduct."""
    from .fold import fold_command

    return fold_command(args.prototxt, args.weights, args.output, input_shapes=dict(args.input))


def cmd_train(args) -> int:
    """Train a net from its solver with Caffe's semantics (needs the train extra: PyTorch)."""
    from .train import train_command

    return train_command(args.solver, args.weights, args.max_iter, args.device, args.output, args.data,
                         args.test_data, args.keep_zeros)


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
    print(f"wrote {args.output}.prototxt, {args.output}.caffemodel")
    return 0


def cmd_reproduce(args) -> int:
    """Reproduce the LeNet maxout neuron-pruning experiment; write results.json/.md/.png."""
    from .reproduce import reproduce_lenet

    document = reproduce_lenet(args.data, args.test_data, args.output, max_iter=args.max_iter,
                               train_limit=args.train_limit, test_limit=args.test_limit, device=args.device,
                               weight_sparsity=args.weight_sparsity, conv_tolerance=args.conv_tolerance)
    print((Path(args.output) / "results.md").read_text())
    return 0 if document["stages"] else 1


def reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reproduce lenet`` (shared with scripts/reproduce_lenet.py)."""
    parser.add_argument("--data", required=True, help="training images, e.g. idx:train-images.gz:train-labels.gz")
    parser.add_argument("--test-data", required=True, help="test images, e.g. idx:t10k-images.gz:t10k-labels.gz")
    parser.add_argument("-o", "--output", required=True, help="results folder")
    parser.add_argument("--max-iter", type=int, help="iterations per training (default: the reference solver's "
                                                     "3749 scaled to the training set size)")
    parser.add_argument("--train-limit", type=int, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, help="use only the first N test images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument("--weight-sparsity", type=_ratio, default=0.75,
                        help="fraction of each layer's weights removed by magnitude pruning (default 0.75)")
    parser.add_argument("--conv-tolerance", type=float, default=0.2,
                        help="accuracy points the conv-filter pruning may cost (default 0.2)")


# -- parser ---------------------------------------------------------------------------------

def _verb(verbs, name, help_text, run):
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
    parser = verbs.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    _safety_arguments(parser)
    return parser


def _size(text: str) -> int:
    from .limits import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _safety_arguments(parser) -> None:
    parser.add_argument("--max-memory", type=_size, metavar="SIZE",
                        help="refuse inputs whose declared sizes need more than this (e.g. 8G; default: half the "
                             "machine's memory)")
    parser.add_argument("--in-place", action="store_true",
                        help="allow an output to replace an input file (refused otherwise)")
    parser.add_argument("--proto", metavar="FORK.proto",
                        help="read and write texts with this fork's caffe.proto (its fields typed; needs grpcio-tools)")


_INPUT_ARGUMENTS = ("prototxt", "weights", "a_prototxt", "a_weights", "b_prototxt", "b_weights", "input_prototxt",
                    "plan", "stats", "parts", "solver", "spec", "data", "test_data")
_OUTPUT_ARGUMENTS = ("output", "output_prototxt", "output_weights")
_PREFIX_SUFFIXES = (".prototxt", ".caffemodel", ".plan.json", ".report.json")


def _paths_of(args, names) -> list[str]:
    """The file paths the named arguments give (data specs ``kind:path[:path]`` give their paths)."""
    paths = []
    for name in names:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str):
                continue
            kind, sep, rest = value.partition(":")
            spec = name in ("spec", "data", "test_data") and sep
            paths += [value] + (rest.split(":") + [rest] if spec else [])
    return paths


def _output_paths(args, command) -> list[str]:
    outputs = _paths_of(args, _OUTPUT_ARGUMENTS)
    if command in (cmd_prune, cmd_sparsify, cmd_fold_bn, cmd_importance):
        outputs += [f"{args.output}{suffix}" for suffix in _PREFIX_SUFFIXES]
    return outputs


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = argparse.ArgumentParser(prog="caffe-surgery", description="Inspect, export and prune legacy Caffe models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    info = _verb(verbs, "info", "per-layer table: shapes, parameters, MACs (or the channel groups)", cmd_info)
    _net_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    info.add_argument("--groups", action="store_true", help="list the channel groups, members and pinned reasons")

    upgrade = _verb(verbs, "upgrade", "convert a V0/V1 prototxt (and caffemodel) to the current format", cmd_upgrade)
    upgrade.add_argument("input_prototxt")
    upgrade.add_argument("output_prototxt")
    upgrade.add_argument("-w", "--weights", help="caffemodel to upgrade too")
    upgrade.add_argument("-o", "--output-weights", help="where to write the upgraded caffemodel (float32 blobs)")

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

    compare = _verb(verbs, "compare", "run two nets on the same inputs and compare every shared blob", cmd_compare)
    for name in ("a_prototxt", "a_weights", "b_prototxt", "b_weights"):
        compare.add_argument(name)
    compare.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W")
    compare.add_argument("--data", metavar="SPEC", help="inputs from data (default: seeded random inputs)")
    compare.add_argument("--limit", type=_positive, help="samples to compare (default 1)")
    compare.add_argument("--backend", choices=("onnxruntime", "opencv"), default="onnxruntime",
                         help="what runs net B (A always runs in onnxruntime)")
    compare.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    compare.add_argument("--threads", type=_positive)

    convert = _verb(verbs, "convert-data", "write a Caffe LMDB of Datum records (keys %%08d)", cmd_convert_data)
    convert.add_argument("spec", help="idx:IMAGES:LABELS, list:FILE[:ROOT], npy:PATH or lmdb:PATH")
    convert.add_argument("-o", "--output", required=True, help="the LMDB folder to create")
    convert.add_argument("--limit", type=_positive, help="convert only the first N samples")
    convert.add_argument("--force", action="store_true", help="replace an existing output")

    relevance = _verb(verbs, "relevance", "gather relevance statistics on data (or: relevance merge PARTS -o OUT)",
                      cmd_relevance)
    _net_arguments(relevance, data=True)
    relevance.add_argument("--criterion", required=True, help="a data-driven criterion (see prune --help)")
    relevance.add_argument("--layers", type=lambda t: t.split(","), help="only these producer layers (comma-separated)")
    relevance.add_argument("--shard", type=_shard, metavar="I/N", help="gather shard I of N (merge the parts later)")
    relevance.add_argument("-o", "--output", required=True, help="the .npz to write")

    prune = _verb(verbs, "prune", "remove channels/neurons and write a smaller prototxt/caffemodel pair", cmd_prune)
    prune.epilog += "\n\ncriteria:\n" + "\n".join(f"  {c.name:16} {c.summary}" for c in sorted(CRITERIA.values(), key=lambda c: c.name))
    _net_arguments(prune, weights_required=True, data=True)
    how = prune.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", help="apply this plan JSON")
    how.add_argument("--criterion", help="rank by this criterion (see the list below)")
    prune.add_argument("--ratio", type=_ratio, help="fraction to remove per group (or globally with --global)")
    prune.add_argument("--keep", type=_positive, help="channels to keep per group")
    prune.add_argument("--global", dest="global_ranking", action="store_true",
                       help="one threshold over scores normalised per layer")
    prune.add_argument("--min-keep", type=_positive, default=1, help="never keep fewer channels per group (default 1)")
    prune.add_argument("--round-to", type=_positive, default=1, help="round kept counts up to a multiple (e.g. 8)")
    prune.add_argument("--layer-ratio", action="append", type=_override, default=[], metavar="LAYER=RATIO",
                       help="a different ratio for one producer layer (repeatable)")
    prune.add_argument("--layers", type=lambda t: t.split(","), help="only prune these producer layers")
    prune.add_argument("--protect", type=lambda t: t.split(","), default=[], help="never prune these layers")
    prune.add_argument("--maxout-k", type=_positive, help="maxout: neurons kept per unit")
    prune.add_argument("--maxout-units", action="store_true", help="maxout: drop whole units instead of neurons")
    prune.add_argument("--tolerance", type=float, metavar="T",
                       help="prune progressively until top-1 accuracy drops by more than T percentage points")
    prune.add_argument("--stats", help="statistics .npz from 'relevance' (instead of a data pass)")
    prune.add_argument("--masks", type=_positive, default=100, help="random-masks: candidate masks to evaluate")
    prune.add_argument("--seed", type=int, default=0, help="random-masks: random seed")
    prune.add_argument("--compensate", action="store_true",
                       help="fold removed channels' mean activation into the consumers' bias")
    prune.add_argument("--dry-run", action="store_true", help="print the plan and projected sizes; write nothing")
    prune.add_argument("-o", "--output", required=True, help="output prefix: writes PREFIX.prototxt/.caffemodel/"
                                                              ".report.json/.plan.json")
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

    train = _verb(verbs, "train", "train from a solver prototxt with Caffe's semantics (pip install "
                  "'caffe-surgery[train]')", cmd_train)
    train.add_argument("solver", help="solver prototxt (net/train_net/test_net, lr policy, momentum, ...)")
    train.add_argument("-w", "--weights", help="caffemodel to start from (by layer name)")
    train.add_argument("--max-iter", type=int, help="replace the solver's max_iter")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--data", help="training data instead of the TRAIN net's data layer source")
    train.add_argument("--test-data", help="test data instead of the TEST net's data layer source")
    train.add_argument("--keep-zeros", action="store_true", help="masked fine-tuning: zero weights stay zero")
    train.add_argument("-o", "--output", required=True, help="the trained caffemodel")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on bad input (one line on stderr), 2 on usage errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["relevance", "merge"]:
        return _main_merge(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    return run_command(args.run, args, args.debug)


def _main_merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="caffe-surgery relevance merge",
                                     description="add the statistics of shards into one file")
    parser.add_argument("parts", nargs="+", help="the part_*.npz files")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--debug", action="store_true")
    _safety_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(cmd_relevance_merge, args, args.debug)


def run_command(command, args, debug: bool) -> int:
    """Run one verb: its exit code, or 1 with a one-line error for bad input.

    The memory limit applies for the run, and its input files are protected:
    an output naming one is refused before any work (``--in-place`` allows it).
    """
    from . import guard, limits, schema

    limits.set_max_memory(getattr(args, "max_memory", None))
    guard.protect(_paths_of(args, _INPUT_ARGUMENTS), in_place=getattr(args, "in_place", False))
    try:
        for path in _output_paths(args, command):
            guard.refuse_input(path)
        if getattr(args, "proto", None):
            schema.use(schema.compile_schema(args.proto))
        return command(args)
    except CaffeSurgeryError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    finally:
        guard.release()
        limits.set_max_memory(None)
        schema.use(None)


if __name__ == "__main__":
    sys.exit(main())
