"""ms/image of OpenCV dnn and of caffe-surgery's onnxruntime path on every real model with weights and the
benchmark nets, which backend ``--backend auto`` chooses, and whether that choice holds up.

    python scripts/bench_backends.py                       # batch 1, 5 interleaved rounds
    python scripts/bench_backends.py --batch 8 --nets lenet,vgg16 --rounds 7

Per model and round, each backend runs the same random batch until ~``--seconds`` have passed (at least
twice); the rounds interleave the backends, so a drift of this shared machine hits them alike. Figures:
median ms/image over the rounds (min-max), and per round the ratio of the chosen backend to the fastest.

* ``opencv``: ``cv2.dnn.readNetFromCaffe`` on the files, ``forward`` of the blobs onnxruntime returns;
* ``onnxruntime``: ``runtime.Runtime`` (the exported graph, the tool's session options);
* ``chosen``: the runner ``backends.open_runtime(backend="auto")`` gives, after its probe on that batch
  (onnxruntime, onnxruntime on one thread or OpenCV, each as the tool runs it).

Proof printed per model: the chosen path's median is within 1.1x of the fastest median of the run, and
its outputs match OpenCV's to 1e-4 * max(1, |OpenCV|).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics as stats_module
import sys
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench_nets import DEFAULT_CACHE, NETS, ensure_net  # noqa: E402

REAL_MODELS = SCRIPTS.parent.parent / "shared" / "real-models"
TARGET_RATIO = 1.1
TOLERANCE = 1e-4


def real_models(root: Path = REAL_MODELS) -> list[tuple[str, Path, Path]]:
    """(name, deploy prototxt, caffemodel) of every model the real-models README pairs with weights."""
    readme = root / "README.md"
    if not readme.exists():
        return []
    pairs = []
    for line in readme.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].endswith((".prototxt", ")")) or ".caffemodel" not in cells[2]:
            continue
        prototxt, weights = (re.sub(r"\s*\(.*\)$", "", cell) for cell in cells[1:3])
        if (root / cells[0] / weights).exists():
            pairs.append((cells[0], root / cells[0] / prototxt, root / cells[0] / weights))
    return pairs


def _ms_per_image(call, batch: int, seconds: float) -> float:
    """Run ``call`` until ``seconds`` have passed (at least twice); the mean ms per image."""
    runs, started = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - started < seconds:
        call()
        runs += 1
    return (time.perf_counter() - started) * 1000 / (runs * batch)


def _summary(values: list[float]) -> dict:
    return {"median": float(stats_module.median(values)), "min": float(min(values)), "max": float(max(values)),
            "runs": [float(v) for v in values]}


def measure_model(name: str, prototxt: Path, weights: Path, batch: int, rounds: int, seconds: float) -> dict:
    """Every figure of one model (or the reason it was skipped)."""
    import cv2

    from caffe_surgery.backends import open_runtime
    from caffe_surgery.errors import CaffeSurgeryError
    from caffe_surgery.model import load_model
    from caffe_surgery.runtime import Runtime

    try:
        model = load_model(prototxt, weights)
        detection = [layer for layer in model.net.layers if layer.type == "DetectionOutput"]
        outputs = detection[0].bottoms if detection else None  # onnxruntime stops before DetectionOutput
        ours = Runtime(model.net, model.shapes, outputs=outputs, device="cpu")
    except CaffeSurgeryError as exc:
        return {"model": name, "skipped": exc.one_line()}
    (input_name, shape), = ours.inputs.items()
    x = np.random.default_rng(0).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)
    versions = ours.outputs
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    layers = [v.producer for v in versions]

    def opencv():
        cv_net.setInput(x, input_name)
        return cv_net.forward(layers)

    try:
        opencv()
        cannot = None
    except cv2.error as exc:  # a fork type OpenCV lacks (e.g. Upsample): only the onnxruntime paths compete
        cannot = str(exc).strip().splitlines()[0]
    chosen = open_runtime(model.net, model.shapes, backend="auto", outputs=outputs, device="cpu")
    chosen.run(x)  # the probe
    runners = {"opencv": opencv, "onnxruntime": lambda: ours.run(x), "chosen": lambda: chosen.run(x)}
    if cannot:
        del runners["opencv"]
    for call in runners.values():
        call()
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, call in runners.items():
            times[key].append(_ms_per_image(call, batch, seconds))
    figures = {key: _summary(values) for key, values in times.items()}
    fastest = min(figures, key=lambda key: figures[key]["median"])
    ratio = figures["chosen"]["median"] / figures[fastest]["median"]
    per_round = [times["chosen"][i] / min(times[k][i] for k in times) for i in range(rounds)]
    targets = {f"{name}: chosen within {TARGET_RATIO}x of the fastest": ratio <= TARGET_RATIO}
    error = None
    if not cannot:
        results = chosen.run(x)
        references = dict(zip((v.key for v in versions), opencv()))
        error = max(float(np.abs(results[k] - references[k].reshape(results[k].shape)).max()
                          / max(1.0, float(np.abs(references[k]).max()))) for k in references)
        targets[f"{name}: chosen matches OpenCV to {TOLERANCE}"] = error <= TOLERANCE
    return {"model": name, "input": list(x.shape), "figures": figures, "chosen": chosen.backend,
            "probe_s": chosen.timings, "why": chosen.why, "fastest": fastest, "chosen/fastest": ratio,
            "chosen/fastest per round": _summary(per_round), "max error vs opencv": error,
            "opencv cannot run it": cannot, "targets": targets}


def run(batch: int = 1, rounds: int = 5, seconds: float = 0.3, nets=NETS, cache=DEFAULT_CACHE,
        smoke: bool = False) -> list[dict]:
    """The real models, then the benchmark nets."""
    models = real_models()
    for net in (ensure_net(name, cache, smoke=smoke) for name in nets):
        models.append((net.name, net.prototxt, net.caffemodel))
    results = []
    for name, prototxt, weights in models:
        print(f"   runtime: {name}", file=sys.stderr, flush=True)
        results.append(measure_model(name, prototxt, weights, batch, rounds, seconds))
    return results


def markdown(results: list[dict]) -> list[str]:
    """A table: one row per model."""
    lines = ["| model | input | OpenCV (ms/img) | onnxruntime (ms/img) | chosen | chosen (ms/img) "
             "| chosen / fastest (target <= 1.1) | max error vs OpenCV (target <= 1e-4) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | | |")
            continue
        cells = [f"{r['figures'][k]['median']:.3f} ({r['figures'][k]['min']:.3f}–{r['figures'][k]['max']:.3f})"
                 if k in r["figures"] else "cannot run it" for k in ("opencv", "onnxruntime", "chosen")]
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | " + " | ".join(cells[:2])
                     + f" | {r['chosen']} | {cells[2]} | **{r['chosen/fastest']:.2f}** | "
                     + (f"{r['max error vs opencv']:.1e} |" if r["max error vs opencv"] is not None else "– |"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median, min-max)")
    parser.add_argument("--seconds", type=float, default=0.3, help="time per backend and round")
    parser.add_argument("--nets", default=",".join(NETS), help="benchmark nets (comma-separated, '' for none)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    nets = [n for n in args.nets.split(",") if n]
    results = run(args.batch, args.rounds, args.seconds, nets, Path(args.cache))
    print("\n".join(markdown(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
