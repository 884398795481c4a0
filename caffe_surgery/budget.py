"""Per-group ratios that reach a MAC or parameter budget with the least predicted loss.

The predicted loss of a group at a ratio comes from its sensitivity curve
(that group pruned alone, measured on data), or, without data, from the
criterion's scores: the fraction of the group's score mass removed. Losses
are taken as additive over groups. Greedy: from nothing removed, move the
group whose next ratio on the grid costs the least predicted loss per MAC
(or parameter) saved, the saving measured exactly on the pruned net (removing
a group also shrinks the layers that read it), until the budget holds.
"""
from __future__ import annotations

import numpy as np

from .errors import CaffeSurgeryError
from .groups import Group, Groups
from .model import Model
from .plan import Plan
from .pruning import make_plan, prune
from .selection import Budget, select

KINDS = ("macs", "params")


def total(shapes, kind: str) -> int:
    """The net's MACs or parameters (``shapes.totals()`` gives parameters, then MACs)."""
    return shapes.totals()[1 if kind == "macs" else 0]


def parse_budget(text: str) -> tuple[str, float]:
    """``macs=0.5`` -> ("macs", 0.5): keep that fraction of the original's MACs (or parameters)."""
    kind, sep, value = text.partition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not sep or kind not in KINDS or not 0 < fraction < 1:
        raise CaffeSurgeryError(f"a budget is macs=F or params=F with 0 < F < 1 (the fraction kept), got '{text}'")
    return kind, fraction


def score_losses(group_list: list[Group], scores: dict[int, np.ndarray], ratios: list[float]) -> dict[int, dict[float, float]]:
    """Data-free predicted loss: the fraction of a group's (absolute) score mass each ratio removes."""
    losses = {}
    for group in group_list:
        mass = np.abs(scores[group.id])
        total = float(mass.sum()) or 1.0
        losses[group.id] = {0.0: 0.0}
        for ratio in ratios:
            kept = select([group], scores, Budget(ratio=ratio))[group.id]
            losses[group.id][ratio] = 1.0 - float(mass[kept].sum()) / total
    return losses


def plan_for(scores: dict[int, np.ndarray], groups: Groups, group_list: list[Group], ratios: dict[int, float],
             about: dict) -> Plan:
    """The plan pruning each group at its own ratio."""
    overrides = {groups.groups[gid].producers[0]: ratio for gid, ratio in ratios.items()}
    return make_plan(scores, groups, group_list, Budget(overrides=overrides), about)


def _next_step(group: Group, ratios: dict[int, float], losses: dict[float, float], current: int, cost):
    """The group's next ratio on the grid that saves anything (a maxout k' may not change at the next one),
    as the trial ratios and the total they reach; None at the end of the grid."""
    for ratio in sorted(r for r in losses if r > ratios[group.id]):
        trial = {**ratios, group.id: ratio}
        reached = cost(trial)
        if reached < current:
            return trial, reached
    return None


def choose_ratios(model: Model, groups: Groups, group_list: list[Group], scores: dict[int, np.ndarray],
                  losses: dict[int, dict[float, float]], kind: str, fraction: float) -> tuple[dict[int, float], float, int]:
    """Per group id the ratio chosen, the predicted total loss and the MACs (or parameters) reached."""
    original = total(model.shapes, kind)
    target = fraction * original
    ratios = {g.id: 0.0 for g in group_list}

    def cost(trial: dict[int, float]) -> int:
        return total(prune(model, plan_for(scores, groups, group_list, trial, {})).shapes, kind)

    current = original
    while current > target:
        best = None
        for group in group_list:
            step = _next_step(group, ratios, losses[group.id], current, cost)
            if step is None:
                continue
            trial, reached = step
            saved = current - reached
            added = max(losses[group.id][trial[group.id]] - losses[group.id][ratios[group.id]], 0.0)
            merit = (added / saved, -saved)
            if best is None or merit < best[0]:
                best = (merit, trial, reached)
        if best is None:
            raise CaffeSurgeryError(f"cannot reach {kind}={fraction}: at the largest ratios the net keeps "
                                    f"{current / original:.3f} of its {kind}")
        _, ratios, current = best
    predicted = sum(losses[gid][ratio] for gid, ratio in ratios.items())
    return ratios, predicted, current
