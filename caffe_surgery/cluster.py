"""One pass over data split into shards, run here or on a Ray cluster, merged in shard order.

A task is a picklable callable ``task(model, batches) -> dict of arrays`` whose
arrays add up over shards (``statistics.merge_arrays``): statistics sums and
counts, evaluation counts. ``map_shards`` runs it once per shard and adds the
results in shard order, so a Ray run gives bit for bit what a local run over
the same shards gives.

On Ray the model goes to the object store once (``ray.put``, its weights as
arrays the workers map without copying); each task gets that reference, the
``DataRequest`` (a spec string, not data) and its shard index, opens the data
itself and reads only its own records. A worker that dies is replaced and its
task rerun (``RETRIES``); a task that meets bad input returns the error, which
stops the run with the same one-line message a local run gives.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from . import caffe_pb2
from .dataflow import DataRequest
from .errors import CaffeSurgeryError
from .model import Model
from .progress import progress
from .statistics import merge_arrays

ENGINES = ("local", "ray")
RETRIES = 3
POLL_SECONDS = 0.2

Arrays = dict[str, np.ndarray]
Task = Callable[[Model, Iterable], Arrays]


def map_shards(task: Task, model: Model, data: DataRequest, shards: int | None = None, *, engine: str = "local",
               address: str | None = None, desc: str = "pass") -> Arrays:
    """Run ``task`` over each of ``shards`` disjoint, contiguous shards of ``data`` and add the results
    in shard order. ``engine`` 'local' runs the shards in turn in this process (default: one shard);
    'ray' runs one task per shard on the cluster at ``address`` (None: start a local one; 'auto',
    'HOST:PORT' or 'ray://HOST:10001': connect; default shards: the cluster's CPUs). One progress bar
    counts the images of all shards (on a terminal only)."""
    if engine not in ENGINES:
        raise CaffeSurgeryError(f"unknown engine '{engine}' (choose one of {', '.join(ENGINES)})")
    if shards is not None and shards < 1:
        raise CaffeSurgeryError(f"--shards must be positive, got {shards}")
    parts = _local(task, model, data, shards or 1, desc) if engine == "local" else \
        _on_ray(task, model, data, shards, address, desc)
    return merge_arrays((f"shard {index}", arrays) for index, arrays in enumerate(parts))


def _local(task: Task, model: Model, data: DataRequest, shards: int, desc: str) -> list[Arrays]:
    source = data.open(model.net)
    with progress(len(source), desc) as bar:
        return [task(model, ShardBatches(source, index, shards, data.batch_size, bar.update))
                for index in range(shards)]


class ShardBatches:
    """The batches of shard ``index`` of ``shards`` of an opened source, reporting each one's sample count
    after it was used; ``first_index`` is the shard's first sample in the whole pass (for tasks that
    sample per image, so that shards sample as one pass does)."""

    def __init__(self, source, index: int, shards: int, batch_size: int, report: Callable[[int], None]):
        self.first_index = len(source) * index // shards
        self._batches = source.shard(index, shards).iter_batches(batch_size)
        self._report = report

    def __iter__(self) -> Iterator:
        for images, labels in self._batches:
            yield images, labels
            self._report(len(images))


# -- Ray ------------------------------------------------------------------------------------------

@dataclass
class ShardFailure:
    """Bad input met by one shard's task: returned, not raised, so Ray does not retry it."""

    error: CaffeSurgeryError


class ProgressCounter:
    """Images done per shard, kept by a Ray actor; a rerun shard starts again from 0."""

    def __init__(self):
        self.done: dict[int, int] = {}

    def start(self, shard: int) -> None:
        self.done[shard] = 0

    def add(self, shard: int, count: int) -> None:
        self.done[shard] += count

    def total(self) -> int:
        return sum(self.done.values())


def run_shard(task: Task, model: Model, data: DataRequest, index: int, shards: int, counter) -> Arrays | ShardFailure:
    """The body of one Ray task: open shard ``index`` of ``shards`` of the data and run ``task`` on it."""
    counter.start.remote(index)
    try:
        batches = ShardBatches(data.open(model.net), index, shards, data.batch_size,
                               lambda n: counter.add.remote(index, n))
        return task(model, batches)
    except CaffeSurgeryError as exc:
        return ShardFailure(exc)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise CaffeSurgeryError("--engine ray needs Ray: pip install 'caffe-surgery[cluster]'") from None
    return ray


def _ship_protobuf_messages(ray) -> None:
    """Let Ray send the net's protobuf messages (layer parameters) as their wire bytes: they do not pickle
    (their classes name a module 'caffe_pb2' that cannot be imported)."""
    for name in caffe_pb2.DESCRIPTOR.message_types_by_name:
        ray.util.register_serializer(getattr(caffe_pb2, name), serializer=lambda message: message.SerializeToString(),
                                     deserializer=partial(parse_message, name))


def parse_message(name: str, data: bytes):
    """A caffe_pb2 message of type ``name`` from its wire bytes."""
    return getattr(caffe_pb2, name).FromString(data)


@contextmanager
def ray_connection(address: str | None):
    """Ray, connected to the cluster at ``address`` (None: a local one started here) for the block; a
    connection made here is closed at its end, one already open is used as it is (so a sweep of many
    passes connects once)."""
    ray = _import_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            options = {"include_dashboard": False} if address is None else {}
            ray.init(address=address, logging_level=logging.WARNING, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CaffeSurgeryError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        yield ray
    finally:
        if connected_here:
            ray.shutdown()


def _on_ray(task: Task, model: Model, data: DataRequest, shards: int | None, address: str | None,
            desc: str) -> list[Arrays]:
    with ray_connection(address) as ray:
        _ship_protobuf_messages(ray)
        shards = shards or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        total = len(data.open(model.net))
        model_ref = ray.put(model)
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        remote = ray.remote(run_shard).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)
        pending = {remote.remote(task, model_ref, data, index, shards, counter): index for index in range(shards)}
        return _collect(ray, pending, shards, counter, total, desc)


def _collect(ray, pending: dict, shards: int, counter, total: int, desc: str) -> list[Arrays]:
    """Wait for every shard; on bad input stop the later shards and raise the first shard's error
    (the one a local run would meet first)."""
    results: dict[int, Arrays] = {}
    failed: dict[int, CaffeSurgeryError] = {}
    shown = 0
    with progress(total, desc) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
            for ref in (r for r in done if r in pending):  # not the later shards a failure cancelled
                index = pending.pop(ref)
                result = _result(ray, ref, index, shards)
                if isinstance(result, ShardFailure):
                    failed[index] = result.error
                    for later in [r for r, i in pending.items() if i > index]:
                        ray.cancel(later)
                        del pending[later]
                else:
                    results[index] = result
            done_images = ray.get(counter.total.remote())
            bar.update(done_images - shown)
            shown = done_images
    if failed:
        raise failed[min(failed)]
    return [results[index] for index in range(shards)]


def _result(ray, ref, index: int, shards: int):
    """A task's result; a task the cluster lost beyond its retries is a one-line error."""
    try:
        return ray.get(ref)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaffeSurgeryError(f"shard {index}/{shards} failed on the Ray cluster after {RETRIES} retries: "
                                f"{first}") from None

