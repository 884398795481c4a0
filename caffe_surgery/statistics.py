"""Streaming, mergeable activation statistics for the data-driven criteria.

Batches go in one at a time; only running sums and integer counts are kept,
never the activations. Every saved array is a sum over samples, so passes over
disjoint shards merge by adding their files key by key: the counts equal one
pass over everything bit for bit, the float sums up to summation order.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
import zipfile
import zlib
from io import BytesIO
from dataclasses import dataclass, field

import numpy as np

from . import limits
from .errors import CaffeSurgeryError
from .export.summaries import KINDS, summary_name
from .graph import BlobVersion, Net
from . import layers
from .groups import Group, Groups
from .io import atomic_write


def channel_summary(activation: np.ndarray, kinds: tuple[str, ...] = KINDS) -> np.ndarray:
    """(len(kinds), C): per channel (axis 1) the ``kinds`` asked for, in float64: the sum, the sum of
    squares, the count of values <= 0 (the rows of ``export.summaries``)."""
    axes = (0,) + tuple(range(2, activation.ndim))
    rows = {"sum": lambda: activation.sum(axis=axes, dtype=np.float64),
            "squares": lambda: np.square(activation, dtype=np.float64).sum(axis=axes),
            "zeros": lambda: np.count_nonzero(activation <= 0, axis=axes).astype(np.float64)}
    return np.stack([rows[kind]() for kind in kinds])


@dataclass
class ChannelStats:
    """Per-channel count of values, sum, sum of squares and number of exact zeros (or negatives)."""

    channels: int
    kinds: tuple[str, ...] = KINDS
    count: int = 0
    total: np.ndarray = None
    squares: np.ndarray = None
    zeros: np.ndarray = None

    def __post_init__(self):
        self.total = np.zeros(self.channels) if self.total is None else self.total
        self.squares = np.zeros(self.channels) if self.squares is None else self.squares
        self.zeros = np.zeros(self.channels, dtype=np.int64) if self.zeros is None else self.zeros

    def update(self, activation: np.ndarray) -> None:
        """Add a batch (N, C, ...) of activations."""
        self.add(channel_summary(activation), activation.size // self.channels, KINDS)

    def add(self, summary: np.ndarray, count: int, kinds: tuple[str, ...]) -> None:
        """Add a summary of ``count`` values per channel: one row per kind (sum, squares, zeros)."""
        self.count += count
        rows = dict(zip(kinds, summary))
        if "sum" in rows:
            self.total += rows["sum"]
        if "squares" in rows:
            self.squares += rows["squares"]
        if "zeros" in rows:
            self.zeros += np.rint(rows["zeros"]).astype(np.int64)

    def _gathered(self, kind: str) -> None:
        if kind not in self.kinds:
            raise CaffeSurgeryError(f"these statistics hold no '{kind}' per channel (gathered: "
                                    f"{', '.join(self.kinds)}); gather them for this criterion")

    def mean(self) -> np.ndarray:
        self._gathered("sum")
        return self.total / max(self.count, 1)

    def mean_square(self) -> np.ndarray:
        self._gathered("squares")
        return self.squares / max(self.count, 1)

    def zero_fraction(self) -> np.ndarray:
        """APoZ: the fraction of values that are zero (or below, before an activation)."""
        self._gathered("zeros")
        return self.zeros / max(self.count, 1)


@dataclass
class WinStats:
    """Maxout win counts: how often each of a unit's k neurons is its maximum.

    Tie rule: a sample credits the t neurons sharing a unit's maximum 1/t each
    (kept as integer counts per tie size, so merging stays exact); when all k
    neurons tie — typically all zero after ReLU — nobody is credited, so
    neuron 0 gets no credit for a unit that was not active.
    """

    units: int
    k: int
    samples: int = 0
    sole: np.ndarray = None
    shared: np.ndarray = None  # shared[t - 2]: wins shared among t neurons, t = 2..k-1

    def __post_init__(self):
        self.sole = np.zeros((self.units, self.k), dtype=np.int64) if self.sole is None else self.sole
        if self.shared is None:
            self.shared = np.zeros((max(self.k - 2, 0), self.units, self.k), dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        """Add a batch of unit inputs shaped (M, units, k)."""
        top = values.max(axis=2, keepdims=True)
        winners = values == top
        ties = winners.sum(axis=2, keepdims=True)
        self.samples += values.shape[0]
        self.sole += (winners & (ties == 1)).sum(axis=0)
        for size in range(2, self.k):
            self.shared[size - 2] += (winners & (ties == size)).sum(axis=0)

    def frequency(self) -> np.ndarray:
        """r[u, p] = credited wins / samples."""
        credit = self.sole.astype(np.float64)
        for size in range(2, self.k):
            credit += self.shared[size - 2] / size
        return credit / max(self.samples, 1)


def activation_tap(net: Net, blob: BlobVersion) -> BlobVersion:
    """Follow a producer's output through single-use per-channel layers (ReLU, BatchNorm, ...)."""
    while True:
        consumers = net.consumers(blob)
        if len(consumers) != 1 or not layers.carries_channels(consumers[0].type) or len(consumers[0].tops) != 1:
            return blob
        blob = consumers[0].tops[0]


def _win_taps(net: Net, group: Group) -> list[BlobVersion]:
    maxout = group.maxout
    if maxout.form == "reshape-pool":
        return [net.layer(maxout.layers[0]).tops[0]]
    return list(net.layer(maxout.layers[-1]).bottoms)


def _unit_inputs(arrays: list[np.ndarray], group: Group) -> np.ndarray:
    """Arrange tapped arrays as (instances, units, k), instances = samples x positions."""
    maxout = group.maxout
    if maxout.form == "reshape-pool":
        batch = arrays[0].reshape(arrays[0].shape[0], maxout.units, maxout.k)
        return batch
    stacked = np.stack([a.reshape(a.shape[0], maxout.units, -1) for a in arrays], axis=-1)  # N, units, positions, k
    return np.moveaxis(stacked, 2, 1).reshape(-1, maxout.units, maxout.k)


@dataclass
class Statistics:
    """Running statistics for the groups of one net."""

    channels: dict[str, ChannelStats] = field(default_factory=dict)
    tap_index: dict[str, np.ndarray] = field(default_factory=dict)
    group_taps: dict[int, list[str]] = field(default_factory=dict)
    wins: dict[int, WinStats] = field(default_factory=dict)
    win_taps: dict[int, list[str]] = field(default_factory=dict)
    taps: dict[str, BlobVersion] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    kinds: tuple[str, ...] = KINDS
    samples: int = 0

    @classmethod
    def for_groups(cls, net: Net, groups: Groups, group_list: list[Group], shapes, *, channels: bool = True,
                   maxout: bool = False, kinds: tuple[str, ...] = KINDS) -> "Statistics":
        """Plan the taps for the given groups: channel statistics (of ``kinds``) and/or maxout win counts."""
        stats = cls(kinds=tuple(k for k in KINDS if k in kinds))
        for group in group_list:
            if channels:
                for producer in group.producers:
                    tap = activation_tap(net, net.layer(producer).tops[0])
                    stats.taps[tap.key] = tap
                    stats.tap_index[tap.key] = groups.layouts[tap][0].index[:, 0]
                    stats.channels[tap.key] = ChannelStats(int(shapes.blob(tap)[1]), stats.kinds)
                    stats.positions[tap.key] = int(np.prod(shapes.blob(tap)[2:], dtype=np.int64))
                    stats.group_taps.setdefault(group.id, []).append(tap.key)
            if maxout and group.maxout is not None:
                taps = _win_taps(net, group)
                stats.taps.update({t.key: t for t in taps})
                stats.win_taps[group.id] = [t.key for t in taps]
                stats.wins[group.id] = WinStats(group.maxout.units, group.maxout.k)
        return stats

    def __repr__(self) -> str:
        what = [f"channel {'+'.join(self.kinds)} of {', '.join(self.channels)}"] if self.channels else []
        what += [f"maxout wins of groups {', '.join(map(str, self.wins))}"] if self.wins else []
        return f"Statistics({self.samples} samples: {'; '.join(what) or 'nothing gathered'})"

    def channel_taps(self, group_id: int) -> list[str]:
        return self.group_taps.get(group_id, [])

    @property
    def summaries(self) -> list[BlobVersion]:
        """Blobs whose per-channel summaries the runtime computes (channel statistics)."""
        return [self.taps[key] for key in self.channels]

    @property
    def full_taps(self) -> list[BlobVersion]:
        """Blobs the runtime returns whole (maxout win counting)."""
        return [self.taps[key] for keys in self.win_taps.values() for key in keys]

    def update(self, outputs: dict[str, np.ndarray], groups: Groups, samples: int) -> None:
        """Add one batch: runtime outputs with the channel summaries and the maxout taps."""
        self.samples += samples
        for key, channel_stats in self.channels.items():
            channel_stats.add(outputs[summary_name(key)], samples * self.positions[key], self.kinds)
        for gid, win_stats in self.wins.items():
            win_stats.update(_unit_inputs([outputs[k] for k in self.win_taps[gid]], groups.groups[gid]))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"samples": np.array(self.samples)}
        for key, c in self.channels.items():
            arrays.update({f"channel/{key}/count": np.array(c.count), f"channel/{key}/total": c.total,
                           f"channel/{key}/squares": c.squares, f"channel/{key}/zeros": c.zeros})
        for gid, w in self.wins.items():
            arrays.update({f"wins/{gid}/samples": np.array(w.samples), f"wins/{gid}/sole": w.sole,
                           f"wins/{gid}/shared": w.shared})
        return arrays

    def described(self, about: dict | None = None) -> dict[str, np.ndarray]:
        """``to_arrays`` plus the description (``about/*``, the kinds included): what ``save`` writes."""
        arrays = self.to_arrays()
        for key, value in {**(about or {}), "kinds": ",".join(self.kinds)}.items():
            arrays[f"about/{key}"] = np.array(value)
        return arrays

    def save(self, path: str | os.PathLike, about: dict | None = None) -> None:
        """Write the statistics as an .npz (atomically)."""
        save_arrays(path, self.described(about))

    def load_arrays(self, arrays, source: str) -> None:
        """Replace the running values with those saved in ``arrays`` (from ``save``)."""
        saved = str(arrays["about/kinds"]).split(",") if "about/kinds" in arrays else []
        missing = [kind for kind in (self.kinds if self.channels else ()) if kind not in saved]
        if missing:
            raise CaffeSurgeryError(f"statistics file lacks the per-channel {', '.join(missing)} this criterion "
                                    "reads: gather them with 'relevance --criterion' of this criterion", file=source)
        try:
            self.samples = int(arrays["samples"])
            for key, c in self.channels.items():
                c.count = int(arrays[f"channel/{key}/count"])
                c.total, c.squares, c.zeros = (arrays[f"channel/{key}/{n}"] for n in ("total", "squares", "zeros"))
                if not c.total.shape == c.squares.shape == c.zeros.shape == (c.channels,):
                    raise CaffeSurgeryError(f"statistics of {key} are not for {c.channels} channels: gathered "
                                            "for another net", file=source)
            for gid, w in self.wins.items():
                w.samples = int(arrays[f"wins/{gid}/samples"])
                w.sole, w.shared = arrays[f"wins/{gid}/sole"], arrays[f"wins/{gid}/shared"]
                if w.sole.shape != (w.units, w.k) or w.shared.shape != (max(w.k - 2, 0), w.units, w.k):
                    raise CaffeSurgeryError(f"win counts of group {gid} are not for {w.units} units of {w.k}: "
                                            "gathered for another net", file=source)
        except KeyError as exc:
            raise CaffeSurgeryError(f"statistics file lacks {exc.args[0]}: gathered for another net or criterion",
                                    file=source) from None
        except (TypeError, ValueError) as exc:
            raise CaffeSurgeryError(f"statistics file holds a malformed count: {exc}", file=source) from None


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a statistics .npz (no pickled objects); CaffeSurgeryError for a truncated or foreign file."""
    limits.regular_file_size(path, "statistics file", CaffeSurgeryError)
    try:
        with np.load(path, allow_pickle=False) as part:
            if not isinstance(part, np.lib.npyio.NpzFile):
                raise ValueError("an .npy array, not an .npz archive")
            return {key: part[key] for key in part.files}
    except (OSError, ValueError, EOFError, KeyError, MemoryError, zipfile.BadZipFile, zlib.error) as exc:
        raise CaffeSurgeryError(f"not a statistics file (truncated or corrupt: {exc})", file=str(path)) from None


def merge_files(paths: list[str | os.PathLike]) -> dict[str, np.ndarray]:
    """Add statistics files of shards of one pass; their descriptions (about/*) must agree."""
    return merge_arrays((str(path), load_file(path)) for path in paths)


def merge_arrays(parts: Iterable[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Add the arrays of shards of one pass, in the given order, key by key; ``parts`` are (name for
    errors, arrays) pairs whose descriptions (about/*, all but the shard) must agree."""
    merged: dict[str, np.ndarray] = {}
    for name, arrays in parts:
        if merged and set(arrays) != set(merged):
            raise CaffeSurgeryError("gathered for other layers than the first file", file=name)
        for key, value in arrays.items():
            if key.startswith("about/"):
                if key in merged and not np.array_equal(merged[key], value) and key != "about/shard":
                    raise CaffeSurgeryError(f"{key[6:]} differs from the first file's", file=name)
                merged[key] = value
            elif key in merged and merged[key].shape != value.shape:
                raise CaffeSurgeryError(f"{key} has shape {value.shape}, the first file's {merged[key].shape}",
                                        file=name)
            else:
                merged[key] = merged[key] + value if key in merged else value
    merged.pop("about/shard", None)
    return merged


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write a dict of arrays as .npz, atomically."""
    buffer = BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, [buffer.getvalue()])
