"""Pruning plans: which output channels of which producer layers to keep.

A plan is JSON, reviewable and replayable::

    {"version": 1, "keep": {"conv1": [0, 2, 3], "fc_3": [...]}, ...}

A key names any producer layer of a channel group and applies to the whole
group. For a maxout group the indices number its neurons unit-major (neuron p
of unit u is u*k + p) for Reshape+Pooling and Eltwise-MAX branches, and follow
the producer's own channels for a sliced producer (max-feature-map). Other
top-level keys (criterion, ratio, ...) are kept as the plan's description.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import layers, limits
from .errors import PlanError
from .graph import Net
from .groups import Group, Groups
from .io import atomic_write

PLAN_VERSION = 1


@dataclass
class Plan:
    """Kept output indices per producer layer, plus a free-form description."""

    keep: dict[str, list[int]]
    about: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        about = ", ".join(f"{k}={v!r}" for k, v in self.about.items())
        kept = ", ".join(f"{layer} keeps {len(indices)}" for layer, indices in self.keep.items())
        return f"Plan({kept or 'nothing'}{'; ' + about if about else ''})"

    def to_json(self) -> str:
        document = {"version": PLAN_VERSION, "keep": {k: [int(i) for i in v] for k, v in self.keep.items()}}
        document.update(self.about)
        return json.dumps(document, indent=1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write(path, [self.to_json().encode("utf-8")])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan file; PlanError naming the file when it is not a version-1 plan."""
        text = limits.read_file(path, "plan", error=PlanError)
        try:
            document = json.loads(text.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise PlanError(f"cannot read plan: not JSON ({exc})", file=str(path)) from None
        if not isinstance(document, dict) or document.get("version") != PLAN_VERSION:
            raise PlanError(f"not a plan of version {PLAN_VERSION}", file=str(path))
        keep = document.pop("keep", None)
        document.pop("version")
        if not isinstance(keep, dict) or not all(
                isinstance(v, list) and all(_is_index(i) for i in v) for v in keep.values()):
            raise PlanError('"keep" must map layer names to lists of integer indices', file=str(path))
        return cls(keep=keep, about=document)


def _is_index(value) -> bool:
    """An integer that is not a boolean (JSON ``true`` is not an index)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_maxout(group: Group, kept: np.ndarray, layer: str) -> None:
    per_unit = np.isin(group.maxout.neurons, kept).sum(axis=1)
    counts = sorted(set(per_unit.tolist()) - {0})
    if len(counts) != 1:
        raise PlanError(f"maxout units would keep different numbers of neurons ({counts}); keep the same number in "
                        f"every unit, or all {group.maxout.k} of some units", layer=layer)


def _check_chunks(group: Group, kept: np.ndarray, layer: str) -> None:
    per_chunk = np.bincount(kept // (group.size // group.chunks), minlength=group.chunks)
    if len(set(per_chunk.tolist())) != 1:
        raise PlanError(f"grouped convolution needs the same number of channels kept in each of its {group.chunks} "
                        f"groups, the plan keeps {per_chunk.tolist()}", layer=layer)


def resolve_plan(plan: Plan, net: Net, groups: Groups, source: str | None = None) -> dict[int, np.ndarray]:
    """Validate a plan against the net and return, per group id, the sorted group indices kept."""
    resolved: dict[int, tuple[str, np.ndarray]] = {}
    for layer_name, indices in plan.keep.items():
        if not net.has_layer(layer_name):
            raise PlanError("plan names a layer that is not in the net", file=source, layer=layer_name)
        group = groups.of_layer(layer_name)
        if group is None:
            producers = ", ".join(d.name for d in layers.declarations() if d.channels.produces)
            raise PlanError(f"{net.layer(layer_name).type} layer does not open a channel group "
                            f"(only {producers} do)", file=source, layer=layer_name)
        if group.pinned:
            raise PlanError(f"its channels cannot be pruned: {'; '.join(group.pinned)}", file=source, layer=layer_name)
        if not indices:
            raise PlanError("plan keeps no channel (a layer is never emptied)", file=source, layer=layer_name)
        outside = [i for i in indices if not 0 <= i < group.size]
        if outside:
            raise PlanError(f"index {outside[0]} is out of range for {group.size} channels",
                            file=source, layer=layer_name)
        kept = np.array(sorted(indices), dtype=np.int64)
        if np.unique(kept).size != kept.size:
            raise PlanError("plan lists an index twice", file=source, layer=layer_name)
        try:
            if group.maxout is not None:
                _check_maxout(group, kept, layer_name)
            elif group.chunks > 1:
                _check_chunks(group, kept, layer_name)
        except PlanError as exc:
            raise exc.with_file(source) if source else exc
        previous = resolved.get(group.id)
        if previous is not None and not np.array_equal(previous[1], kept):
            raise PlanError(f"plan gives different indices for '{previous[0]}' and '{layer_name}', "
                            "which belong to one channel group", file=source, layer=layer_name)
        resolved[group.id] = (layer_name, kept)
    return {gid: kept for gid, (_, kept) in resolved.items()}
