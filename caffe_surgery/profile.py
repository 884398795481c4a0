"""Time per layer, measured by the backend that runs the net, next to the layer's MACs.

onnxruntime: its profiler's trace (``SessionOptions.enable_profiling``) has
one event per node run; the exporter names nodes ``LAYER/Op#``, and where the
graph optimizer rewrites nodes it names them after their output tensor (the
blob, or ``blob@layer`` for an in-place version), so every event maps back to a
Caffe layer, several nodes of one layer summed. OpenCV dnn: ``getPerfProfile``
gives ticks per layer id of the last forward pass, layer ids named by
``getLayerNames``. Layers that get no time of their own (an Input, a ReLU the
backend fused into the convolution before it) are reported as fused; time of
nodes the backend added (layout reorders) is reported as ``other``.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import CaffeSurgeryError
from .graph import Net
from .report import format_table, net_batch, per_image
from .shapes import NetShapes

BACKENDS = ("onnxruntime", "opencv")
SOURCE_TYPES = ("Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData")
_ORT_SUFFIX = re.compile(r"(_token_\d+)?(_nchwc)?(_kernel_time)$")


@dataclass
class LayerTime:
    """One Caffe layer: its MACs per image and the mean milliseconds per run (None: no time of its own, i.e.
    an input, or fused into another layer's kernel)."""

    name: str
    type: str
    macs: int
    ms: float | None


@dataclass
class Profile:
    """Per-layer times of one backend over ``runs`` timed runs at ``batch``, with the wall time per run of
    those runs (the layers' times are part of it)."""

    backend: str
    batch: int
    runs: int
    layers: list[LayerTime]
    other_ms: float
    wall_ms: float

    @property
    def total_ms(self) -> float:
        """The layers' times plus the backend's own nodes, per run."""
        return sum(l.ms or 0.0 for l in self.layers) + self.other_ms

    def as_dict(self) -> dict:
        return asdict(self) | {"total_ms": self.total_ms}


def random_inputs(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded uniform float32 inputs of the given shapes, by name."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(shape, dtype=np.float32) for name, shape in shapes.items()}


def _session_inputs(session) -> dict[str, np.ndarray]:
    return random_inputs({i.name: tuple(i.shape) for i in session.get_inputs()})


def _layer_of_node(node: str, layers: list[str], producers: dict[str, str]) -> str | None:
    """The Caffe layer an onnxruntime node (event name) belongs to, or None for the runtime's own nodes."""
    base = _ORT_SUFFIX.sub("", node)
    owner = max((name for name in layers if base.startswith(f"{name}/")), key=len, default=None)
    return owner or producers.get(base)


def _doer(net: Net, owner: str, op: str, ops: dict[str, set[str]]) -> str:
    """The layer whose own op a fused node runs: ``owner`` (named after the fused node's output, e.g. a ReLU)
    or the nearest layer before it that exported that op (the convolution the ReLU was fused into)."""
    op = op.removeprefix("Fused")
    frontier = [owner]
    for _ in range(4):
        for name in frontier:
            if op in ops.get(name, ()):
                return name
        frontier = [bottom.producer for name in frontier for bottom in net.layer(name).bottoms]
    return owner


def _session(model, threads: int | None, profile_prefix: str | None = None):
    """A CPU onnxruntime session of an exported net (profiling into ``profile_prefix`` when given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _wall_ms(session, feeds: dict[str, np.ndarray], runs: int) -> float:
    """Mean wall milliseconds of ``runs`` session runs after one warm-up run."""
    session.run(None, feeds)
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    return 1000.0 * (time.perf_counter() - started) / runs


def latency_ms(net: Net, shapes: NetShapes, runs: int = 20, threads: int | None = None) -> float:
    """Mean wall milliseconds of one onnxruntime run (CPU) on seeded random inputs, after a warm-up run."""
    from .onnx_export import export_onnx

    session = _session(export_onnx(net, shapes, check=False), threads)
    return _wall_ms(session, _session_inputs(session), runs)


def profile_onnxruntime(net: Net, shapes: NetShapes, runs: int = 10, threads: int | None = None) -> Profile:
    """Per-layer times from onnxruntime's profiler (CPU), mean over ``runs`` after one warm-up run."""
    from .onnx_export import export_onnx, tensor_names

    model = export_onnx(net, shapes, check=False)
    with tempfile.TemporaryDirectory() as folder:
        session = _session(model, threads, os.path.join(folder, "profile"))
        wall_ms = _wall_ms(session, _session_inputs(session), runs)
        with open(session.end_profiling(), encoding="utf-8") as trace:
            events = json.load(trace)
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    timed_from = run_starts[1] if len(run_starts) > 1 else 0  # the first run is the warm-up
    producers = {name: version.producer for version, name in tensor_names(net).items()}
    names = [layer.name for layer in net.layers]
    ops: dict[str, set[str]] = {}
    for node in model.graph.node:
        owner = _layer_of_node(node.name, names, producers)
        if owner is not None:
            ops.setdefault(owner, set()).add(node.op_type)
    spent: dict[str | None, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            owner = _layer_of_node(event["name"], names, producers)
            if owner is not None:
                owner = _doer(net, owner, event.get("args", {}).get("op_name", ""), ops)
            spent[owner] = spent.get(owner, 0.0) + event["dur"] / 1000.0 / runs
    return _profile("onnxruntime", net, shapes, runs, spent, wall_ms)


def profile_opencv(net: Net, shapes: NetShapes, prototxt: str | os.PathLike, weights: str | os.PathLike,
                   runs: int = 10) -> Profile:
    """Per-layer times from OpenCV dnn's ``getPerfProfile``, mean over ``runs`` after one warm-up pass."""
    import cv2

    feeds = random_inputs({top.name: tuple(shapes.blob(top)) for layer in net.layers if not layer.bottoms
                           for top in layer.tops})
    try:
        reader = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        for name, value in feeds.items():
            reader.setInput(value, name if len(feeds) > 1 else "")
        reader.forward()
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1]
        raise CaffeSurgeryError(f"OpenCV dnn cannot run the net: {message}", file=str(prototxt)) from None
    ids = {name: reader.getLayerId(name) for name in reader.getLayerNames()}
    caffe_layers = {layer.name for layer in net.layers}
    spent: dict[str | None, float] = {}
    started = time.perf_counter()
    for _ in range(runs):
        reader.forward()
        _, ticks = reader.getPerfProfile()
        ticks = np.asarray(ticks).ravel()
        for name, layer_id in ids.items():
            owner = name if name in caffe_layers else None
            spent[owner] = spent.get(owner, 0.0) + 1000.0 * ticks[layer_id - 1] / cv2.getTickFrequency() / runs
    wall_ms = 1000.0 * (time.perf_counter() - started) / runs
    return _profile("opencv", net, shapes, runs, spent, wall_ms)


def _profile(backend: str, net: Net, shapes: NetShapes, runs: int, spent: dict[str | None, float],
             wall_ms: float) -> Profile:
    batch = net_batch(net, shapes)
    layers = [LayerTime(layer.name, layer.type, per_image(shapes.layer(layer.name).macs, batch),
                        spent[layer.name] if spent.get(layer.name) else None) for layer in net.layers]
    return Profile(backend, batch, runs, layers, spent.get(None, 0.0), wall_ms)


def profile_net(net: Net, shapes: NetShapes, backend: str, runs: int, prototxt=None, weights=None,
                threads: int | None = None) -> Profile:
    """Profile with onnxruntime or OpenCV (which reads the prototxt/caffemodel pair itself)."""
    if backend not in BACKENDS:
        raise CaffeSurgeryError(f"unknown backend '{backend}' (choose {' or '.join(BACKENDS)})")
    if runs < 1:
        raise CaffeSurgeryError("--runs must be at least 1")
    if backend == "opencv":
        return profile_opencv(net, shapes, prototxt, weights, runs)
    return profile_onnxruntime(net, shapes, runs, threads)


def format_profile(profile: Profile) -> str:
    """The per-layer table: MACs per image, ms per run, share of the total; then the totals."""
    total = profile.total_ms or 1.0
    rows = [(l.name, l.type, f"{l.macs:,}", "-" if l.type in SOURCE_TYPES else "fused" if l.ms is None else f"{l.ms:.3f}",
             "" if l.ms is None else f"{100 * l.ms / total:.1f}%") for l in profile.layers]
    if profile.other_ms:
        rows.append(("(other)", "runtime", "", f"{profile.other_ms:.3f}", f"{100 * profile.other_ms / total:.1f}%"))
    table = format_table(("layer", "type", "MACs/image", "ms/run", "share"), rows, right=(2, 3, 4))
    return (f"{table}\n\n{profile.backend}, batch {profile.batch}, mean of {profile.runs} runs: layers "
            f"{profile.total_ms:.3f} ms, wall {profile.wall_ms:.3f} ms per run")
