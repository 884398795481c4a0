"""Least-squares refits of the layers that read pruned channels (He et al. 2017; ThiNet's reconstruction).

A *consumer* is a Convolution (group 1) or InnerProduct layer whose input blob
loses channels, directly or through per-channel layers, Pooling, Flatten or
Concat. Its input rows X (an InnerProduct's flattened input; a Convolution's
im2col patches at ``POSITIONS_PER_IMAGE`` output positions per image, drawn
by a generator seeded with the sample's index, so shards draw what one pass
draws) and its target outputs Y at the same places are reduced to sufficient
statistics in float64: the Gram matrix [X 1]^T [X 1], the cross term
[X 1]^T Y and the sum of Y^2. Those are sums over samples, so shards merge by
adding their arrays (``statistics.merge_files``).

The refit solves min ||Y - [X 1] W||^2 + lambda ||W - W0||^2, a ridge pulled
towards W0, the consumer's own weights for the kept inputs, with lambda =
``ridge`` times the mean diagonal of the Gram matrix: when nothing is removed
the least-squares solution is W0 itself, whatever lambda, so the refit
reproduces the weights; inputs the data never excites keep their weights.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .backends import open_runtime
from .graph import Layer, Net
from .groups import Groups
from .model import Model
from .shapes import NetShapes
from .surgery import apply_plan

POSITIONS_PER_IMAGE = 10
"""Output positions sampled per image for a Convolution: neighbouring positions are nearly the same
regression row, so a few from each of many images inform the fit more than every position of a few;
He et al. and ThiNet sample 10 as well. Rows = images x 10, many times the regressors (C*k*k + 1)."""
RIDGE = 1e-6
"""lambda relative to the mean diagonal of the Gram matrix: only keeps the solve well posed."""

Batches = Callable[[], Iterable[tuple[np.ndarray, object]]]
SumsOf = Callable[[Model, Model, str], "LeastSquares"]
"""How one consumer's statistics are gathered: (net feeding it, net giving its target outputs, its name)."""


@dataclass
class LeastSquares:
    """Sufficient statistics of one consumer's regression: [X 1]^T [X 1], [X 1]^T Y, sum Y^2, rows."""

    gram: np.ndarray
    cross: np.ndarray
    squares: float = 0.0
    rows: int = 0

    @classmethod
    def empty(cls, inputs: int, outputs: int, bias: bool) -> "LeastSquares":
        width = inputs + int(bias)
        return cls(np.zeros((width, width)), np.zeros((width, outputs)))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add regression rows x (M, D) with targets y (M, O)."""
        x = x.astype(np.float64)
        if self.gram.shape[0] == x.shape[1] + 1:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        y = y.astype(np.float64)
        self.gram += x.T @ x
        self.cross += x.T @ y
        self.squares += float((y * y).sum())
        self.rows += len(x)

    def solve(self, start: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
        """The ridge solution pulled towards ``start`` (see the module docstring)."""
        strength = ridge * max(float(np.trace(self.gram)) / len(self.gram), np.finfo(float).tiny)
        system = self.gram + strength * np.eye(len(self.gram))
        return np.linalg.solve(system, self.cross + strength * start)

    def relative_error(self, weights: np.ndarray) -> float:
        """||Y - [X 1] W||^2 / ||Y||^2 over the rows seen."""
        residual = self.squares - 2 * float((weights * self.cross).sum()) + float(
            (weights * (self.gram @ weights)).sum())
        return max(residual, 0.0) / max(self.squares, np.finfo(float).tiny)

    def to_arrays(self, name: str) -> dict[str, np.ndarray]:
        return {f"refit/{name}/gram": self.gram, f"refit/{name}/cross": self.cross,
                f"refit/{name}/squares": np.array(self.squares), f"refit/{name}/rows": np.array(self.rows)}

    @classmethod
    def from_arrays(cls, arrays, name: str) -> "LeastSquares":
        return cls(arrays[f"refit/{name}/gram"], arrays[f"refit/{name}/cross"],
                   float(arrays[f"refit/{name}/squares"]), int(arrays[f"refit/{name}/rows"]))


# -- consumers: weights as a matrix, regression rows -----------------------------------------

def _pair(param, name: str, default: int) -> tuple[int, int]:
    """A 2-D convolution setting: ``name_h``/``name_w``, else the repeated ``name`` (one value or two)."""
    if name != "dilation" and param.HasField(f"{name}_h"):
        return int(getattr(param, f"{name}_h")), int(getattr(param, f"{name}_w"))
    values = [int(v) for v in getattr(param, name if name != "kernel" else "kernel_size")] or [default]
    return values[0], values[-1]


def _geometry(layer: Layer) -> tuple[tuple[int, int], ...]:
    """Kernel, stride, pad and dilation of a 2-D convolution."""
    p = layer.param.convolution_param
    return _pair(p, "kernel", 1), _pair(p, "stride", 1), _pair(p, "pad", 0), _pair(p, "dilation", 1)


def is_refittable(layer: Layer, shapes: NetShapes) -> str | None:
    """None when the layer can be refit, else why not."""
    if layer.type == "InnerProduct":
        return None if layer.blobs else "no weights"
    if layer.type != "Convolution":
        return f"{layer.type} layers are not refit"
    if layer.param.convolution_param.group != 1:
        return "grouped convolution"
    if len(shapes.blob(layer.bottoms[0])) != 4:
        return "not a 2-D convolution"
    return None if layer.blobs else "no weights"


def weight_matrix(layer: Layer) -> np.ndarray:
    """The layer's weights as W (inputs [+ 1 bias row], outputs) in float64: output = [x 1] @ W."""
    weight = layer.blobs[0].astype(np.float64)
    if layer.type == "InnerProduct":
        matrix = weight if layer.param.inner_product_param.transpose else weight.T
    else:
        matrix = weight.reshape(weight.shape[0], -1).T
    if len(layer.blobs) > 1:
        matrix = np.concatenate([matrix, layer.blobs[1].astype(np.float64).reshape(1, -1)])
    return matrix


def set_weight_matrix(layer: Layer, matrix: np.ndarray) -> None:
    """Write W (as from ``weight_matrix``) back into the layer's float32 blobs."""
    weight = layer.blobs[0]
    inputs = matrix[:-1] if len(layer.blobs) > 1 else matrix
    if layer.type == "InnerProduct":
        new = inputs if layer.param.inner_product_param.transpose else inputs.T
    else:
        new = inputs.T.reshape(weight.shape)
    layer.blobs[0] = np.ascontiguousarray(new, dtype=np.float32)
    if len(layer.blobs) > 1:
        layer.blobs[1] = matrix[-1].astype(np.float32)


def sampled_positions(first_index: int, count: int, height: int, width: int, per_image: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, y, x) output positions: ``per_image`` distinct ones per image, drawn from the sample's index."""
    images, ys, xs = [], [], []
    cells = height * width
    for n in range(count):
        rng = np.random.default_rng([seed, first_index + n])
        chosen = rng.choice(cells, size=min(per_image, cells), replace=False)
        images.append(np.full(chosen.size, n))
        ys.append(chosen // width)
        xs.append(chosen % width)
    return np.concatenate(images), np.concatenate(ys), np.concatenate(xs)


def regression_rows(layer: Layer, bottom: np.ndarray, top: np.ndarray, first_index: int,
                    per_image: int = POSITIONS_PER_IMAGE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows (X, Y) of a consumer: flattened inputs and outputs, or im2col patches at sampled positions."""
    if layer.type == "InnerProduct":
        return bottom.reshape(len(bottom), -1), top.reshape(len(top), -1)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(layer)
    images, oy, ox = sampled_positions(first_index, len(bottom), top.shape[2], top.shape[3], per_image, seed)
    padded = np.pad(bottom, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    rows = oy[:, None] * sh + np.arange(kh)[None, :] * dh
    cols = ox[:, None] * sw + np.arange(kw)[None, :] * dw
    channels = np.arange(bottom.shape[1])
    patches = padded[images[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                     cols[:, None, None, :]]
    return patches.reshape(len(images), -1), top[images, :, oy, ox]


def accumulate(input_net: Net, input_shapes: NetShapes, target_net: Net, target_shapes: NetShapes,
               layers: list[str], batches: Iterable, runtime_options: dict | None = None,
               first_index: int = 0, seed: int = 0) -> dict[str, LeastSquares]:
    """One pass: each named layer's input from ``input_net`` against its output in ``target_net``."""
    options = runtime_options or {}
    inputs = {name: input_net.layer(name).bottoms[0] for name in layers}
    targets = {name: target_net.layer(name).tops[0] for name in layers}
    same = input_net is target_net
    input_runtime = open_runtime(input_net, input_shapes, outputs=(),
                            taps=list(inputs.values()) + (list(targets.values()) if same else []), **options)
    target_runtime = input_runtime if same else open_runtime(target_net, target_shapes, outputs=(),
                                                        taps=list(targets.values()), **options)
    sums = {}
    for name in layers:
        layer = input_net.layer(name)
        inputs_width = int(np.prod(input_shapes.blob(inputs[name])[1:])) if layer.type == "InnerProduct" else (
            int(np.prod(layer.blobs[0].shape[1:])))
        sums[name] = LeastSquares.empty(inputs_width, int(target_shapes.blob(targets[name])[1]), len(layer.blobs) > 1)
    seen = first_index
    for images, _labels in batches:
        found = input_runtime.run(images)
        wanted = found if same else target_runtime.run(images)
        for name in layers:
            x, y = regression_rows(input_net.layer(name), found[inputs[name].key], wanted[targets[name].key],
                                   seen, seed=seed)
            sums[name].add(x, y)
        seen += len(images)
    return sums


def local_sums(batches: Batches, runtime_options: dict | None = None) -> SumsOf:
    """Each consumer's statistics in one pass over ``batches()`` in this process."""
    def sums_of(source: Model, target: Model, name: str) -> LeastSquares:
        return accumulate(source.net, source.shapes, target.net, target.shapes, [name], batches(), runtime_options)[name]
    return sums_of


@dataclass(frozen=True)
class LeastSquaresTask:
    """``accumulate`` for one consumer as a task of ``cluster.map_shards`` (the model is the net feeding
    it): each shard samples conv positions from its first sample's index on, as one pass would."""

    target: Model
    layer: str
    runtime_options: dict

    def __call__(self, model: Model, batches) -> dict[str, np.ndarray]:
        sums = accumulate(model.net, model.shapes, self.target.net, self.target.shapes, [self.layer], batches,
                          self.runtime_options, first_index=getattr(batches, "first_index", 0))
        return sums[self.layer].to_arrays(self.layer)


def cluster_sums(data, runtime_options: dict, shards: int | None, address: str | None) -> SumsOf:
    """Each consumer's statistics from ``shards`` tasks on the Ray cluster at ``address``, added in shard
    order (``data``: a ``DataRequest``, opened by each task)."""
    from .cluster import map_shards

    def sums_of(source: Model, target: Model, name: str) -> LeastSquares:
        arrays = map_shards(LeastSquaresTask(target, name, runtime_options), source, data, shards, engine="ray",
                            address=address, desc=f"refit {name}")
        return LeastSquares.from_arrays(arrays, name)
    return sums_of


# -- which layers, and the refit ------------------------------------------------------------------

def changed(groups: Groups, blob, keep: dict[int, np.ndarray]) -> bool:
    """Whether pruning with ``keep`` changes the channels of this blob."""
    return any(p.group in keep and keep[p.group].size < groups.groups[p.group].size for p in groups.layouts[blob])


def consumers(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray]) -> tuple[list[str], list[str]]:
    """The refittable layers reading a changed blob, in net order, and notes on those that cannot be."""
    names, notes = [], []
    for layer in net.layers:
        if layer.type not in ("Convolution", "Deconvolution", "InnerProduct") or not layer.bottoms:
            continue
        if not changed(groups, layer.bottoms[0], keep) or layer.name in groups.depthwise:
            continue
        reason = is_refittable(layer, shapes)
        if reason is None:
            names.append(layer.name)
        else:
            notes.append(f"{layer.name}: not refit ({reason})")
    return names, notes


def _own_rows_only(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray], name: str):
    """The original net pruned at this layer's own outputs only: its output rows are the pruned layer's."""
    own = groups.of_layer(name)
    if own is None or own.id not in keep:
        return net, shapes
    return apply_plan(net, shapes, groups, {own.id: keep[own.id]})


def _upstream_only(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray], name: str):
    """The original net pruned only in the groups this layer reads (independent refits)."""
    read = {p.group for p in groups.layouts[net.layer(name).bottoms[0]]}
    return apply_plan(net, shapes, groups, {gid: kept for gid, kept in keep.items() if gid in read})


@dataclass
class Refit:
    """What happened to one consumer: how far its output is from the original's, before and after."""

    layer: str
    method: str
    rows: int
    error_before: float
    error_after: float

    def as_dict(self) -> dict:
        return {"layer": self.layer, "method": self.method, "rows": self.rows,
                "relative_error": [self.error_before, self.error_after]}

    def note(self) -> str:
        return (f"{self.layer}: {self.method} on {self.rows} rows, relative output error "
                f"{self.error_before:.4g} -> {self.error_after:.4g}")


def reconstruct(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray], sums_of: SumsOf, *,
                sequential: bool = True, ridge: float = RIDGE) -> tuple[Net, NetShapes, list[Refit], list[str]]:
    """Prune, then refit every consumer by least squares to the original net's outputs, its statistics
    gathered by ``sums_of`` (``local_sums`` or ``cluster_sums``).

    ``sequential``: consumers in net order, each fed by the already refit
    pruned net; else each is fed by the original net pruned only in the
    groups it reads.
    """
    pruned, pruned_shapes = apply_plan(net, shapes, groups, keep)
    names, notes = consumers(net, shapes, groups, keep)
    refits = []
    for name in names:
        target, target_shapes = _own_rows_only(net, shapes, groups, keep, name)
        source, source_shapes = (pruned, pruned_shapes) if sequential else _upstream_only(net, shapes, groups, keep, name)
        sums = sums_of(Model(source, source_shapes), Model(target, target_shapes), name)
        layer = pruned.layer(name)
        start = weight_matrix(layer)
        solved = sums.solve(start, ridge)
        set_weight_matrix(layer, solved)
        refits.append(Refit(name, "least-squares refit", sums.rows, sums.relative_error(start),
                            sums.relative_error(solved)))
    return pruned, pruned_shapes, refits, notes


# -- bias compensation ----------------------------------------------------------------------------

def removed_columns(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray], name: str) -> np.ndarray:
    """Rows of ``weight_matrix`` (original net) that read removed channels: a block of H*W per channel
    for an InnerProduct's flatten, k*k kernel taps per channel for a Convolution. A maxout output
    channel is removed when its whole unit is."""
    layer = net.layer(name)
    bottom = layer.bottoms[0]
    if layer.type == "InnerProduct":
        block = int(np.prod(shapes.blob(bottom)[2:], dtype=np.int64))
    else:
        block = int(np.prod(layer.blobs[0].shape[2:], dtype=np.int64))
    gone, offset = [], 0
    for piece in groups.layouts[bottom]:
        width = piece.block * block
        kept = keep.get(piece.group)
        if kept is not None:
            removed = np.nonzero(~np.isin(piece.index, kept).any(axis=1))[0]
            gone.append((removed[:, None] * width + np.arange(width)).ravel() + offset)
        offset += len(piece.index) * width
    return np.concatenate(gone) if gone else np.zeros(0, dtype=np.int64)


def compensate(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray], batches: Batches, *,
               runtime_options: dict | None = None) -> tuple[Net, list[Refit], list[str]]:
    """A copy of the net whose consumers' biases absorb the removed inputs' mean values.

    The means are those of the consumer's own input columns (im2col rows for a
    Convolution, so zero padding is accounted for), whatever lies between it
    and the pruned producer (ReLU, Pooling, Flatten, Concat). Returns the
    adjusted net (apply the plan to it), the refits and notes.
    """
    names, notes = consumers(net, shapes, groups, keep)
    adjusted = copy.deepcopy(net)
    refits = []
    sums = accumulate(net, shapes, net, shapes, names, batches(), runtime_options) if names else {}
    for name in names:
        layer = adjusted.layer(name)
        if len(layer.blobs) < 2:
            notes.append(f"{name}: no bias to compensate into")
            continue
        gone = removed_columns(net, shapes, groups, keep, name)
        if gone.size == 0:
            notes.append(f"{name}: nothing to compensate (its inputs change, none is removed)")
            continue
        full = weight_matrix(layer)
        switched_off = full.copy()
        switched_off[gone] = 0
        means = sums[name].gram[-1, gone] / max(sums[name].rows, 1)
        compensated = switched_off.copy()
        compensated[-1] += means @ full[gone]
        set_weight_matrix(layer, compensated)
        refits.append(Refit(name, f"bias compensation of {gone.size} inputs", sums[name].rows,
                            sums[name].relative_error(switched_off), sums[name].relative_error(compensated)))
    return adjusted, refits, notes
