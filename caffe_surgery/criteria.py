"""Relevance criteria: one score per prunable unit of a group, higher = more relevant.

Data-free criteria read the weights (``weight-l1``, ``weight-l2``). Data-driven
criteria read activation statistics gathered by ``statistics`` on real data
(``mean-activation``, ``apoz``, ``activation-l2``, ``maxout-wins``). Scores
are indexed like the group (for maxout groups: per neuron, see ``groups``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import CaffeSurgeryError
from .graph import Layer, Net
from .groups import Group, Groups
from .statistics import Statistics


@dataclass(frozen=True)
class Criterion:
    """A named scorer: ``score(net, groups, group, stats) -> scores``.

    ``score`` is None for the methods that choose what to remove themselves
    (similarity merges, random masks); the pruning pipeline runs those.
    """

    name: str
    needs_data: bool
    score: Callable[[Net, Groups, Group, Statistics | None], np.ndarray] | None
    summary: str
    summary_kinds: tuple[str, ...] = ()


CRITERIA: dict[str, Criterion] = {
    "similarity": Criterion("similarity", False, None, "merge similar InnerProduct neurons (Srinivas & Babu 2015), "
                            "no data; see similarity.py"),
    "random-masks": Criterion("random-masks", True, None, "best of N random feature-map masks on validation data "
                              "(Anwar & Sung 2016)"),
    "thinet": Criterion("thinet", True, None, "greedy: remove the channels that change the next layer's output "
                        "least (Luo et al. 2017); see thinet.py"),
}


def criterion(name: str, needs_data: bool, summary: str, summary_kinds: tuple[str, ...] = ()):
    """Register a scoring function under ``name`` (``summary_kinds``: the per-channel sums it reads)."""
    def register(fn):
        CRITERIA[name] = Criterion(name, needs_data, fn, summary, summary_kinds)
        return fn
    return register


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``; a clear error listing the known ones otherwise."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise CaffeSurgeryError(f"unknown criterion '{name}' (known: {', '.join(sorted(CRITERIA))})") from None


def filter_rows(layer: Layer) -> np.ndarray:
    """A producer's incoming weights as one row per output channel (bias excluded)."""
    weight = layer.blobs[0]
    if layer.type == "InnerProduct":
        return weight.T if layer.param.inner_product_param.transpose else weight
    if layer.type == "Deconvolution":
        groups = layer.param.convolution_param.group
        per_group = weight.shape[0] // groups
        parts = [np.moveaxis(weight[g * per_group:(g + 1) * per_group], 1, 0).reshape(weight.shape[1], -1)
                 for g in range(groups)]
        return np.concatenate(parts, axis=0)
    return weight.reshape(weight.shape[0], -1)


ROWS_PER_BLOCK = 256


def _producer_sum(net: Net, groups: Groups, group: Group, per_row: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Sum a per-output-row statistic of every producer into group indices (in float64, a block of rows
    at a time so a large layer is never copied whole)."""
    scores = np.zeros(group.size, dtype=np.float64)
    for name in group.producers:
        layer = net.layer(name)
        if not layer.blobs:
            raise CaffeSurgeryError("weight criteria need the caffemodel (-w)", layer=name)
        index = groups.layouts[layer.tops[0]][0].index[:, 0]
        rows = filter_rows(layer)
        scores[index] += np.concatenate([per_row(rows[start:start + ROWS_PER_BLOCK].astype(np.float64))
                                         for start in range(0, len(rows), ROWS_PER_BLOCK)])
    return scores


@criterion("weight-l1", False, "sum of |w| of a filter's / neuron's incoming weights")
def weight_l1(net, groups, group, stats):
    return _producer_sum(net, groups, group, lambda rows: np.abs(rows).sum(axis=1))


@criterion("weight-l2", False, "L2 norm of a filter's / neuron's incoming weights")
def weight_l2(net, groups, group, stats):
    return np.sqrt(_producer_sum(net, groups, group, lambda rows: (rows ** 2).sum(axis=1)))


def _channel_stat(groups: Groups, group: Group, stats: Statistics, value: Callable) -> np.ndarray:
    """Average a per-channel statistic over every tapped activation of the group."""
    scores = np.zeros(group.size, dtype=np.float64)
    seen = np.zeros(group.size, dtype=np.int64)
    for tap in stats.channel_taps(group.id):
        channel = stats.channels[tap]
        index = stats.tap_index[tap]
        np.add.at(scores, index, value(channel))
        np.add.at(seen, index, 1)
    if not seen.any():
        raise CaffeSurgeryError(f"no statistics were gathered for the group of '{group.name}'")
    return scores / np.maximum(seen, 1)


@criterion("mean-activation", True, "mean activation of a channel over samples and positions", ("sum",))
def mean_activation(net, groups, group, stats):
    return _channel_stat(groups, group, stats, lambda c: c.mean())


@criterion("activation-l2", True, "root mean square of a channel's activation over samples and positions",
           ("squares",))
def activation_l2(net, groups, group, stats):
    return _channel_stat(groups, group, stats, lambda c: np.sqrt(c.mean_square()))


@criterion("apoz", True, "1 - average percentage of zeros after the activation (APoZ: more zeros, less relevant)",
           ("zeros",))
def apoz(net, groups, group, stats):
    return 1.0 - _channel_stat(groups, group, stats, lambda c: c.zero_fraction())


@criterion("maxout-wins", True, "how often a neuron is its maxout unit's maximum (Moya Rueda et al. 2017)")
def maxout_wins(net, groups, group, stats):
    if group.maxout is None:
        raise CaffeSurgeryError(f"maxout-wins needs a maxout group; '{group.name}' is not one")
    wins = stats.wins.get(group.id)
    if wins is None or wins.samples == 0:
        raise CaffeSurgeryError(f"no maxout statistics were gathered for '{group.name}'")
    scores = np.zeros(group.size, dtype=np.float64)
    scores[group.maxout.neurons] = wins.frequency()
    return scores
