"""Images/s of plain onnxruntime, of the relevance pass (taps + streaming statistics + LMDB decode) and of
OpenCV dnn, on the same model and batch size.

    python scripts/bench_runtime.py                       # LeNet (batch 64) and VGG-16 (batch 8, 224x224)
    python scripts/bench_runtime.py --nets lenet --images 20000 --repeats 5

Figures per net, each the median (min-max) of ``--repeats`` passes over the
same images, after one warm-up batch; the passes are interleaved (each round
runs every figure once), so a drift of the machine hits all figures alike:

* ``ort``: ``Runtime(net, shapes)`` on batches already decoded in memory (the ceiling);
* ``ort+taps``: the same session with the statistics' taps as its only outputs;
* ``ort+taps+stats``: per-channel summaries computed in the graph, plus ``Statistics.update`` per batch
  (still in-memory batches);
* ``relevance``: what ``caffe-surgery relevance`` runs: ``pruning.gather`` over
  ``dataflow.batches`` of an LMDB source (Datum decode + transform on the
  prefetch thread), timed from the first batch requested to the end (the
  session's creation is reported apart, as ``setup``);
* ``opencv``: ``cv2.dnn.readNetFromCaffe`` + ``forward`` on the in-memory batches.

Target: relevance >= 0.9x ort. LeNet reads an LMDB that ``convert_data`` builds
from Fashion-MNIST; VGG-16 (real layer shapes, generated weights) reads an
LMDB of Fashion-MNIST images resized to 224x224 and replicated to 3 channels.
Both are built once in the cache folder.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics as stats_module
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_nets import DEFAULT_CACHE, BenchNet, ensure_net  # noqa: E402

from caffe_surgery import caffe_pb2  # noqa: E402

FASHION = Path(os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
TRAIN_IMAGES = FASHION / "train-images-idx3-ubyte.gz"
TRAIN_LABELS = FASHION / "train-labels-idx1-ubyte.gz"
CRITERION = "apoz"


# ----------------------------------------------------------------------------------- data

def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_lmdb(cache: Path, count: int) -> Path:
    """An LMDB of the first ``count`` Fashion-MNIST training images, written by ``convert_data``."""
    from caffe_surgery.data import convert_data

    path = Path(cache) / "data" / f"fashion_{count}_lmdb"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        convert_data(f"idx:{TRAIN_IMAGES}:{TRAIN_LABELS}", str(path), limit=count)
    return path


def image_lmdb(cache: Path, count: int, size: int, channels: int = 3) -> Path:
    """An LMDB of ``count`` Fashion-MNIST images resized to size x size and replicated to ``channels``.

    The images go through an ``.npz`` and ``convert_data("npy:...")``, so the records are
    the plain uint8 Datums Caffe's own tools write.
    """
    import cv2

    from caffe_surgery.data import convert_data

    path = Path(cache) / "data" / f"fashion_{size}x{size}x{channels}_{count}_lmdb"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    images, labels = _read_idx(TRAIN_IMAGES)[:count], _read_idx(TRAIN_LABELS)[:count]
    resized = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) for image in images])
    array = np.ascontiguousarray(np.repeat(resized[:, np.newaxis], channels, axis=1))
    staging = path.parent / f".{path.name}.npz"
    np.savez(staging, data=array, labels=labels.astype(np.int64))
    try:
        convert_data(f"npy:{staging}", str(path))
    finally:
        staging.unlink(missing_ok=True)
    return path


def transform_for(net: BenchNet) -> caffe_pb2.TransformationParameter:
    """LeNet: pixels / 256 (as Caffe's MNIST examples); the colour nets: BGR mean subtraction."""
    transform = caffe_pb2.TransformationParameter()
    if net.input_shape[0] == 1:
        transform.scale = 0.00390625
    else:
        transform.mean_value.extend([104.0, 117.0, 123.0])
    return transform


def data_for(net: BenchNet, cache: Path, count: int) -> Path:
    """The LMDB a benchmark net reads: Fashion-MNIST as is for 1x28x28, resized and replicated otherwise."""
    channels, height, _ = net.input_shape
    if (channels, height) == (1, 28):
        return fashion_lmdb(cache, count)
    return image_lmdb(cache, count, height, channels)


_OPEN: dict = {}


def open_data(net: BenchNet, lmdb_path: Path, count: int):
    """The first ``count`` samples of the LMDB, transformed for the net (an LMDB opens once per process)."""
    from caffe_surgery.data import parse_data_spec

    key = (str(Path(lmdb_path).resolve()), transform_for(net).SerializeToString())
    if key not in _OPEN:
        _OPEN[key] = parse_data_spec(f"lmdb:{lmdb_path}", transform_for(net))
    return _OPEN[key].head(count)


def decoded_batches(source, batch: int) -> list[np.ndarray]:
    """Every batch of the source, decoded and transformed once, kept in memory."""
    return [images for images, _ in source.iter_batches(batch)]


# ------------------------------------------------------------------------------- figures

def summary(values: list[float]) -> dict:
    """Median with min and max (and the runs) of one figure."""
    return {"median": float(stats_module.median(values)), "min": float(min(values)), "max": float(max(values)),
            "runs": [float(v) for v in values]}


def _load(net: BenchNet):
    from caffe_surgery.model import load_model

    return load_model(net.prototxt, net.caffemodel)  # the session's batch axis is dynamic


def _statistics(model):
    from caffe_surgery.criteria import get_criterion
    from caffe_surgery.groups import build_groups
    from caffe_surgery.pruning import chosen_groups, statistics_plan

    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, None)
    return groups, (lambda: statistics_plan(model, groups, group_list, get_criterion(CRITERION)))


def _images_per_second(run, images: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - started))
    return rates


class _Clocked:
    """Wrap a batch iterable: the clock starts when the first batch is asked for."""

    def __init__(self, batches):
        self.batches, self.started = batches, None

    def __iter__(self):
        self.started = time.perf_counter()
        yield from self.batches


def relevance_pass(model, groups, new_stats, source, batch: int, threads: int | None = None):
    """One ``caffe-surgery relevance`` pass (``pruning.gather`` over ``dataflow.batches``): (seconds, setup s, samples).

    ``seconds`` runs from the first batch requested to the end; ``setup`` is the time
    before it (exporting the net and creating the session with the taps).
    """
    from caffe_surgery.dataflow import batches
    from caffe_surgery.pruning import gather

    stats = new_stats()
    clocked = _Clocked(batches(source, batch, "relevance"))
    started = time.perf_counter()
    gather(model, stats, groups, clocked, {"device": "cpu", "threads": threads})
    ended = time.perf_counter()
    return ended - clocked.started, clocked.started - started, stats.samples


def measure_net(net: BenchNet, lmdb_path: Path, images: int, batch: int, repeats: int,
                threads: int | None = None, opencv: bool = True) -> dict:
    """Every figure of one net: images/s per backend and the relevance/ort ratio."""
    import cv2

    from caffe_surgery.runtime import Runtime

    model = _load(net)
    groups, new_stats = _statistics(model)
    source = open_data(net, lmdb_path, images)
    memory = decoded_batches(source, batch)
    count = sum(len(b) for b in memory)
    warm = memory[0]
    options = {"device": "cpu", "threads": threads}

    plain = Runtime(model.net, model.shapes, **options)
    plain.run(warm)
    planned = new_stats()
    tapped = Runtime(model.net, model.shapes, taps=planned.full_taps, summaries=planned.summaries,
                     summary_kinds=planned.kinds, outputs=(), **options)
    tapped.run(warm)

    def run_plain():
        for images_batch in memory:
            plain.run(images_batch)

    def run_taps():
        for images_batch in memory:
            tapped.run(images_batch)

    def run_taps_stats():
        running = new_stats()
        for images_batch in memory:
            running.update(tapped.run(images_batch), groups, len(images_batch))

    runners = {"ort": run_plain, "ort+taps": run_taps, "ort+taps+stats": run_taps_stats}
    if opencv:
        cv_net = cv2.dnn.readNetFromCaffe(str(net.prototxt), str(net.caffemodel))
        cv_net.setInput(warm)
        cv_net.forward()

        def run_opencv():
            for images_batch in memory:
                cv_net.setInput(images_batch)
                cv_net.forward()

        runners["opencv"] = run_opencv
    # Interleaved: every repeat runs each figure once, so drifts of the machine hit them alike.
    rates = {name: [] for name in [*runners, "relevance"]}
    setups = []
    for _ in range(repeats):
        for name, runner in runners.items():
            rates[name] += _images_per_second(runner, count, 1)
        seconds, setup, samples = relevance_pass(model, groups, new_stats, source, batch, threads)
        if samples != count:
            raise RuntimeError(f"relevance saw {samples} samples, expected {count}")
        rates["relevance"].append(count / seconds)
        setups.append(setup)
    figures = {name: summary(values) for name, values in rates.items()}
    figures["relevance setup s"] = summary(setups)
    ratio = [r / p for r, p in zip(figures["relevance"]["runs"], figures["ort"]["runs"])]
    return {"net": net.name, "batch": batch, "images": count, "repeats": repeats, "figures": figures,
            "relevance/ort": summary(ratio)}  # per repeat: relevance rate / ort rate of the same round


def format_figure(figure: dict, digits: int = 1) -> str:
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def format_results(results: list[dict]) -> str:
    """A Markdown table: one row per net, images/s per backend."""
    columns = ["ort", "ort+taps", "ort+taps+stats", "relevance", "opencv"]
    lines = ["| net | batch | images | " + " | ".join(f"{c} img/s" for c in columns) + " | relevance/ort |",
             "|---|---|---|" + "---|" * len(columns) + "---|"]
    for result in results:
        cells = [format_figure(result["figures"][c]) if c in result["figures"] else "-" for c in columns]
        ratio = result["figures"]["relevance"]["median"] / result["figures"]["ort"]["median"]
        lines.append(f"| {result['net']} | {result['batch']} | {result['images']} | " + " | ".join(cells)
                     + f" | {ratio:.2f} |")
    return "\n".join(lines)


PRESETS = {  # net: (images, batch)
    "lenet": (10000, 64),
    "vgg16": (32, 8),
}
SMOKE_PRESETS = {"lenet": (512, 64), "vgg16": (16, 8)}


def run(nets: list[str], cache: Path, repeats: int, smoke: bool = False, images: int | None = None,
        threads: int | None = None, opencv: bool = True) -> list[dict]:
    results = []
    for name in nets:
        count, batch = (SMOKE_PRESETS if smoke else PRESETS)[name]
        count = images or count
        net = ensure_net(name, cache, smoke=smoke)
        lmdb_path = data_for(net, cache, count)
        results.append(measure_net(net, lmdb_path, count, batch, repeats, threads, opencv))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet,vgg16", help="comma-separated: lenet, vgg16")
    parser.add_argument("--images", type=int, help="images per pass (default: 10000 for LeNet, 32 for VGG-16)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per figure (median, min-max)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where generated nets and LMDBs are kept")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = run(args.nets.split(","), Path(args.cache), args.repeats, args.smoke, args.images, args.threads)
    print(format_results(results))
    for result in results:
        setup = result["figures"]["relevance setup s"]["median"]
        ratio = result["figures"]["relevance"]["median"] / result["figures"]["ort"]["median"]
        print(f"{result['net']}: relevance/ort {ratio:.2f} "
              f"(target >= 0.9); relevance setup (export + session) {setup:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
