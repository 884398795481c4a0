"""Data-free pruning of similar neurons (Srinivas & Babu, BMVC 2015).

For neurons i, j of one InnerProduct layer followed by a ReLU-like activation
and linear consumers, the saliency of removing j in favour of i is
s(i, j) = <a_j^2> * ||W_i - W_j||^2, with W the incoming weights (bias
included) and <a_j^2> the mean of j's squared outgoing weights. Greedily the
lowest-saliency j is removed and its outgoing weights are added to i's; two
identical neurons have saliency 0 and merging them changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .criteria import filter_rows
from .errors import CaffeSurgeryError
from .graph import Layer, Net
from .groups import Group, Groups

RELU_LIKE = ("ReLU", "Dropout")


@dataclass
class Merge:
    """Neuron ``removed`` folded into ``kept`` with saliency ``saliency``."""

    removed: int
    kept: int
    saliency: float


def _consumers(net: Net, groups: Groups, group: Group) -> tuple[Layer, list[Layer]]:
    """The producer and its linear consumers; a clear error where the method does not apply."""
    if len(group.producers) != 1 or group.maxout is not None:
        raise CaffeSurgeryError("similarity applies to one InnerProduct layer, not to a coupled or maxout group",
                                layer=group.name)
    producer = net.layer(group.producers[0])
    if producer.type != "InnerProduct" or producer.param.inner_product_param.axis != 1:
        raise CaffeSurgeryError(f"similarity applies to InnerProduct layers, not {producer.type}", layer=producer.name)
    blob = producer.tops[0]
    while len(net.consumers(blob)) == 1 and net.consumers(blob)[0].type in RELU_LIKE:
        step = net.consumers(blob)[0]
        if step.type == "ReLU" and step.param.relu_param.negative_slope != 0:
            raise CaffeSurgeryError(f"similarity needs a plain ReLU, '{step.name}' is leaky", layer=producer.name)
        blob = step.tops[0]
    consumers = net.consumers(blob)
    if not consumers or any(c.type != "InnerProduct" or c.param.inner_product_param.transpose for c in consumers):
        kinds = ", ".join(sorted({c.type for c in consumers})) or "nothing"
        raise CaffeSurgeryError(f"similarity needs a ReLU and linear InnerProduct consumers after the layer, "
                                f"it feeds {kinds}", layer=producer.name)
    return producer, consumers


def similarity_merges(net: Net, groups: Groups, group: Group, keep_count: int) -> tuple[np.ndarray, dict[str, np.ndarray], list[Merge]]:
    """Greedy merges down to ``keep_count`` neurons.

    Returns the kept neuron indices, the consumers' new weight matrices (the
    removed neurons' columns already added into their partners') and the
    merges in order.
    """
    producer, consumers = _consumers(net, groups, group)
    incoming = filter_rows(producer).astype(np.float64)
    if len(producer.blobs) > 1:
        incoming = np.concatenate([incoming, producer.blobs[1].reshape(-1, 1)], axis=1)
    outgoing = np.concatenate([c.blobs[0] for c in consumers], axis=0).astype(np.float64)  # (outputs, n)
    n = incoming.shape[0]
    squared = (incoming ** 2).sum(axis=1)
    distance = np.maximum(squared[:, None] + squared[None, :] - 2 * incoming @ incoming.T, 0.0)
    np.fill_diagonal(distance, np.inf)
    alive = np.ones(n, dtype=bool)
    mean_square = (outgoing ** 2).mean(axis=0)
    partner, nearest = distance.argmin(axis=0), distance.min(axis=0)
    merges = []
    for _ in range(n - keep_count):
        saliency = np.where(alive, mean_square * nearest, np.inf)
        j = int(np.argmin(saliency))
        i = int(partner[j])
        merges.append(Merge(j, i, float(saliency[j])))
        outgoing[:, i] += outgoing[:, j]
        mean_square[i] = (outgoing[:, i] ** 2).mean()
        alive[j] = False
        distance[j, :] = np.inf
        distance[:, j] = np.inf
        stale = np.nonzero(alive & (partner == j))[0]
        partner[stale] = distance[:, stale].argmin(axis=0)
        nearest[stale] = distance[:, stale].min(axis=0)
    new_weights, row = {}, 0
    for consumer in consumers:
        rows = consumer.blobs[0].shape[0]
        new_weights[consumer.name] = outgoing[row:row + rows].astype(np.float32)
        row += rows
    return np.nonzero(alive)[0], new_weights, merges
