"""The pruning pipeline: statistics -> scores -> plan -> surgery -> report.

Each step is a function of its inputs so a user (or a test) can stop after
any of them: ``relevance`` stops after the statistics, ``--dry-run`` after
the plan.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .criteria import Criterion, get_criterion
from .errors import CaffeSurgeryError
from .graph import Net
from .groups import Group, Groups, build_groups
from .model import Model
from .plan import Plan, resolve_plan
from .selection import Budget, select
from .shapes import NetShapes
from .similarity import similarity_merges
from .statistics import Statistics
from .surgery import apply_plan


def chosen_groups(groups: Groups, layers: list[str] | None, maxout_only: bool = False) -> list[Group]:
    """The prunable groups (only maxout ones if asked), or those of the named producer layers (errors for others)."""
    if not layers:
        chosen = [g for g in groups.prunable() if g.maxout is not None or not maxout_only]
        if not chosen:
            raise CaffeSurgeryError("the net has no prunable maxout group" if maxout_only else
                                    "the net has no prunable group (see 'caffe-surgery info --groups')")
        return chosen
    chosen = []
    for name in layers:
        group = groups.of_layer(name)
        if group is None:
            raise CaffeSurgeryError("not a Convolution/Deconvolution/InnerProduct layer of the net", layer=name)
        if group.pinned:
            raise CaffeSurgeryError(f"its channels cannot be pruned: {'; '.join(group.pinned)}", layer=name)
        if maxout_only and group.maxout is None:
            raise CaffeSurgeryError("not a maxout layer (maxout-wins ranks neurons inside maxout units)", layer=name)
        if group not in chosen:
            chosen.append(group)
    return chosen


def statistics_plan(model: Model, groups: Groups, group_list: list[Group], criterion: Criterion) -> Statistics:
    """The taps and accumulators a data-driven criterion needs (channel sums always)."""
    wins = criterion.name == "maxout-wins"
    return Statistics.for_groups(model.net, groups, group_list, model.shapes, channels=not wins, maxout=wins,
                                 kinds=("sum",) + criterion.summary_kinds)


def gather(model: Model, stats: Statistics, groups: Groups, batches, runtime_options: dict) -> Statistics:
    """Stream batches through the runtime (``runtime_options``: ``backends.open_runtime``'s) with the
    statistics' taps and accumulate them."""
    from .backends import open_runtime

    runtime = open_runtime(model.net, model.shapes, taps=stats.full_taps, summaries=stats.summaries,
                           summary_kinds=stats.kinds, outputs=(), **runtime_options)
    for images, _labels in batches:
        stats.update(runtime.run(images), groups, len(images))
    return stats


@dataclass(frozen=True)
class StatisticsTask:
    """The statistics pass as a task of ``cluster.map_shards``: (model, batches) -> the arrays
    ``relevance`` saves, for the groups ``group_ids`` (ids of ``build_groups``, which is deterministic)."""

    criterion: str
    group_ids: tuple[int, ...]
    runtime_options: dict

    def __call__(self, model: Model, batches) -> dict[str, np.ndarray]:
        groups = build_groups(model.net, model.shapes)
        group_list = [groups.groups[gid] for gid in self.group_ids]
        stats = statistics_plan(model, groups, group_list, get_criterion(self.criterion))
        return gather(model, stats, groups, batches, self.runtime_options).described()


def score(model: Model, groups: Groups, group_list: list[Group], criterion: Criterion,
          stats: Statistics | None) -> dict[int, np.ndarray]:
    """Scores per group id."""
    return {g.id: criterion.score(model.net, groups, g, stats) for g in group_list}


@dataclass
class Pruned:
    """The result of pruning: the smaller net, its shapes and the plan applied."""

    net: Net
    shapes: NetShapes
    plan: Plan


def plan_by_similarity(model: Model, groups: Groups, group_list: list[Group], budget: Budget) -> tuple[Plan, Net, list[str]]:
    """Srinivas & Babu merges: a plan plus a copy of the net whose consumers absorbed the removed neurons."""
    merged = copy.deepcopy(model.net)
    keep, notes = {}, []
    for group in group_list:
        counts = select([group], {group.id: np.zeros(group.size)}, budget)[group.id].size
        kept, new_weights, merges = similarity_merges(model.net, groups, group, counts)
        for name, weight in new_weights.items():
            merged.layer(name).blobs[0] = weight
        keep[group.producers[0]] = kept.tolist()
        if merges:
            notes.append(f"{group.name}: merged {len(merges)} neurons, largest saliency {max(m.saliency for m in merges):.4g}")
    return Plan(keep, about={"criterion": "similarity"}), merged, notes


def make_plan(scores: dict[int, np.ndarray], groups: Groups, group_list: list[Group], budget: Budget,
              about: dict) -> Plan:
    """A plan keeping, per group, what the budget and scores select."""
    kept = select(group_list, scores, budget)
    return Plan({groups.groups[gid].producers[0]: k.tolist() for gid, k in kept.items()}, about=about)


def prune(model: Model, plan: Plan, net: Net | None = None, source: str | None = None) -> Pruned:
    """Apply a plan to the model (or to ``net``, a same-shaped copy with adjusted weights)."""
    base = net or model.net
    groups = build_groups(base, model.shapes)
    keep = resolve_plan(plan, base, groups, source)
    pruned_net, pruned_shapes = apply_plan(base, model.shapes, groups, keep)
    return Pruned(pruned_net, pruned_shapes, plan)



Evaluator = Callable[[Net, NetShapes], float]


def random_masks_plan(model: Model, groups: Groups, group_list: list[Group], budget: Budget, evaluate: Evaluator,
                      count: int, seed: int) -> tuple[Plan, list[float]]:
    """Anwar & Sung: draw ``count`` random feature-map masks at the budget, keep the most accurate."""
    rng = np.random.default_rng(seed)
    best, best_accuracy, accuracies = None, -1.0, []
    for _ in range(count):
        scores = {g.id: rng.random(g.size) for g in group_list}
        plan = make_plan(scores, groups, group_list, budget, {"criterion": "random-masks", "seed": seed})
        pruned = prune(model, plan)
        accuracy = evaluate(pruned.net, pruned.shapes)
        accuracies.append(accuracy)
        if accuracy > best_accuracy:
            best, best_accuracy = plan, accuracy
    best.about["mask_accuracies"] = accuracies
    return best, accuracies


def tolerance_plan(model: Model, groups: Groups, group_list: list[Group], scores: dict[int, np.ndarray],
                   budget: Budget, evaluate: Evaluator, tolerance: float, step: float = 0.05,
                   about: dict | None = None) -> tuple[Plan, list[dict]]:
    """Prune progressively (global ranking, ``step`` more each round) while ``evaluate``'s figure (top-1
    accuracy, or an agreement quality where the original scores 1.0) stays within ``tolerance`` percentage
    points of the original's; return the last plan within it and the curve."""
    baseline = evaluate(model.net, model.shapes)
    curve = [{"ratio": 0.0, "params": model.shapes.totals()[0], "accuracy": baseline}]
    accepted = Plan({}, about={**(about or {}), "tolerance": tolerance})
    ratio = step
    while ratio < 1.0:
        trial = Budget(**{**budget.__dict__, "ratio": ratio, "global_ranking": True})
        plan = make_plan(scores, groups, group_list, trial, {**(about or {}), "tolerance": tolerance, "ratio": ratio})
        pruned = prune(model, plan)
        accuracy = evaluate(pruned.net, pruned.shapes)
        curve.append({"ratio": ratio, "params": pruned.shapes.totals()[0], "accuracy": accuracy})
        if 100.0 * (baseline - accuracy) > tolerance:
            break
        accepted = plan
        ratio = round(ratio + step, 10)
    accepted.about["curve"] = curve
    return accepted, curve
