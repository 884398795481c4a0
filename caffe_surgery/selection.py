"""How much to remove: from scores per group to the indices each group keeps.

Per group (``ratio``, ``keep``) or globally (scores normalised per layer by
their largest magnitude, then one threshold for all), with a floor
(``min_keep``), rounding of the kept count up to a multiple (``round_to``,
e.g. 8 for fast kernels), per-layer overrides, and grouped convolutions kept
even per group. Maxout groups are ranked locally, inside each unit: either k'
neurons kept per unit (``maxout_k``, or k*(1-ratio)), or whole units dropped
(``maxout_units``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import PlanError
from .groups import Group


@dataclass
class Budget:
    """What the user asked to remove."""

    ratio: float | None = None
    keep: int | None = None
    min_keep: int = 1
    round_to: int = 1
    overrides: dict[str, float] = field(default_factory=dict)
    global_ranking: bool = False
    maxout_k: int | None = None
    maxout_units: bool = False

    def ratio_for(self, group: Group) -> float | None:
        for producer in group.producers:
            if producer in self.overrides:
                return self.overrides[producer]
        return self.ratio


def _rounded(count: int, group: Group, budget: Budget) -> int:
    step = math.lcm(max(budget.round_to, 1), group.chunks)
    count = max(count, budget.min_keep, 1)
    count = min(group.size, math.ceil(count / step) * step)
    if count % group.chunks:
        count = group.size
    return count


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores (ties: lower index first), sorted."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:count])


def _keep_channels(group: Group, scores: np.ndarray, count: int) -> np.ndarray:
    if group.chunks == 1:
        return _top(scores, count)
    chunk = group.size // group.chunks
    return np.concatenate([c * chunk + _top(scores[c * chunk:(c + 1) * chunk], count // group.chunks)
                           for c in range(group.chunks)])


def _keep_maxout(group: Group, scores: np.ndarray, budget: Budget, ratio: float | None) -> np.ndarray:
    maxout = group.maxout
    unit_scores = scores[maxout.neurons]  # (units, k)
    if budget.maxout_units:
        units = max(1, round(maxout.units * (1 - (ratio or 0.0))))
        kept_units = _top(unit_scores.sum(axis=1), units)
        return np.sort(maxout.neurons[kept_units].ravel())
    k_new = budget.maxout_k if budget.maxout_k is not None else max(1, round(maxout.k * (1 - (ratio or 0.0))))
    if not 1 <= k_new <= maxout.k:
        raise PlanError(f"--maxout-k {k_new} must be between 1 and k = {maxout.k}", layer=group.name)
    kept = [maxout.neurons[u, _top(unit_scores[u], k_new)] for u in range(maxout.units)]
    return np.sort(np.concatenate(kept))


def _global_counts(groups: list[Group], scores: dict[int, np.ndarray], budget: Budget) -> dict[int, int]:
    """Kept channel counts when one threshold over per-layer-normalised scores decides."""
    entries = []
    for group in groups:
        s = scores[group.id]
        scale = np.abs(s).max() or 1.0
        entries.append(np.stack([s / scale, np.full(s.size, group.id)], axis=1))
    table = np.concatenate(entries)
    removed = table[np.argsort(table[:, 0], kind="stable")][: int(len(table) * (budget.ratio or 0.0))]
    gone = {group.id: int((removed[:, 1] == group.id).sum()) for group in groups}
    return {group.id: _rounded(group.size - gone[group.id], group, budget) for group in groups}


def select(groups: list[Group], scores: dict[int, np.ndarray], budget: Budget) -> dict[int, np.ndarray]:
    """The group indices to keep, per group id."""
    plain = [g for g in groups if g.maxout is None]
    counts = _global_counts(plain, scores, budget) if budget.global_ranking and plain else {}
    kept = {}
    for group in groups:
        ratio = budget.ratio_for(group)
        if group.maxout is not None:
            kept[group.id] = _keep_maxout(group, scores[group.id], budget, ratio)
            continue
        if group.id in counts:
            count = counts[group.id]
        elif budget.keep is not None:
            count = _rounded(budget.keep, group, budget)
        else:
            count = _rounded(round(group.size * (1 - (ratio or 0.0))), group, budget)
        kept[group.id] = _keep_channels(group, scores[group.id], count)
    return kept
