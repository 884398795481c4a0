"""The ``caffe-surgery`` command line: one small function per verb."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from . import caffe_pb2
from .errors import CaffeSurgeryError

EPILOGS = {
    "info": "examples:\n  caffe-surgery info samples/lenet_maxout.prototxt -w samples/lenet_maxout.caffemodel\n"
            "  caffe-surgery info train_val.prototxt --phase TRAIN --input data=64,3,32,32 --json",
    "upgrade": "examples:\n  caffe-surgery upgrade old_deploy.prototxt new_deploy.prototxt\n"
               "  caffe-surgery upgrade old.prototxt new.prototxt -w old.caffemodel -o new.caffemodel",
    "check": "examples:\n  caffe-surgery check deploy.prototxt -w weights.caffemodel\n"
             "  caffe-surgery check deploy.prototxt -w weights.caffemodel --input data=1,3,224,224",
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


def _add_net_arguments(parser: argparse.ArgumentParser, weights_required: bool = False) -> None:
    parser.add_argument("prototxt", help="net definition (current, V1 or V0 format)")
    parser.add_argument("-w", "--weights", required=weights_required, help="caffemodel with the weights")
    parser.add_argument("--input", action="append", type=parse_input_shape, default=[], metavar="NAME=N,C,H,W",
                        help="shape of a data/input blob (repeatable); overrides the net's own")
    parser.add_argument("--phase", type=_phase, default=caffe_pb2.TEST, help="TRAIN or TEST (default TEST)")


def cmd_info(args) -> int:
    """Print the per-layer table (or JSON) of a net."""
    from .model import layer_weights_nbytes, load_model
    from .report import format_summary, net_summary

    model = load_model(args.prototxt, args.weights, phase=args.phase, input_shapes=dict(args.input))
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

    problems = check_files(args.prototxt, args.weights, input_shapes=dict(args.input), phase=args.phase)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {args.prototxt} and {args.weights} load as a Caffe pair")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = argparse.ArgumentParser(prog="caffe-surgery", description="Inspect, export and prune legacy Caffe models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    formatter = argparse.RawDescriptionHelpFormatter

    info = verbs.add_parser("info", help="per-layer table: shapes, parameters, MACs",
                            epilog=EPILOGS["info"], formatter_class=formatter)
    _add_net_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    info.set_defaults(run=cmd_info)

    upgrade = verbs.add_parser("upgrade", help="convert V0/V1 prototxt/caffemodel to the current format",
                               epilog=EPILOGS["upgrade"], formatter_class=formatter)
    upgrade.add_argument("input_prototxt")
    upgrade.add_argument("output_prototxt")
    upgrade.add_argument("-w", "--weights", help="caffemodel to upgrade too")
    upgrade.add_argument("-o", "--output-weights", help="where to write the upgraded caffemodel (float32 blobs)")
    upgrade.set_defaults(run=cmd_upgrade)

    check = verbs.add_parser("check", help="validate a pair as strictly as Caffe's own loader",
                             epilog=EPILOGS["check"], formatter_class=formatter)
    _add_net_arguments(check, weights_required=True)
    check.set_defaults(run=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on bad input (one line on stderr), 2 on usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        return args.run(args)
    except CaffeSurgeryError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
