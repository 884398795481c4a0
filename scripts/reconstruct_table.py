"""Top-1 after pruning without retraining, per criterion, with and without reconstruction.

Runs ``caffe-surgery prune`` for every criterion x {plain, --compensate,
--reconstruct, --reconstruct --independent} x ratio, calibrating on one range
of the data and evaluating on another, and prints a Markdown table (the
README's figures come from one run of this script)::

    python scripts/reconstruct_table.py NET.prototxt NET.caffemodel --data csv:mnist_5k.csv.gz \
        --scale 0.00390625 --calib 2500 --ratios 0.5,0.7 -o /tmp/recon
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from caffe_surgery.cli import main

CRITERIA = ("weight-l1", "activation-l2", "thinet")
MODES = {"plain": [], "--compensate": ["--compensate"], "--reconstruct": ["--reconstruct"],
         "--reconstruct --independent": ["--reconstruct", "--independent"]}


def run(arguments: list[str], prefix: Path) -> dict:
    """One prune; its report."""
    with contextlib.redirect_stdout(io.StringIO()):
        if main(arguments + ["-o", str(prefix)]) != 0:
            raise SystemExit(f"failed: caffe-surgery {' '.join(arguments)}")
    return json.loads(Path(f"{prefix}.report.json").read_text())


def main_table(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prototxt")
    parser.add_argument("weights")
    parser.add_argument("--data", required=True, help="one data spec: calibration first, evaluation after it")
    parser.add_argument("--scale", default="0.00390625")
    parser.add_argument("--calib", type=int, required=True, help="the first N samples calibrate, the rest evaluate")
    parser.add_argument("--ratios", default="0.5,0.7")
    parser.add_argument("-o", "--output", required=True, help="folder for the pruned pairs and reports")
    args = parser.parse_args(argv)
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    common = [args.prototxt, "-w", args.weights, "--data", args.data, "--skip", str(args.calib), "--scale", args.scale,
              "--calib-data", args.data, "--calib-limit", str(args.calib), "--device", "cpu"]
    ratios = args.ratios.split(",")
    rows, baseline = [], None
    for criterion in CRITERIA:
        for mode, flags in MODES.items():
            cells = []
            for ratio in ratios:
                started = time.perf_counter()
                report = run(["prune"] + common + ["--criterion", criterion, "--ratio", ratio] + flags,
                             folder / f"{criterion}_{ratio}_{mode.replace(' ', '').replace('--', '_')}")
                baseline = report["accuracy"]["before"]
                params = report["totals"]["params"]
                cells.append(f"{report['accuracy']['after']:.4f} ({100 * (params[1] - params[0]) / params[0]:+.1f} % "
                             f"params, {time.perf_counter() - started:.0f} s)")
            rows.append(f"| {criterion} | {mode} | " + " | ".join(cells) + " |")
    print(f"unpruned top-1 {baseline:.4f} on {report['accuracy']['samples']} evaluation samples\n")
    print("| criterion | refit | " + " | ".join(f"--ratio {r}" for r in ratios) + " |")
    print("|---|---|" + "---|" * len(ratios))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main_table())
