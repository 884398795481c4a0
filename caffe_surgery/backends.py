"""The backends a data pass can run a net on, behind ``runtime.Runner``: onnxruntime, OpenCV dnn, or the
faster of the two.

``open_runtime(net, shapes, backend=...)`` returns

* ``onnxruntime``: ``runtime.Runtime``, the exported graph with its taps and in-graph channel summaries;
* ``opencv``: ``OpenCVRuntime``, OpenCV's own Caffe importer running the deploy net from memory,
  returning any blob (``forward`` by the layer that wrote it), the channel summaries computed in numpy;
* ``auto``: ``AutoRuntime``, which runs the first batch on both (and, for a small net, on onnxruntime
  with one thread), keeps the candidates that agree with onnxruntime to ``TOLERANCE`` and the fastest
  of them for the rest of the pass. The choice is cached for the process, per net and batch shape, so
  later passes skip the probe.

Both give the same keys and shapes; their values agree to float rounding (OpenCV sums the summaries
in float64, onnxruntime in float32).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable

import numpy as np
from google.protobuf import text_format

from .deploy import deploy_net
from .errors import CaffeSurgeryError
from .export.summaries import KINDS, SUFFIX, summary_name
from .graph import BlobVersion, Net
from .onnx_export import BlobSpec, graph_outputs
from .runtime import Arrays, Batch, Runner, Runtime
from .save import caffemodel_bytes
from .statistics import channel_summary

BACKENDS = ("auto", "onnxruntime", "opencv")
TOLERANCE = 1e-4
"""OpenCV is used only where it matches onnxruntime to TOLERANCE * max(1, |value|) on the probe batch."""
COUNT_SLACK = 1e-3
SINGLE_THREAD = "onnxruntime-1thread"
SINGLE_THREAD_SECONDS = 0.05
"""A net whose first batch ran faster than this is also tried on one onnxruntime thread (no thread wake-ups)."""
PROBE_SECONDS = 0.6
PROBE_ROUNDS = 3
"""The probe runs the backends in turn on the first batch, PROBE_ROUNDS blocks each, PROBE_SECONDS in all."""
CLOSE = 1.15
EXTRA_PROBES = 2
"""While the two fastest are within CLOSE of each other, the probe runs again (at most EXTRA_PROBES times)."""

_CHOICES: dict[str, str] = {}


def open_runtime(net: Net, shapes, *, backend: str = "onnxruntime", **options) -> Runner:
    """A runner of ``net`` on ``backend`` (see the module docstring); ``options`` as for ``Runtime``."""
    if backend not in BACKENDS:
        raise CaffeSurgeryError(f"unknown backend '{backend}' (choose one of {', '.join(BACKENDS)})")
    if backend == "onnxruntime" or (backend == "auto" and options.get("batch_size")):
        return Runtime(net, shapes, **options)
    if backend == "opencv":
        return OpenCVRuntime(net, shapes, **options)
    return AutoRuntime(net, shapes, **options)


class OpenCVRuntime(Runner):
    """OpenCV dnn's Caffe importer running the net's deploy version, with the keys ``Runtime`` gives."""

    def __init__(self, net: Net, shapes, *, taps: Iterable[BlobSpec] = (), outputs: Iterable[BlobSpec] | None = None,
                 summaries: Iterable[BlobSpec] = (), summary_kinds: tuple[str, ...] = KINDS, device: str = "auto",
                 threads: int | None = None):
        """Arguments as for ``Runtime`` (no ``batch_size``: OpenCV takes any batch); CPU only."""
        import cv2

        if device == "cuda":
            raise CaffeSurgeryError("the opencv backend runs on the CPU; use --backend onnxruntime for CUDA")
        outputs = None if outputs is None else list(outputs)
        self.outputs = graph_outputs(net, list(taps), outputs)
        self.summaries = [s if isinstance(s, BlobVersion) else net.resolve(s) for s in summaries]
        self.summary_kinds = tuple(summary_kinds)
        wanted = list(dict.fromkeys(self.outputs + self.summaries))
        for version in wanted:
            if len(net.producer(version).tops) != 1 or not net.producer(version).bottoms:
                raise CaffeSurgeryError(f"the opencv backend cannot return blob '{version.key}' (written by a "
                                        "data layer or a layer with several tops)", file=net.source)
        self._layers = [version.producer for version in wanted]
        self._wanted = wanted
        # Per wanted blob, by position: inferred shape and values per sample; where each result comes from.
        # Nothing is hashed or multiplied per call: a 12x12 net runs in ~20 us, this work is part of it.
        self._sample_shapes = [(shape, math.prod(shape[1:])) for shape in (tuple(shapes.blob(v)) for v in wanted)]
        self._output_at = [(v.key, wanted.index(v)) for v in self.outputs]
        self._summary_at = [(summary_name(v.key), wanted.index(v)) for v in self.summaries]
        deployed = deploy_net(net, shapes)
        self.inputs = {top.name: tuple(shapes.blob(top)) for layer in deployed.layers if not layer.bottoms
                       for top in layer.tops}
        prototxt = text_format.MessageToString(deployed.to_proto()).encode()
        self._cv2_error = cv2.error
        try:
            self.net = cv2.dnn.readNetFromCaffe(np.frombuffer(prototxt, np.uint8),
                                                np.frombuffer(caffemodel_bytes(deployed), np.uint8))
        except cv2.error as exc:
            raise CaffeSurgeryError(f"OpenCV dnn cannot load the net: {_first_line(exc)}", file=net.source) from None
        if threads:
            cv2.setNumThreads(threads)

    @property
    def keys(self) -> list[str]:
        """Keys of the results of ``run``: the net's outputs, the taps, then the summaries."""
        return [v.key for v in self.outputs] + [summary_name(v.key) for v in self.summaries]

    @property
    def device(self) -> str:
        return "cpu"

    def run(self, inputs: Batch) -> Arrays:
        feeds = self._feeds(inputs)
        count = len(next(iter(feeds.values())))
        for name, array in feeds.items():
            self.net.setInput(array, name)
        try:
            values = self.net.forward(self._layers)
        except self._cv2_error as exc:
            raise CaffeSurgeryError(f"OpenCV dnn cannot run the net: {_first_line(exc)}") from None
        blobs = [_shaped(value, shape, size, count) for value, (shape, size) in zip(values, self._sample_shapes)]
        results = {key: blobs[index] for key, index in self._output_at}
        for key, index in self._summary_at:
            results[key] = channel_summary(blobs[index], self.summary_kinds)
        return results


def _shaped(value: np.ndarray, shape: tuple, size: int, count: int) -> np.ndarray:
    """OpenCV's blob in the inferred ``shape`` (``size`` values per sample), dim 0 the batch (or as inferred,
    e.g. PriorBox's 1)."""
    if value.size == count * size:
        return value.reshape((count,) + shape[1:])
    return value.reshape(shape) if value.size == size * shape[0] else value


class AutoRuntime(Runner):
    """The fastest of onnxruntime, onnxruntime on one thread (small nets) and OpenCV on the first batch,
    among those giving onnxruntime's results."""

    def __init__(self, net: Net, shapes, **options):
        self.onnxruntime = Runtime(net, shapes, **options)
        self.inputs = self.onnxruntime.inputs
        self.why = ""
        try:
            self.opencv = OpenCVRuntime(net, shapes, **options)
        except CaffeSurgeryError as exc:
            self.opencv, self.why = None, exc.one_line()
        self._net, self._shapes, self._options = net, shapes, options
        self._net_key = _fingerprint(net, shapes, self.onnxruntime.keys, options)
        self.chosen: Runner | None = None
        self.backend: str | None = None
        """The chosen backend's name: onnxruntime, onnxruntime-1thread or opencv (None before the first batch)."""
        self.timings: dict[str, float] = {}

    @property
    def keys(self) -> list[str]:
        return self.onnxruntime.keys

    @property
    def device(self) -> str:
        return self.onnxruntime.device

    def run(self, inputs: Batch) -> Arrays:
        if self.chosen is not None:
            return self.chosen.run(inputs)
        feeds = self._feeds(inputs)
        key = f"{self._net_key}:{sorted((k, v.shape) for k, v in feeds.items())}"
        if key in _CHOICES:
            self._choose(_CHOICES[key], {"onnxruntime": self.onnxruntime, "opencv": self.opencv})
            return self.chosen.run(feeds)
        reference = self._probe(feeds)
        _CHOICES[key] = self.backend
        return reference

    def _choose(self, name: str, candidates: dict) -> None:
        if name == SINGLE_THREAD and name not in candidates:
            candidates[name] = self._single_thread()
        self.backend = name if candidates.get(name) is not None else "onnxruntime"
        self.chosen = candidates[self.backend]

    def _single_thread(self) -> Runtime:
        return Runtime(self._net, self._shapes, **{**self._options, "threads": 1})

    def _probe(self, feeds: Arrays) -> Arrays:
        """Time the candidates on this batch; return onnxruntime's results."""
        started = time.perf_counter()
        reference = self.onnxruntime.run(feeds)
        first = time.perf_counter() - started
        candidates = {"onnxruntime": self.onnxruntime}
        if first < SINGLE_THREAD_SECONDS and not self._options.get("threads") and (os.cpu_count() or 1) > 1:
            candidates[SINGLE_THREAD] = self._single_thread()
        if self.opencv is not None:
            candidates["opencv"] = self.opencv
        kinds = tuple(self._options.get("summary_kinds", KINDS))
        for name in list(candidates)[1:]:
            try:  # OpenCV reads layers lazily: an unsupported one fails here
                disagreement = _disagreement(reference, candidates[name].run(feeds),
                                             kinds.index("zeros") if "zeros" in kinds else None)
            except CaffeSurgeryError as exc:
                disagreement = exc.one_line()
            if disagreement:
                self.why = f"{name} differs from onnxruntime: {disagreement}"
                del candidates[name]
        if len(candidates) > 1:
            self.timings = _timings(candidates, feeds, first)
        self._choose(min(self.timings, key=self.timings.get) if self.timings else "onnxruntime", candidates)
        return reference


def _timings(runners: dict, feeds: Arrays, first: float) -> dict[str, float]:
    """Seconds per run of each runner on ``feeds``: the median over rounds of each runner's mean over a block
    of runs, the runners taking turns block by block (a drift of the machine hits them alike, and one
    library's idle worker threads weigh on the other only at a block's start). PROBE_ROUNDS rounds in
    PROBE_SECONDS, and as many again while the two fastest are within CLOSE of each other (a close call
    on a short sample is often wrong); one round of one run each when the first run (``first`` seconds)
    already took PROBE_SECONDS."""
    rounds = 1 if first >= PROBE_SECONDS else PROBE_ROUNDS
    block = PROBE_SECONDS / (rounds * len(runners))
    times = {name: [] for name in runners}
    for _ in range(1 + EXTRA_PROBES):
        for _ in range(rounds):
            for name, runner in runners.items():
                runs, started = 0, time.perf_counter()
                while not runs or time.perf_counter() - started < block:
                    runner.run(feeds)
                    runs += 1
                times[name].append((time.perf_counter() - started) / runs)
        medians = sorted(float(np.median(values)) for values in times.values())
        if rounds == 1 or len(medians) < 2 or medians[1] > CLOSE * medians[0]:
            break
    return {name: float(np.median(values)) for name, values in times.items()}


def _disagreement(reference: Arrays, values: Arrays, zeros_row: int | None) -> str:
    """'' when every value matches its reference to TOLERANCE * max(1, |reference|), else the first mismatch.

    Counts of values <= 0 (row ``zeros_row`` of a summary) match within COUNT_SLACK of the largest count,
    at least 2: a value within float rounding of 0 may fall on either side.
    """
    for key, expected in reference.items():
        got = values.get(key)
        if got is None or got.shape != expected.shape:
            return f"'{key}' has shape {None if got is None else got.shape}, expected {expected.shape}"
        error = np.abs(got.astype(np.float64) - expected)
        allowed = np.full(expected.shape[:1], TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0))))
        if key.endswith(SUFFIX) and zeros_row is not None:
            allowed[zeros_row] = max(2.0, COUNT_SLACK * float(expected[zeros_row].max(initial=0.0)))
        excess = error.reshape(len(error), -1).max(axis=1, initial=0.0) - allowed if error.ndim else error - allowed
        if np.any(excess > 0):
            return f"'{key}' differs by {float(error.max()):.3g} (tolerance {float(allowed.min()):.3g})"
    return ""


def _fingerprint(net: Net, shapes, keys: list[str], options: dict) -> str:
    """Identifies a net's structure, its shapes and what is asked of it, for the per-process choice cache."""
    parts = [repr(keys), repr(sorted((k, repr(v)) for k, v in options.items()))]
    for layer in net.layers:
        parts.append(f"{layer.name}:{layer.type}:{[tuple(shapes.blob(t)) for t in layer.tops]}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
