"""``bench.py --only cluster``: the relevance pass through ``cluster.map_shards`` on a local Ray instance
with 1 and 2 worker processes (one CPU, one onnxruntime thread, one shard each), next to the same pass
in this process, and the scaling ratio 2 workers / 1 worker.

Each figure times a whole run after a warm-up run (workers started, the model in the object store):
the model is sent once per run, every task opens its own shard of the LMDB.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import bench_runtime
from bench_nets import ensure_net

WORKERS = (1, 2)
PRESETS = {"lenet": (20000, 64)}  # net: (images, batch)
SMOKE_PRESETS = {"lenet": (512, 64)}


def _pass(net, lmdb_path: Path, images: int, batch: int):
    """A function running the relevance pass over the data with a given engine and shard count."""
    from caffe_surgery.cluster import map_shards
    from caffe_surgery.dataflow import DataRequest
    from caffe_surgery.groups import build_groups
    from caffe_surgery.model import load_model
    from caffe_surgery.pruning import StatisticsTask

    model = load_model(net.prototxt, net.caffemodel)
    groups = build_groups(model.net, model.shapes)
    task = StatisticsTask(bench_runtime.CRITERION, tuple(g.id for g in groups.prunable()), {"threads": 1})
    data = DataRequest(f"lmdb:{lmdb_path}", bench_runtime.transform_for(net), images, batch_size=batch)

    def run(engine: str, shards: int) -> dict:
        return map_shards(task, model, data, shards, engine=engine, desc="cluster bench")

    return run


def _images_per_second(run, images: int, repeats: int) -> list[float]:
    run()  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        rates.append(images / (time.perf_counter() - started))
        assert int(result["samples"]) == images
    return rates


def bench_cluster(args, summary) -> dict:
    """images/s of the relevance pass: this process, Ray with 1 and with 2 worker processes."""
    try:
        import ray
    except ImportError:
        return {"skipped": "Ray is not installed (pip install 'caffe-surgery[cluster]')"}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = []
    for name, (images, batch) in (SMOKE_PRESETS if args.smoke else PRESETS).items():
        net = ensure_net(name, args.cache, smoke=args.smoke)
        run = _pass(net, bench_runtime.data_for(net, Path(args.cache), images), images, batch)
        figures = {"net": name, "images": images, "batch": batch,
                   "local": summary(_images_per_second(lambda: run("local", 1), images, args.repeats), "img/s")}
        for workers in WORKERS:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING",
                     object_store_memory=100_000_000)
            try:
                figures[f"ray {workers}"] = summary(
                    _images_per_second(lambda: run("ray", workers), images, args.repeats), "img/s")
            finally:
                ray.shutdown()
        figures["scaling"] = figures["ray 2"]["median"] / figures["ray 1"]["median"]
        results.append(figures)
    return {"nets": results, "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def md_cluster(result: dict, fmt) -> list[str]:
    if "skipped" in result:
        return ["## Cluster (Ray)", "", f"skipped: {result['skipped']}", ""]
    lines = ["## Cluster: the relevance pass on a local Ray instance (images/s)", "",
             f"{result['cpus']} CPUs, load average after the runs {result['load_average'][0]:.2f}; one shard, "
             "one CPU and one onnxruntime thread per worker process.", "",
             "| net | images | batch | this process | Ray, 1 worker | Ray, 2 workers | 2 workers / 1 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["nets"]:
        lines.append(f"| {r['net']} | {r['images']} | {r['batch']} | {fmt(r['local'], 1)} | {fmt(r['ray 1'], 1)} | "
                     f"{fmt(r['ray 2'], 1)} | {r['scaling']:.2f} |")
    return lines + [""]
