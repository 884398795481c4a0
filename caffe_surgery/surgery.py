"""Applying a resolved plan: a smaller net that computes what the original computes
with the removed channels switched off.

Every blob's channel axis is renumbered from its layout (see ``groups``):
producers lose output rows, consumers lose the matching input columns (a block
of H*W columns per channel after a flatten), per-channel layers lose the
matching parameters, Slice points and Reshape dims are rewritten, and maxout
units shrink to k' neurons (survivors move between Eltwise-MAX branches so
every branch keeps the same size). Layer and blob names, in-place chains and
layer order stay as they were. The original net is never modified. How each
type's params and blobs change is its declared rewrite (``layers``, the
``rewrite`` facet); the surgeon gives the rewrites the kept positions.
"""
from __future__ import annotations

import numpy as np

from . import caffe_pb2, layers
from .graph import BlobVersion, Layer, Net, net_from_layers
from .groups import Group, Groups, Layout, Maxout, Piece
from .shapes import NetShapes, infer_shapes


def _renumbering(group: Group, kept: np.ndarray) -> np.ndarray:
    """Old group index -> new group index, -1 where removed."""
    new = np.full(group.size, -1, dtype=np.int64)
    maxout = group.maxout
    if maxout is None:
        new[kept] = np.arange(kept.size)
        return new
    alive = np.isin(maxout.neurons, kept)
    units = np.nonzero(alive.any(axis=1))[0]
    k_new = int(alive[units[0]].sum())
    for u_new, unit in enumerate(units):
        for j, position in enumerate(np.nonzero(alive[unit])[0]):
            new[maxout.neurons[unit, position]] = maxout.new_neuron(u_new, j, units.size, k_new)
    return new


class _Surgeon:
    def __init__(self, net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray]):
        self.net, self.shapes, self.groups = net, shapes, groups
        self.renumber = {gid: _renumbering(groups.groups[gid], kept) for gid, kept in keep.items()}
        self.removed: set[str] = set()
        self.blobs: dict[str, list[np.ndarray]] = {}

    # -- positions -----------------------------------------------------------
    def positions(self, layout: Layout) -> np.ndarray | None:
        """Old channel positions of a blob in their new order; None when nothing changes."""
        parts, offset, changed = [], 0, False
        for piece in layout:
            new = self.renumber.get(piece.group)
            if new is None:
                parts.append(np.arange(piece.width) + offset)
            else:
                changed = True
                mapped = new[piece.index]
                if piece.index.shape[1] == 1:
                    alive = np.nonzero(mapped[:, 0] >= 0)[0]
                    channels = alive[np.argsort(mapped[alive, 0], kind="stable")]
                else:
                    channels = np.nonzero((mapped >= 0).any(axis=1))[0]
                parts.append((channels[:, None] * piece.block + np.arange(piece.block)).ravel() + offset)
            offset += piece.width
        return np.concatenate(parts) if changed else None

    def blob_positions(self, blob: BlobVersion, flatten: bool = False) -> np.ndarray | None:
        layout = self.groups.layouts[blob]
        if flatten:
            spatial = int(np.prod(self.shapes.blob(blob)[2:], dtype=np.int64))
            layout = [Piece(p.group, p.index, p.block * spatial) for p in layout]
        return self.positions(layout)

    def new_width(self, blob: BlobVersion) -> int:
        kept = self.blob_positions(blob)
        return int(self.shapes.blob(blob)[1]) if kept is None else int(kept.size)

    @staticmethod
    def take(array: np.ndarray, positions: np.ndarray | None, axis: int) -> np.ndarray:
        """``array`` restricted to ``positions`` along ``axis`` (unchanged for None)."""
        return array if positions is None else np.take(array, positions, axis=axis)

    def branch_group(self, layer: Layer) -> Group | None:
        """The pruned Eltwise-MAX maxout group whose branch ``layer`` produces, if any."""
        group = self.groups.of_layer(layer.name)
        if group is None or group.id not in self.renumber or group.maxout is None or group.maxout.form != "eltwise-max":
            return None
        return group

    def branch_rows(self, layer: Layer, group: Group, out_axis: int) -> list[np.ndarray]:
        """Rows of branch p' of a pruned Eltwise-MAX maxout: unit u's p'-th surviving neuron, from whichever branch."""
        maxout: Maxout = group.maxout
        branch = maxout.branches.index(layer.name)
        alive = self.renumber[group.id][maxout.neurons] >= 0
        sources = [self.net.layer(name).blobs for name in maxout.branches]
        gathered = [[] for _ in sources[0]]
        for unit in np.nonzero(alive.any(axis=1))[0]:
            origin = np.nonzero(alive[unit])[0][branch]
            for i, blob in enumerate(sources[origin]):
                gathered[i].append(np.take(blob, [unit], axis=out_axis if i == 0 else 0))
        return [np.concatenate(parts, axis=out_axis if i == 0 else 0) for i, parts in enumerate(gathered)]

    # -- per layer -------------------------------------------------------------
    def run(self) -> caffe_pb2.NetParameter:
        for group in self.groups.groups:
            if group.maxout is not None and group.id in self.renumber and group.maxout.form != "reshape-pool":
                self._mark_removed_branches(group)
        out = caffe_pb2.NetParameter()
        out.CopyFrom(self.net.header)
        for layer in self.net.layers:
            if layer.name in self.removed:
                continue
            param = caffe_pb2.LayerParameter()
            param.CopyFrom(layer.param)
            blobs = list(layer.blobs)
            declaration = layers.lookup(layer.type)
            if declaration is not None and not isinstance(declaration.rewrite, layers.NotApplicable):
                blobs = declaration.rewrite(self, layer, param, blobs)
            self.blobs[layer.name] = blobs
            out.layer.add().CopyFrom(param)
        for group in self.groups.groups:
            if group.maxout is not None and group.id in self.renumber and group.maxout.form != "reshape-pool":
                self._rewire_max(group, out)
        return out

    def kept_k(self, group: Group) -> int:
        """Neurons per unit after pruning a maxout group."""
        alive = self.renumber[group.id][group.maxout.neurons] >= 0
        return int(alive[alive.any(axis=1)][0].sum())

    def _mark_removed_branches(self, group: Group) -> None:
        maxout = group.maxout
        k_new = self.kept_k(group)
        for chain in maxout.chains[k_new:]:
            self.removed.update(chain)
        if maxout.form == "eltwise-max":
            self.removed.update(maxout.branches[k_new:])

    def _rewire_max(self, group: Group, net: caffe_pb2.NetParameter) -> None:
        """Trim the Eltwise MAX (and Slice) to k' inputs; with k' = 1 they become identities."""
        maxout = group.maxout
        k_new = self.kept_k(group)
        units = int((self.renumber[group.id][maxout.neurons] >= 0).any(axis=1).sum())
        layers = {layer.name: layer for layer in net.layer}
        eltwise = layers[maxout.layers[-1]]
        del eltwise.bottom[k_new:]
        if maxout.form == "slice-eltwise-max":
            slicer = layers[maxout.layers[0]]
            del slicer.top[k_new:]
            slicer.slice_param.ClearField("slice_point")
            slicer.slice_param.slice_point.extend(units * i for i in range(1, k_new))
            if k_new == 1:
                _make_identity(slicer)
        if k_new == 1:
            _make_identity(eltwise)


def _make_identity(param: caffe_pb2.LayerParameter) -> None:
    """Turn a one-input Slice or Eltwise into a Split, which Caffe and OpenCV run as an identity."""
    for name in ("slice_param", "eltwise_param"):
        param.ClearField(name)
    param.type = "Split"


def apply_plan(net: Net, shapes: NetShapes, groups: Groups, keep: dict[int, np.ndarray]) -> tuple[Net, NetShapes]:
    """Prune the net as ``keep`` (from ``resolve_plan``) says; return the new net and its shapes."""
    surgeon = _Surgeon(net, shapes, groups, keep)
    pruned_param = surgeon.run()
    pruned = net_from_layers(pruned_param, source=net.source)
    for layer in pruned.layers:
        layer.blobs = surgeon.blobs[layer.name]
    inputs = {top.name: tuple(shapes.blob(top)) for layer in net.layers if not layer.bottoms for top in layer.tops}
    return pruned, infer_shapes(pruned, inputs)
