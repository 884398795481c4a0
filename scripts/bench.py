"""caffe-surgery benchmarks: surgery, statistics gathering, what pruning buys at inference, growth (and a GPU hook).

    python scripts/bench.py --out bench-results                 # everything but gpu, realistic sizes
    python scripts/bench.py --only surgery,latency --out DIR    # some sub-benchmarks
    python scripts/bench.py --smoke --out /tmp/bench            # tiny sizes, seconds
    python scripts/bench.py --only runtime                      # backends per model: OpenCV, onnxruntime, chosen
    python scripts/bench.py --only gpu --backend torch          # relevance pass through caffe_surgery.train.TorchNet

Sub-benchmarks (``--only``, comma-separated):

``surgery``  VGG-16 (real layer shapes, generated weights, ~553 MB caffemodel, cached): load, plan
             (weight-l1, 50% of every prunable group), apply, save -- each run in a child process,
             its peak RSS from ``wait4`` -- against the floor measured the same way:
             ``ParseFromString`` + ``SerializeToString`` of the same file, same protobuf backend.
             Targets: total <= 2x floor, peak RSS <= 3x the file size.
``stats``    images/s of plain onnxruntime, onnxruntime with the taps, taps + statistics, the
             relevance pass (LMDB decode + taps + streaming statistics: ``pruning.gather``) and
             OpenCV dnn, on LeNet (batch 64, Fashion-MNIST LMDB) and VGG-16 (batch 8, 224x224).
             Target: relevance >= 0.9x plain onnxruntime.
``latency``  batch 1 and batch 32 latency of a conv-heavy CIFAR-10 VGG-like net and of its
             weight-l1 50% pruned version, in onnxruntime and OpenCV dnn, next to the MAC ratio.
             Target: latency ratio within 1.2x of the MAC ratio.
``growth``   surgery on models of growing size (LeNet, cifar10_full, CIFAR-10 VGG, ResNet-18-like,
             VGG-16) and the relevance pass on data sets of growing length (and on each model):
             fitted slopes (seconds per MB, seconds per image, seconds per GMAC) with R^2.
``cluster``  the relevance pass on a local Ray instance with 1 and 2 worker processes, next to the same
             pass in this process, and the scaling ratio (needs the cluster extra; not run unless asked
             for; see scripts/bench_cluster.py).
``runtime``  ms/image of OpenCV dnn and of the onnxruntime path on every real model with weights
             (``../shared/real-models``) and the benchmark nets, at batch 1, and the backend
             ``--backend auto`` chooses (``scripts/bench_backends.py``). Targets: the chosen backend
             within 1.1x of the fastest measured, its outputs equal to OpenCV's to 1e-4. Not run unless asked for.
``gpu``      hook: the relevance pass through ``caffe_surgery.train.TorchNet`` (``--backend torch``),
             on CUDA when torch sees a GPU, else on the CPU (said so); skipped with a message when
             the torch backend is unavailable. Not run unless asked for.

Every figure is the median of ``--repeats`` runs with their min-max. The results go to
``OUT/bench.json`` and ``OUT/bench.md``. Generated nets and LMDBs are cached in ``--cache``
(default ``~/.cache/caffe-surgery-bench``; the VGG-16 caffemodel is written once, streaming).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics as stats_module
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench_backends  # noqa: E402
import bench_runtime  # noqa: E402
from bench_cluster import bench_cluster, md_cluster  # noqa: E402
from bench_nets import DEFAULT_CACHE, ensure_net  # noqa: E402

SUBS = ("surgery", "stats", "latency", "growth", "runtime", "gpu", "cluster")
DEFAULT_ONLY = "surgery,stats,latency,growth"
MB = 1e6


def summary(values, unit: str) -> dict:
    """A figure: median, min, max and the runs."""
    values = [float(v) for v in values]
    return {"median": float(stats_module.median(values)), "min": min(values), "max": max(values),
            "runs": values, "unit": unit}


def fmt(figure: dict, digits: int = 2) -> str:
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}–{figure['max']:.{digits}f})"


def fit(xs, ys) -> dict:
    """Least-squares line y = slope * x + intercept and its R^2."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = float(((ys - (slope * xs + intercept)) ** 2).sum())
    total = float(((ys - ys.mean()) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - residual / total if total else 1.0}


# ------------------------------------------------------------------------- child processes

def _hwm_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs), so each phase gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


class _Phases:
    """Wall time and peak RSS of consecutive phases of a child."""

    def __init__(self):
        self.seconds, self.peak_mb = {}, {}

    def run(self, name, function, *args):
        _reset_hwm()
        started = time.perf_counter()
        result = function(*args)
        self.seconds[name] = time.perf_counter() - started
        self.peak_mb[name] = _hwm_kb() * 1024 / MB
        return result


def child_surgery(prototxt: str, weights: str, out_prefix: str) -> dict:
    """load -> plan (weight-l1, 50% of every prunable group) -> apply -> save, timed phase by phase."""
    from caffe_surgery.criteria import get_criterion
    from caffe_surgery.groups import build_groups
    from caffe_surgery.model import load_model
    from caffe_surgery.pruning import chosen_groups, make_plan, prune, score
    from caffe_surgery.save import save_caffemodel, save_prototxt
    from caffe_surgery.selection import Budget

    phases = _Phases()
    model = phases.run("load", load_model, prototxt, weights)

    def plan():
        groups = build_groups(model.net, model.shapes)
        group_list = chosen_groups(groups, None)
        scores = score(model, groups, group_list, get_criterion("weight-l1"), None)
        return make_plan(scores, groups, group_list, Budget(ratio=0.5), {"criterion": "weight-l1", "ratio": 0.5})

    the_plan = phases.run("plan", plan)
    pruned = phases.run("apply", prune, model, the_plan)

    def save():
        save_prototxt(pruned.net, out_prefix + ".prototxt")
        save_caffemodel(pruned.net, out_prefix + ".caffemodel")

    phases.run("save", save)
    return {"seconds": phases.seconds, "peak_mb": phases.peak_mb,
            "params": [model.shapes.totals()[0], pruned.shapes.totals()[0]],
            "output_mb": os.path.getsize(out_prefix + ".caffemodel") / MB}


def child_floor(weights: str, out_path: str) -> dict:
    """The protobuf floor: read, ParseFromString, SerializeToString, write the same caffemodel."""
    from google.protobuf.internal import api_implementation

    from caffe_surgery import caffe_pb2

    phases = _Phases()
    data = phases.run("read", lambda: Path(weights).read_bytes())
    message = caffe_pb2.NetParameter()
    phases.run("parse", message.ParseFromString, data)
    del data
    out = phases.run("serialize", message.SerializeToString)
    phases.run("write", Path(out_path).write_bytes, out)
    return {"seconds": phases.seconds, "peak_mb": phases.peak_mb, "backend": api_implementation.Type()}


CHILDREN = {"surgery": child_surgery, "floor": child_floor}


def run_child(kind: str, *args: str) -> tuple[dict, float]:
    """Run one child (a fresh interpreter); return its JSON result and its peak RSS in MB.

    The peak is the child's own VmHWM (the highest of its phases' peaks; a phase's peak starts
    from the RSS it inherits, so imports count). ``wait4``'s ru_maxrss would be the same but
    Linux starts it from the parent's RSS at fork time, which would charge this process's
    size to small children; it is kept in the result as ``ru_maxrss_mb``.
    """
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", kind, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"child {kind} {' '.join(args)} failed:\n{stderr.decode(errors='replace')}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result["ru_maxrss_mb"] = usage.ru_maxrss * 1024 / MB  # Linux: kilobytes
    return result, max(result["peak_mb"].values())


# ------------------------------------------------------------------------------ surgery

def surgery_runs(net, repeats: int, work: Path) -> dict:
    """Tool and floor runs, interleaved, each in its own child process."""
    tool, floor = [], []
    for _ in range(repeats):
        result, peak = run_child("surgery", str(net.prototxt), str(net.caffemodel), str(work / f"{net.name}_pruned"))
        tool.append((result, peak))
        result, peak = run_child("floor", str(net.caffemodel), str(work / f"{net.name}_floor.caffemodel"))
        floor.append((result, peak))
    size_mb = net.megabytes
    totals = [sum(r["seconds"].values()) for r, _ in tool]
    floor_core = [r["seconds"]["parse"] + r["seconds"]["serialize"] for r, _ in floor]
    floor_io = [sum(r["seconds"].values()) for r, _ in floor]
    out = {
        "net": net.name, "file_mb": size_mb, "output_mb": tool[0][0]["output_mb"], "params": tool[0][0]["params"],
        "protobuf_backend": floor[0][0]["backend"],
        "total_s": summary(totals, "s"),
        "phases_s": {p: summary([r["seconds"][p] for r, _ in tool], "s") for p in tool[0][0]["seconds"]},
        "phase_peak_mb": {p: summary([r["peak_mb"][p] for r, _ in tool], "MB") for p in tool[0][0]["peak_mb"]},
        "peak_rss_mb": summary([peak for _, peak in tool], "MB"),
        "floor_s": summary(floor_core, "s"),
        "floor_with_io_s": summary(floor_io, "s"),
        "floor_phases_s": {p: summary([r["seconds"][p] for r, _ in floor], "s") for p in floor[0][0]["seconds"]},
        "floor_peak_rss_mb": summary([peak for _, peak in floor], "MB"),
    }
    out["total/floor"] = summary([t / f for t, f in zip(totals, floor_core)], "x")
    out["total/floor_with_io"] = summary([t / f for t, f in zip(totals, floor_io)], "x")
    out["peak_rss/file"] = summary([peak / size_mb for _, peak in tool], "x")
    out["targets"] = {"total <= 2x floor": out["total/floor"]["median"] <= 2.0,
                      "peak RSS <= 3x file": out["peak_rss/file"]["median"] <= 3.0}
    return out


def bench_surgery(args, work: Path) -> dict:
    net = ensure_net("vgg16", args.cache, smoke=args.smoke)
    return surgery_runs(net, args.repeats, work)


def md_surgery(result: dict) -> list[str]:
    lines = [f"## Surgery: {result['net']} ({result['file_mb']:.1f} MB caffemodel, {result['params'][0] / 1e6:.1f}M "
             f"-> {result['params'][1] / 1e6:.1f}M params, protobuf backend `{result['protobuf_backend']}`)", "",
             "| figure | median (min–max) |", "|---|---|"]
    lines.append(f"| total: load + plan + apply + save (s) | {fmt(result['total_s'])} |")
    for phase, figure in result["phases_s"].items():
        lines.append(f"| &nbsp; {phase} (s) / its peak RSS (MB) | {fmt(figure)} / "
                     f"{fmt(result['phase_peak_mb'][phase], 0)} |")
    lines.append(f"| floor: ParseFromString + SerializeToString (s) | {fmt(result['floor_s'])} |")
    lines.append(f"| floor with file read + write (s) | {fmt(result['floor_with_io_s'])} |")
    lines.append(f"| **total / floor** (target <= 2) | **{fmt(result['total/floor'])}** |")
    lines.append(f"| total / floor with I/O | {fmt(result['total/floor_with_io'])} |")
    lines.append(f"| peak RSS, whole child (MB) | {fmt(result['peak_rss_mb'], 0)} |")
    lines.append(f"| floor's peak RSS (MB) | {fmt(result['floor_peak_rss_mb'], 0)} |")
    lines.append(f"| **peak RSS / file size** (target <= 3) | **{fmt(result['peak_rss/file'])}** |")
    return lines + [""]


# -------------------------------------------------------------------------------- stats

def bench_stats(args, work: Path) -> dict:
    results = bench_runtime.run(["lenet", "vgg16"], Path(args.cache), args.repeats, smoke=args.smoke)
    for result in results:
        ratio = result["figures"]["relevance"]["median"] / result["figures"]["ort"]["median"]
        result["targets"] = {"relevance >= 0.9x ort": ratio >= 0.9}
    return {"nets": results}


def md_stats(result: dict) -> list[str]:
    columns = ["ort", "ort+taps", "ort+taps+stats", "relevance", "opencv"]
    lines = ["## Statistics gathering (images/s)", "",
             "| net | batch | images | " + " | ".join(columns)
             + " | relevance setup (s) | **relevance / ort** (target >= 0.9) |",
             "|---|---|---|" + "---|" * len(columns) + "---|---|"]
    for net in result["nets"]:
        figures = net["figures"]
        cells = [fmt(figures[c], 1) if c in figures else "-" for c in columns]
        ratio = figures["relevance"]["median"] / figures["ort"]["median"]
        lines.append(f"| {net['net']} | {net['batch']} | {net['images']} | " + " | ".join(cells)
                     + f" | {fmt(figures['relevance setup s'])} | **{ratio:.2f}** (per round "
                       f"{net['relevance/ort']['min']:.2f}–{net['relevance/ort']['max']:.2f}) |")
    lines += ["", "ort: plain session on in-memory batches; ort+taps: the statistics' taps as outputs; "
              "ort+taps+stats: plus `Statistics.update`; relevance: `pruning.gather` over the LMDB "
              "(decode on the prefetch thread), session creation excluded (shown as setup); opencv: `cv2.dnn`.", ""]
    return lines


# ------------------------------------------------------------------------------ latency

def _latencies(call, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def prune_weight_l1(model, ratio: float = 0.5):
    from caffe_surgery.criteria import get_criterion
    from caffe_surgery.groups import build_groups
    from caffe_surgery.pruning import chosen_groups, make_plan, prune, score
    from caffe_surgery.selection import Budget

    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, None)
    scores = score(model, groups, group_list, get_criterion("weight-l1"), None)
    return prune(model, make_plan(scores, groups, group_list, Budget(ratio=ratio), {}))


def bench_latency(args, work: Path) -> dict:
    import cv2

    from caffe_surgery.model import load_model
    from caffe_surgery.runtime import Runtime
    from caffe_surgery.save import save_caffemodel, save_prototxt

    net = ensure_net("cifar_vgg", args.cache, smoke=args.smoke)
    model = load_model(net.prototxt, net.caffemodel)
    pruned = prune_weight_l1(model)
    prefix = work / "cifar_vgg_pruned"
    save_prototxt(pruned.net, f"{prefix}.prototxt")
    save_caffemodel(pruned.net, f"{prefix}.caffemodel")
    macs = (model.shapes.totals()[1], pruned.shapes.totals()[1])
    params = (model.shapes.totals()[0], pruned.shapes.totals()[0])
    variants = {"original": (model.net, model.shapes, net.prototxt, net.caffemodel),
                "pruned": (pruned.net, pruned.shapes, f"{prefix}.prototxt", f"{prefix}.caffemodel")}
    rng = np.random.default_rng(0)
    runs = {1: 5 if args.smoke else 30, 32: 3 if args.smoke else 10}
    rows = []
    for batch, count in runs.items():
        x = rng.standard_normal((batch,) + net.input_shape).astype(np.float32) * 50
        for backend in ("onnxruntime", "opencv"):
            latency = {}
            for name, (graph, shapes, prototxt, weights) in variants.items():
                if backend == "onnxruntime":
                    session = Runtime(graph, shapes, device="cpu")
                    latency[name] = summary(_latencies(lambda: session.run(x), count), "ms")
                else:
                    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))

                    def forward():
                        cv_net.setInput(x)
                        cv_net.forward()

                    latency[name] = summary(_latencies(forward, count), "ms")
            ratio = latency["pruned"]["median"] / latency["original"]["median"]
            rows.append({"backend": backend, "batch": batch, "latency_ms": latency, "latency_ratio": ratio,
                         "latency_ratio / mac_ratio": ratio / (macs[1] / macs[0]),
                         "target": ratio <= 1.2 * macs[1] / macs[0]})
    return {"net": net.name, "macs": macs, "params": params, "mac_ratio": macs[1] / macs[0], "rows": rows,
            "targets": {f"{r['backend']} batch {r['batch']}: latency ratio <= 1.2x MAC ratio": r["target"]
                        for r in rows}}


def md_latency(result: dict) -> list[str]:
    macs, params = result["macs"], result["params"]
    lines = [f"## What pruning buys: {result['net']} (weight-l1, 50% of every group)", "",
             f"MACs {macs[0] / 1e6:.1f}M -> {macs[1] / 1e6:.1f}M (ratio **{result['mac_ratio']:.3f}**), "
             f"params {params[0] / 1e6:.2f}M -> {params[1] / 1e6:.2f}M", "",
             "| backend | batch | original (ms) | pruned (ms) | latency ratio | ratio / MAC ratio (target <= 1.2) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['backend']} | {row['batch']} | {fmt(row['latency_ms']['original'])} | "
                     f"{fmt(row['latency_ms']['pruned'])} | {row['latency_ratio']:.3f} | "
                     f"**{row['latency_ratio / mac_ratio']:.2f}** |")
    return lines + [""]


# ------------------------------------------------------------------------------- growth

GROWTH_NETS = ("lenet", "cifar10_full", "cifar_vgg", "resnet18", "vgg16")


def bench_growth(args, work: Path) -> dict:
    from caffe_surgery.model import load_model

    models = []
    for name in GROWTH_NETS:
        net = ensure_net(name, args.cache, smoke=args.smoke)
        totals, peaks = [], []
        for _ in range(args.repeats):
            result, peak = run_child("surgery", str(net.prototxt), str(net.caffemodel), str(work / f"growth_{name}"))
            totals.append(sum(result["seconds"].values()))
            peaks.append(peak)
        model = load_model(net.prototxt, net.caffemodel)
        params, macs = model.shapes.totals()
        del model
        models.append({"net": name, "file_mb": net.megabytes, "params": params, "gmacs": macs / 1e9,
                       "surgery_s": summary(totals, "s"), "peak_rss_mb": summary(peaks, "MB")})
    surgery_fit = fit([m["file_mb"] for m in models], [m["surgery_s"]["median"] for m in models])

    # Relevance pass (LeNet, Fashion-MNIST LMDB) on data sets of growing length.
    lengths = (256, 512, 1024, 2048) if args.smoke else (1250, 2500, 5000, 10000)
    lenet = ensure_net("lenet", args.cache, smoke=args.smoke)
    lmdb_path = bench_runtime.fashion_lmdb(Path(args.cache), max(lengths))
    model = bench_runtime._load(lenet)
    groups, new_stats = bench_runtime._statistics(model)
    data = []
    for length in lengths:
        source = bench_runtime.open_data(lenet, lmdb_path, length)
        passes = [bench_runtime.relevance_pass(model, groups, new_stats, source, 64) for _ in range(args.repeats)]
        data.append({"images": length, "seconds": summary([s + setup for s, setup, _ in passes], "s")})
    length_fit = fit([d["images"] for d in data], [d["seconds"]["median"] for d in data])

    # Relevance pass on each model (a few batches at its own input size): seconds per image vs GMAC per image.
    per_model = []
    for entry in models:
        net = ensure_net(entry["net"], args.cache, smoke=args.smoke)
        big = net.input_shape[1] >= 200
        count, batch = (8, 8) if big else (256, 64)
        if args.smoke:
            count, batch = 16, 8
        lmdb = bench_runtime.data_for(net, Path(args.cache), count)
        model = bench_runtime._load(net)
        groups, new_stats = bench_runtime._statistics(model)
        source = bench_runtime.open_data(net, lmdb, count)
        passes = [bench_runtime.relevance_pass(model, groups, new_stats, source, batch) for _ in range(args.repeats)]
        per_model.append({"net": entry["net"], "images": count, "gmacs": entry["gmacs"],
                          "s_per_image": summary([s / count for s, _, _ in passes], "s"),
                          "setup_s": summary([setup for _, setup, _ in passes], "s")})
        del model
    model_fit = fit([m["gmacs"] for m in per_model], [m["s_per_image"]["median"] for m in per_model])
    return {"models": models, "surgery_fit_s_per_mb": surgery_fit, "lengths": data,
            "relevance_fit_s_per_image": length_fit, "relevance_by_model": per_model,
            "relevance_fit_s_per_gmac": model_fit}


def md_growth(result: dict) -> list[str]:
    lines = ["## Growth", "", "| model | caffemodel (MB) | params | GMAC/image | surgery (s) | peak RSS (MB) | "
             "relevance (ms/image) | relevance setup (s) |", "|---|---|---|---|---|---|---|---|"]
    by_model = {m["net"]: m for m in result["relevance_by_model"]}
    for m in result["models"]:
        r = by_model[m["net"]]
        per_image = {k: (v * 1000 if isinstance(v, float) else v) for k, v in r["s_per_image"].items() if k != "runs"}
        lines.append(f"| {m['net']} | {m['file_mb']:.2f} | {m['params'] / 1e6:.2f}M | {m['gmacs']:.3f} | "
                     f"{fmt(m['surgery_s'])} | {fmt(m['peak_rss_mb'], 0)} | {fmt(per_image, 3)} | {fmt(r['setup_s'])} |")
    s, l, g = result["surgery_fit_s_per_mb"], result["relevance_fit_s_per_image"], result["relevance_fit_s_per_gmac"]
    lines += ["", "| relevance pass, LeNet (images) | seconds, incl. setup |", "|---|---|"]
    lines += [f"| {d['images']} | {fmt(d['seconds'])} |" for d in result["lengths"]]
    lines += ["", "| fit | slope | intercept | R² |", "|---|---|---|---|",
              f"| surgery time vs caffemodel size | {s['slope'] * 1000:.2f} ms/MB | {s['intercept']:.3f} s "
              f"| {s['r2']:.4f} |",
              f"| relevance time vs images (LeNet) | {l['slope'] * 1e6:.1f} µs/image | {l['intercept']:.3f} s "
              f"| {l['r2']:.4f} |",
              f"| relevance time per image vs GMAC/image | {g['slope']:.3f} s/GMAC | {g['intercept'] * 1000:.2f} ms "
              f"| {g['r2']:.4f} |",
              ""]
    return lines


# ------------------------------------------------------------------------------ runtime

def bench_backends_run(args, work: Path) -> dict:
    rounds, seconds = (2, 0.02) if args.smoke else (max(args.repeats, 5), 0.3)
    models = bench_backends.run(1, rounds, seconds, cache=args.cache, smoke=args.smoke)
    return {"models": models, "targets": {k: v for m in models for k, v in m.get("targets", {}).items()}}


def md_backends(result: dict) -> list[str]:
    return (["## Backends: OpenCV dnn and onnxruntime at batch 1 (ms/image), and what `--backend auto` chooses", ""]
            + bench_backends.markdown(result["models"])
            + ["", "Each figure: median (min–max) over interleaved rounds; chosen / fastest compares the medians.", ""])


# ---------------------------------------------------------------------------------- gpu

def torch_backend():
    """``caffe_surgery.train.TorchNet`` when the torch backend is installed, else None and why."""
    try:
        from caffe_surgery.train import TorchNet
    except Exception as exc:  # the package, torch or the module may be missing
        return None, f"{type(exc).__name__}: {exc}"
    return TorchNet, None


def bench_gpu(args, work: Path) -> dict:
    """HOOK: the relevance pass through a torch forward (``--backend torch``)."""
    if args.backend != "torch":
        return {"skipped": f"--only gpu needs --backend torch (got {args.backend})"}
    TorchNet, why = torch_backend()
    if TorchNet is None:
        print(f"gpu: the torch backend is unavailable ({why}); skipped", file=sys.stderr)
        return {"skipped": f"torch backend unavailable: {why}"}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for name, (count, batch) in (bench_runtime.SMOKE_PRESETS if args.smoke else
                                 {"lenet": (10000, 64), "vgg16": (256 if device == "cuda" else 32, 8)}).items():
        net = ensure_net(name, args.cache, smoke=args.smoke)
        lmdb = bench_runtime.data_for(net, Path(args.cache), count)
        model = bench_runtime._load(net)
        groups, new_stats = bench_runtime._statistics(model)
        source = bench_runtime.open_data(net, lmdb, count)
        memory = bench_runtime.decoded_batches(source, batch)
        torch_net = TorchNet(model.net, model.shapes, device=device).eval()
        input_name = next(l for l in model.net.layers if not l.bottoms).tops[0].name
        taps = list(new_stats().taps)

        def forward(images):
            with torch.no_grad():
                return torch_net({input_name: torch.from_numpy(images).to(device)})

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        def plain():
            for images in memory:
                forward(images)
            sync()

        def relevance():
            running = new_stats()
            for images, _ in source.iter_batches(batch):
                values = forward(images)
                running.update({key: values[key].cpu().numpy() for key in taps}, groups)
            return running

        values = forward(memory[0])
        from caffe_surgery.runtime import Runtime

        reference = Runtime(model.net, model.shapes, taps=[new_stats().taps[k] for k in taps], outputs=(),
                            device="cpu").run(memory[0])
        agreement = max(float(np.abs(values[k].cpu().numpy() - reference[k]).max() / max(1.0, np.abs(reference[k]).max()))
                        for k in taps)
        images = sum(len(b) for b in memory)
        results.append({"net": name, "device": device, "batch": batch, "images": images,
                        "taps max relative difference vs onnxruntime": agreement,
                        "torch img/s": summary(bench_runtime._images_per_second(plain, images, args.repeats), "img/s"),
                        "relevance img/s": summary(bench_runtime._images_per_second(relevance, images, args.repeats),
                                                   "img/s")})
    return {"backend": "torch", "nets": results}


def md_gpu(result: dict) -> list[str]:
    if "skipped" in result:
        return ["## GPU (torch backend)", "", f"skipped: {result['skipped']}", ""]
    lines = ["## GPU hook: relevance pass through caffe_surgery.train.TorchNet", "",
             "| net | device | batch | images | torch forward (img/s) | relevance (img/s) | taps vs onnxruntime |",
             "|---|---|---|---|---|---|---|"]
    for r in result["nets"]:
        lines.append(f"| {r['net']} | {r['device']} | {r['batch']} | {r['images']} | {fmt(r['torch img/s'], 1)} | "
                     f"{fmt(r['relevance img/s'], 1)} | {r['taps max relative difference vs onnxruntime']:.1e} |")
    return lines + [""]


# --------------------------------------------------------------------------------- main

BENCHES = {"surgery": (bench_surgery, md_surgery), "stats": (bench_stats, md_stats),
           "latency": (bench_latency, md_latency), "growth": (bench_growth, md_growth), "gpu": (bench_gpu, md_gpu),
           "runtime": (bench_backends_run, md_backends),
           "cluster": (lambda args, work: bench_cluster(args, summary), lambda result: md_cluster(result, fmt))}


def machine() -> dict:
    import cv2
    import onnxruntime
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
            "protobuf": f"{protobuf_version} ({api_implementation.Type()})", "load_average_start": os.getloadavg()}


def markdown(results: dict) -> str:
    meta = results["machine"]
    lines = ["# caffe-surgery benchmarks", "",
             f"{meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}, numpy {meta['numpy']}, "
             f"onnxruntime {meta['onnxruntime']}, OpenCV {meta['opencv']}, protobuf {meta['protobuf']}; "
             f"load average at start {meta['load_average_start'][0]:.2f}, at end {meta['load_average_end'][0]:.2f}; "
             f"{results['repeats']} runs per figure: median (min–max){'; SMOKE sizes' if results['smoke'] else ''}.", ""]
    for name in SUBS:
        if name in results:
            lines += BENCHES[name][1](results[name])
    targets = [(f"{name}: {target}", met) for name in SUBS if name in results
               for target, met in _targets(results[name]).items()]
    if targets:
        lines += ["## Targets", "", "| target | met |", "|---|---|"]
        lines += [f"| {target} | {'yes' if met else '**no**'} |" for target, met in targets]
    return "\n".join(lines) + "\n"


def _targets(result: dict) -> dict:
    found = dict(result.get("targets", {}))
    for net in result.get("nets", []):
        found.update({f"{net['net']}: {k}": v for k, v in net.get("targets", {}).items()})
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(CHILDREN[argv[1]](*argv[2:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--only", default=DEFAULT_ONLY, help=f"comma-separated among {', '.join(SUBS)} "
                                                             f"(default {DEFAULT_ONLY})")
    parser.add_argument("--smoke", action="store_true", help="tiny nets and data: the whole run takes seconds")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="folder for generated nets and LMDBs")
    parser.add_argument("--repeats", type=int, help="runs per figure (default 3, smoke 2)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="torch",
                        help="what the gpu hook runs the relevance pass with (default torch)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SUBS))
    if unknown:
        parser.error(f"unknown sub-benchmarks {', '.join(unknown)} (choose among {', '.join(SUBS)})")
    args.repeats = args.repeats or (2 if args.smoke else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "repeats": args.repeats, "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="caffe-surgery-bench.") as work:
        for name in SUBS:
            if name not in only:
                continue
            started = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            results[name] = BENCHES[name][0](args, Path(work))
            results[name]["wall_s"] = time.perf_counter() - started
            print(f"== {name}: {results[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
