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
from .pipeline import DEFAULT_RATIOS, NetRequest, load
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


def _integer_from(minimum: int, kind: str):
    """An argparse type: an integer of at least ``minimum`` (``kind`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got '{text}'")
        return value
    return parse


_positive = _integer_from(1, "positive")
_non_negative = _integer_from(0, "non-negative")


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {text}")
    return value


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
    parser.add_argument("--skip", type=_non_negative, help="leave out the first N samples (before --limit)")
    parser.add_argument("--limit", type=_positive, help="use only the first N samples")
    parser.add_argument("--batch-size", type=_positive, help="samples per run (default: the data layer's, else 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime device")
    parser.add_argument("--threads", type=_positive, help="onnxruntime intra-op threads (default: all cores)")
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


def _request(kind, args):
    """A verb's library request (a dataclass), filled from the parsed arguments it has."""
    from dataclasses import fields

    return kind(**{f.name: getattr(args, f.name) for f in fields(kind) if hasattr(args, f.name)})


# -- verbs ------------------------------------------------------------------------------

def cmd_info(args) -> int:
    """Print the per-layer table (or JSON) of a net, or its channel groups."""
    from .api import channel_groups, summary as net_summary
    from .report import format_groups, format_summary, groups_summary

    model, _ = load(_request(NetRequest, args))
    if args.groups:
        summary = groups_summary(channel_groups(model))
        print(json.dumps(summary, indent=2) if args.json else format_groups(summary))
        return 0
    summary = net_summary(model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_upgrade(args) -> int:
    """Write a current-format copy of a V0/V1 prototxt and, optionally, its caffemodel."""
    from .upgrade import upgrade_files

    written = upgrade_files(args.input_prototxt, args.output_prototxt, args.weights, args.output_weights,
                            args.precision)
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

    model, _ = load(_request(NetRequest, args))
    onnx_model = export_onnx(model.net, model.shapes, opset=args.opset, dynamic_batch=args.dynamic_batch)
    save_onnx(onnx_model, args.output)
    print(f"{format_written([args.output])}: inputs {', '.join(i.name for i in onnx_model.graph.input)}; "
          f"outputs {', '.join(o.name for o in onnx_model.graph.output)}")
    return 0


def cmd_eval(args) -> int:
    """Top-k accuracy (and loss) on data."""
    from .pipeline import NetRequest, evaluate_data

    result = evaluate_data(_request(NetRequest, args), args.top_k)
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
    from .compare import compare_files, comparison_document
    from .report import format_differences, format_output_checks

    differences, checks = compare_files(
        args.a_prototxt, args.a_weights, args.b_prototxt, args.b_weights, input_shapes=dict(args.input),
        data=args.data, limit=args.limit, backend=args.backend, device=args.device, threads=args.threads,
        atol=args.atol, rtol=args.rtol, score_threshold=args.score_threshold)
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


def cmd_relevance(args) -> int:
    """Gather a data-driven criterion's statistics (optionally one shard) into an .npz."""
    from .pipeline import RelevanceRequest, relevance_file

    stats, group_list = relevance_file(_request(RelevanceRequest, args))
    print(f"{format_written([args.output])}: {stats.samples} samples, {len(group_list)} groups")
    return 0


def cmd_relevance_merge(args) -> int:
    """Add the statistics of shards into one file."""
    from .statistics import merge_files, save_arrays

    merged = merge_files(args.parts)
    save_arrays(args.output, merged)
    print(f"{format_written([args.output])}: {int(merged['samples'])} samples from {len(args.parts)} files")
    return 0


def cmd_prune(args) -> int:
    """Prune by plan, by criterion and ratio, to a budget or to an accuracy tolerance (optionally retraining);
    write the smaller pair."""
    from .prune_command import PruneRequest, prune_files
    from .report import format_prune_report

    result = prune_files(_request(PruneRequest, args))
    if args.dry_run:
        print(result.plan.to_json())
        print(format_prune_report(result.report))
        return 0
    print(format_prune_report(result.report))
    for note in result.notes:
        print(f"note: {note}")
    print(format_written(result.outputs.values(), args.precision))
    return 0


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
    from .draw import net_graph, plan_changes, read_report_changes, write_graph

    model, _ = load(_request(NetRequest, args))
    changes = None
    if args.plan:
        if not args.weights:
            raise CaffeSurgeryError("--plan needs the weights (-w) to apply the plan; or draw from --report")
        changes = plan_changes(model, args.plan)
    elif args.report:
        changes = read_report_changes(args.report)
    write_graph(net_graph(model.net, model.shapes, changes), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_profile(args) -> int:
    """Time per layer with onnxruntime's profiler or OpenCV's getPerfProfile, next to MACs."""
    from .profile import format_profile, profile_net

    model, _ = load(_request(NetRequest, args))
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
    from .pipeline import SensitivityRequest, sensitivity_files
    from .report import format_table

    result = sensitivity_files(_request(SensitivityRequest, args))
    rows = [(layer, *(f"{p.value:.4f}" for p in points[1:])) for layer, points in result.curves.items()]
    print(f"{result.measure} of the unpruned net: {result.baseline:.4f}")
    print(format_table(["layer"] + [f"{r:g}" for r in args.ratios], rows))
    print(f"wrote {', '.join(result.paths)}")
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
    _safety_arguments(parser, default=argparse.SUPPRESS)
    return parser


def _common_options(parser, default=None):
    """--debug, -q, -v: accepted before the verb and after it (``default=SUPPRESS`` there)."""
    parser.add_argument("--debug", action="store_true", default=default or False, help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default or False,
                        help="print errors only (no warnings, no progress, no results on stdout)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default or False,
                        help="also print progress messages (e.g. training iterations)")


def _size(text: str) -> int:
    from .limits import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _safety_arguments(parser, default=None) -> None:
    """--max-memory, --in-place, --proto: accepted before the verb and after it (``default=SUPPRESS`` there)."""
    parser.add_argument("--max-memory", type=_size, metavar="SIZE", default=default,
                        help="refuse inputs whose declared sizes need more than this (e.g. 8G; default: half the "
                             "machine's memory)")
    parser.add_argument("--in-place", action="store_true", default=default or False,
                        help="allow an output to replace an input file (refused otherwise)")
    parser.add_argument("--proto", metavar="FORK.proto", default=default,
                        help="read and write texts with this fork's caffe.proto (its fields typed; needs grpcio-tools)")


_INPUT_ARGUMENTS = ("prototxt", "weights", "a_prototxt", "a_weights", "b_prototxt", "b_weights", "input_prototxt",
                    "plan", "stats", "parts", "solver", "spec", "data", "test_data", "calib_data", "train_val",
                    "retrain", "sensitivity", "report", "document")
_SPEC_ARGUMENTS = ("spec", "data", "test_data", "calib_data")
_OUTPUT_ARGUMENTS = ("output", "output_prototxt", "output_weights")
_PREFIX_SUFFIXES = (".prototxt", ".caffemodel", ".plan.json", ".report.json", ".train_val.prototxt", ".solver.prototxt",
                    ".csv", ".json", ".png")


def _paths_of(args, names) -> list[str]:
    """The file paths the named arguments give (data specs ``kind:path[:path]`` give their paths)."""
    paths = []
    for name in names:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str):
                continue
            kind, sep, rest = value.partition(":")
            spec = name in _SPEC_ARGUMENTS and sep
            paths += [value] + (rest.split(":") + [rest] if spec else [])
    return paths


def _output_paths(args, command) -> list[str]:
    outputs = _paths_of(args, _OUTPUT_ARGUMENTS)
    if command in (cmd_prune, cmd_sparsify, cmd_fold_bn, cmd_importance, cmd_reshape, cmd_sensitivity):
        outputs += [f"{args.output}{suffix}" for suffix in _PREFIX_SUFFIXES]
    return outputs


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
    compare.add_argument("--limit", type=_positive, help="samples to compare (default 1)")
    compare.add_argument("--backend", choices=("onnxruntime", "opencv"), default="onnxruntime",
                         help="what runs net B (A always runs in onnxruntime)")
    compare.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    compare.add_argument("--threads", type=_positive)
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
    convert.add_argument("--limit", type=_positive, help="convert only the first N samples")
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
    prune.add_argument("--masks", type=_positive, default=100, help="random-masks: candidate masks to evaluate")
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
    _engine_arguments(sensitivity)

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
    _safety_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(cmd_relevance_merge, args, args.debug, args.quiet, args.verbose)


def run_command(command, args, debug: bool, quiet: bool = False, verbose: bool = False) -> int:
    """Run one verb: its exit code, 1 with a one-line error for bad input, 141 when stdout's reader left.

    The memory limit applies for the run, and its input files are protected:
    an output naming one is refused before any work (``--in-place`` allows it).
    """
    from . import guard, limits, schema

    logging.basicConfig(format="%(levelname)s: %(message)s" if verbose else "warning: %(message)s")
    package_log = logging.getLogger(__package__)
    previous_level = package_log.level
    package_log.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    limits.set_max_memory(getattr(args, "max_memory", None))
    guard.protect(_paths_of(args, _INPUT_ARGUMENTS), in_place=getattr(args, "in_place", False))
    try:
        for path in _output_paths(args, command):
            guard.refuse_input(path)
        if getattr(args, "proto", None):
            schema.use(schema.compile_schema(args.proto))
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
        guard.release()
        limits.set_max_memory(None)
        schema.use(None)


if __name__ == "__main__":
    sys.exit(main())
