"""Running a Caffe net with onnxruntime: tapped blobs, a device, batching, streaming statistics.

The net is exported in memory with a dynamic batch (a net whose Caffe result
depends on the batch size, e.g. a Reshape with a literal batch dim, runs at its
own fixed batch instead, with a warning); results are keyed by blob
key (``fc`` for a blob's first version, ``fc@relu`` for a rewrite), so a tap of
an in-place version reads the value before the later layers rewrote it.
Graph optimizations stay on: onnxruntime keeps every requested output intact; its worker threads do
not spin (``session_options``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnxruntime as ort

from .errors import CaffeSurgeryError, ShapeError
from .export.summaries import KINDS, summary_name
from .graph import BlobVersion, Net
from .onnx_export import BatchDependentError, BlobSpec, export_onnx, graph_outputs, tensor_names

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

Arrays = dict[str, np.ndarray]
Batch = Mapping[str, np.ndarray] | np.ndarray


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for ``device``: CUDA (with CPU fallback) when asked for and available."""
    if device not in DEVICES:
        raise CaffeSurgeryError(f"unknown device '{device}' (choose one of {', '.join(DEVICES)})")
    has_cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise CaffeSurgeryError("device 'cuda' was requested but this onnxruntime has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu, or use device 'cpu')")
    return [CUDA, CPU] if device != "cpu" and has_cuda else [CPU]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The tool's onnxruntime session options: all graph optimizations, ``threads`` intra-op threads (default:
    one per core), and worker threads that sleep instead of spinning while they wait. On a machine with other
    work (the data pass's own prefetch thread, other processes) spinning threads take the cores that work needs:
    on this shared 2-core machine a LeNet relevance pass ran 1.8x faster without spinning (README, Performance).
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Runner:
    """What every backend offers (see ``backends``): results keyed by blob key for a batch, and a batch loop.

    A subclass sets ``inputs`` (name -> shape, dim 0 the batch) and implements ``run``.
    """

    inputs: dict[str, tuple]

    def run(self, inputs: Batch) -> Arrays:
        """Outputs and taps for one batch, keyed by blob key; a single-input net also takes a bare array."""
        raise NotImplementedError

    def run_batches(self, batches: Iterable[Batch], callback: Callable[[Arrays, Batch], None]) -> int:
        """Run every batch, handing ``callback(results, batch)`` each result; return the samples seen."""
        seen = 0
        for batch in batches:
            feeds = self._feeds(batch)
            callback(self.run(feeds), batch)
            seen += _count(feeds)
        return seen

    def _feeds(self, inputs: Batch) -> Arrays:
        """Check names and per-sample shapes; return contiguous float32 arrays."""
        if isinstance(inputs, np.ndarray):
            if len(self.inputs) != 1:
                raise CaffeSurgeryError(f"the net has inputs {', '.join(self.inputs)}; pass a dict of arrays")
            inputs = {next(iter(self.inputs)): inputs}
        if inputs.keys() != self.inputs.keys():
            missing, extra = sorted(self.inputs.keys() - inputs.keys()), sorted(inputs.keys() - self.inputs.keys())
            raise CaffeSurgeryError(f"inputs must be exactly {', '.join(self.inputs)} "
                                    f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(extra) or '-'})")
        feeds = {}
        for name, expected in self.inputs.items():
            array = np.ascontiguousarray(inputs[name], dtype=np.float32)
            if array.shape[1:] != tuple(expected[1:]):
                raise ShapeError(f"input '{name}' has shape {array.shape}, the net expects (N, "
                                 f"{', '.join(map(str, expected[1:]))})")
            feeds[name] = array
        return feeds


class Runtime(Runner):
    """An onnxruntime session computing a net's outputs plus tapped blob versions."""

    def __init__(self, net: Net, shapes, *, taps: Iterable[BlobSpec] = (), device: str = "auto",
                 threads: int | None = None, batch_size: int | None = None,
                 outputs: Iterable[BlobSpec] | None = None, summaries: Iterable[BlobSpec] = (),
                 summary_kinds: tuple[str, ...] = KINDS):
        """``shapes``, ``taps``, ``outputs`` and ``summaries`` as for ``export_onnx`` (``outputs=()``: the
        taps only; a summary comes back as ``<key>/channel_stats``, summed per batch); ``threads`` sets
        intra-op threads; ``batch_size`` caps the samples per session call (bigger inputs run in chunks)."""
        taps = list(taps)
        outputs = None if outputs is None else list(outputs)
        summaries = [s if isinstance(s, BlobVersion) else net.resolve(s) for s in summaries]
        self.outputs = graph_outputs(net, taps, outputs)
        export = dict(taps=taps, outputs=outputs, summaries=summaries, summary_kinds=summary_kinds, check=False)
        try:
            model = export_onnx(net, shapes, dynamic_batch=True, **export)
            self.fixed_batch = None
        except BatchDependentError as exc:
            model = export_onnx(net, shapes, dynamic_batch=False, **export)
            self.fixed_batch = int(model.graph.input[0].type.tensor_type.shape.dim[0].dim_value)
            log.warning("%s: %s: %s; running in batches of exactly %d", exc.file, exc.layer, exc.why,
                        self.fixed_batch)
        options = session_options(threads)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers_for(device))
        names = tensor_names(net)
        self._keys = {names[v]: v.key for v in self.outputs}
        self._keys.update({summary_name(names[v]): summary_name(v.key) for v in summaries})
        varying = _input_dependent(model.graph) if self.fixed_batch is not None else None
        self._joins = {self._keys[o.name]: _join_rule(o.name, o.shape, varying) for o in self.session.get_outputs()}
        self._joins.update({summary_name(v.key): "sum" for v in summaries})
        self.inputs = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.batch_size = batch_size

    @property
    def keys(self) -> list[str]:
        """Keys of the results of ``run``: the net's outputs, then the taps."""
        return list(self._keys.values())

    @property
    def device(self) -> str:
        """'cuda' when the session runs on CUDA, else 'cpu'."""
        return "cuda" if CUDA in self.session.get_providers() else "cpu"

    def run(self, inputs: Batch) -> Arrays:
        """Outputs and taps for one batch, keyed by blob key; a single-input net also takes a bare array."""
        return self._run_chunked(self._feeds(inputs))

    def _run_chunked(self, feeds: Arrays) -> Arrays:
        """One session call, or one per ``batch_size`` samples with the results joined along axis 0."""
        count = _count(feeds)
        step = self.batch_size or count
        if self.fixed_batch is not None:
            if count % self.fixed_batch:
                raise CaffeSurgeryError(f"the net's result depends on the batch size: it runs only in batches of "
                                        f"{self.fixed_batch} samples, got {count}")
            step = self.fixed_batch
        if count <= step:
            return self._run(feeds)
        mixed = [key for key, join in self._joins.items() if join == "mixed"]
        if mixed:
            raise CaffeSurgeryError(f"outputs {', '.join(mixed)} mix the samples of a batch; "
                                    f"they cannot be computed in chunks of {step}")
        chunks = [self._run({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, count, step)]
        joined = {"constant": lambda parts: parts[0], "sum": lambda parts: np.sum(parts, axis=0),
                  "concat": np.concatenate}
        return {key: joined[self._joins[key]]([c[key] for c in chunks]) for key in chunks[0]}

    def _run(self, feeds: Arrays) -> Arrays:
        values = self.session.run(list(self._keys), feeds)
        return {self._keys[name]: value for name, value in zip(self._keys, values)}


def _join_rule(name: str, shape: list, varying: set[str] | None) -> str:
    """How chunked results of an output join: 'concat' along the batch, 'constant' (a static dim 0, e.g.
    PriorBox: every chunk gives the same) or 'mixed' (a 0-axis value over the whole batch). Channel
    summaries are added up ('sum'). In a fixed-batch graph (``varying``: the tensors computed from the
    inputs) every forward's result is stacked, constants excepted."""
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        return "mixed"  # also a data-dependent size such as DetectionOutput's row count
    if varying is not None:
        return "concat" if name in varying else "constant"
    return "constant" if isinstance(shape[0], int) else "concat"


def _input_dependent(graph) -> set[str]:
    """Names of the tensors of ``graph`` computed from its inputs (nodes are in topological order)."""
    varying = {i.name for i in graph.input}
    for node in graph.node:
        if varying.intersection(node.input):
            varying.update(node.output)
    return varying


def _count(feeds: Arrays) -> int:
    """Samples in a batch of inputs."""
    return len(next(iter(feeds.values())))
