"""What can be removed together: channel groups over the net's blobs.

Every blob version's channel axis (axis 1) is described as a *layout*: a list
of pieces, each naming a group and, for every blob channel of the piece, the
group indices that feed it (one index normally, the k neurons of a unit at a
maxout output). Producers (Convolution, Deconvolution, InnerProduct) open a
group; per-channel layers pass the layout through; Concat and Slice join and
cut layouts; Flatten (and an InnerProduct's implicit flatten) widens each
channel to a block of H*W columns; Eltwise SUM/PROD merges the groups of its
inputs. Layers that mix channels in ways a channel subset cannot follow pin
the groups they read, with the reason. What each type does is its declared
channel rule (``layers``, the ``channels`` facet); this module holds the
machinery those rules use. Maxout units (Reshape + global MAX Pooling, Eltwise
MAX over branches, Slice + Eltwise MAX) are recognised and recorded on their group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import caffe_pb2, layers
from .graph import BlobVersion, Layer, Net
from .shapes import NetShapes


@dataclass
class Piece:
    """A run of blob channels fed by one group: ``index[j]`` lists the group indices behind channel j."""

    group: int
    index: np.ndarray  # shape (channels, unit)
    block: int = 1     # consecutive blob positions per channel (after a flatten)

    @property
    def width(self) -> int:
        return len(self.index) * self.block


Layout = list  # list[Piece]


@dataclass
class Maxout:
    """A maxout structure: ``units`` units of ``k`` neurons each."""

    form: str                 # "reshape-pool", "eltwise-max" or "slice-eltwise-max"
    units: int
    k: int
    neurons: np.ndarray       # (units, k): the group index of neuron p of unit u
    layers: list[str]         # the layers that build the max (Reshape+Pooling, Slice, Eltwise)
    branches: list[str] = field(default_factory=list)   # eltwise-max: the producer of each branch
    chains: list[list[str]] = field(default_factory=list)  # parameter-free layers between a branch and the max

    def new_neuron(self, unit: int, position: int, units: int, k: int) -> int:
        """Group index of neuron ``position`` of ``unit`` in a pruned group of ``units`` x ``k``.

        Unit-major (u*k + p) where the group is numbered so; branch-major
        (p*units + u) for a sliced producer, whose own channels are numbered so.
        """
        return position * units + unit if self.form == "slice-eltwise-max" else unit * k + position


@dataclass
class Member:
    """How a layer takes part in a group: ``role`` is out, in, channel or structure."""

    layer: str
    role: str
    detail: str = ""


@dataclass
class Group:
    """A set of channels that must be removed together, with everything they touch."""

    id: int
    size: int
    producers: list[str]
    members: list[Member] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    chunks: int = 1
    maxout: Maxout | None = None

    @property
    def prunable(self) -> bool:
        return not self.pinned and bool(self.producers)

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else f"group{self.id}"

    def __repr__(self) -> str:
        kind = f", maxout {self.maxout.units}x{self.maxout.k}" if self.maxout is not None else ""
        state = "prunable" if self.prunable else f"pinned: {'; '.join(self.pinned) or 'no producer'}"
        return f"Group({self.id}, {self.name!r}: {self.size} channels{kind}, {len(self.members)} members, {state})"


class Groups:
    """The channel groups of a net and the layout of every blob version."""

    def __init__(self, groups: list[Group], layouts: dict[BlobVersion, Layout]):
        self.groups = groups
        self.layouts = layouts
        self._by_producer = {p: g for g in groups for p in g.producers}
        self._by_maxout_layer = {name: g for g in groups if g.maxout is not None for name in g.maxout.layers}
        self.depthwise = {m.layer for g in groups for m in g.members if m.role == "depthwise"}

    def of_layer(self, layer_name: str) -> Group | None:
        """The group a producer layer opens (None for other layers)."""
        return self._by_producer.get(layer_name)

    def maxout_built_by(self, layer_name: str) -> Group | None:
        """The maxout group whose max this layer helps build (Reshape, Pooling, Slice, Eltwise), if any."""
        return self._by_maxout_layer.get(layer_name)

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def __repr__(self) -> str:
        return f"Groups({len(self.groups)} groups, prunable: {', '.join(g.name for g in self.prunable()) or '-'})"


class _Builder:
    def __init__(self, net: Net, shapes: NetShapes):
        self.net = net
        self.shapes = shapes
        self.parent: list[int] = []
        self.groups: list[Group] = []
        self.layouts: dict[BlobVersion, Layout] = {}
        self.handled: set[str] = set()  # layers already given their layout by a maxout pattern

    # -- groups and union-find -------------------------------------------------
    def new_group(self, size: int, producer: str | None, pinned: str | None = None) -> int:
        gid = len(self.groups)
        self.groups.append(Group(gid, size, [producer] if producer else [], pinned=[pinned] if pinned else []))
        self.parent.append(gid)
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def group(self, gid: int) -> Group:
        return self.groups[self.find(gid)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        keep, gone = self.groups[ra], self.groups[rb]
        keep.producers += [p for p in gone.producers if p not in keep.producers]
        keep.members += gone.members
        keep.pinned += gone.pinned
        keep.chunks = int(np.lcm(keep.chunks, gone.chunks))
        self.parent[rb] = ra

    def pin(self, layout: Layout, reason: str) -> None:
        for piece in layout:
            group = self.group(piece.group)
            if reason not in group.pinned:
                group.pinned.append(reason)

    def member(self, layout: Layout, layer: Layer, role: str, detail: str = "") -> None:
        for gid in {self.find(p.group) for p in layout}:
            self.groups[gid].members.append(Member(layer.name, role, detail))

    # -- layouts ---------------------------------------------------------------
    def channels(self, blob: BlobVersion) -> int:
        shape = self.shapes.blob(blob)
        return int(shape[1]) if len(shape) > 1 else 1

    def fresh(self, blob: BlobVersion, producer: str | None, pinned: str | None) -> Layout:
        size = self.channels(blob)
        gid = self.new_group(size, producer, pinned)
        return [Piece(gid, np.arange(size).reshape(size, 1))]

    def pinned_output(self, layer: Layer, reason: str) -> None:
        for top in layer.tops:
            self.layouts[top] = self.fresh(top, None, reason)

    def flattened(self, layout: Layout, blob: BlobVersion) -> Layout:
        spatial = int(np.prod(self.shapes.blob(blob)[2:], dtype=np.int64))
        return [Piece(p.group, p.index, p.block * spatial) for p in layout]

    @staticmethod
    def cut(layout: Layout, start: int, stop: int) -> Layout | None:
        """Blob positions [start, stop) of a layout; None when a cut splits a channel's block."""
        out, position = [], 0
        for piece in layout:
            lo, hi = max(start, position), min(stop, position + piece.width)
            if lo < hi:
                if (lo - position) % piece.block or (hi - position) % piece.block:
                    return None
                out.append(Piece(piece.group, piece.index[(lo - position) // piece.block:(hi - position) // piece.block],
                                 piece.block))
            position += piece.width
        return out

    # -- per layer -------------------------------------------------------------
    def run(self) -> Groups:
        for layer in self.net.layers:
            self.visit(layer)
        for blob in self.net.outputs():
            self.pin(self.layouts[blob], f"feeds net output '{blob.name}'")
        roots = sorted({self.find(g.id) for g in self.groups})
        groups = [self.groups[r] for r in roots]
        for gid, group in enumerate(groups):
            group.id = gid
        renumber = {r: i for i, r in enumerate(roots)}
        layouts = {blob: [Piece(renumber[self.find(p.group)], p.index, p.block) for p in layout]
                   for blob, layout in self.layouts.items()}
        return Groups(groups, layouts)

    def visit(self, layer: Layer) -> None:
        """Give the layer's tops their layouts by its type's channel rule (an unknown type pins)."""
        if layer.name in self.handled:
            return
        declaration = layers.lookup(layer.type)
        rule = declaration.channels if declaration is not None else layers.PIN
        rule.apply(self, layer, [self.layouts[b] for b in layer.bottoms])

    def pass_through(self, layer: Layer, layout: Layout, role: str) -> None:
        """The layer's tops carry its bottom's channels unchanged."""
        self.member(layout, layer, role)
        for top in layer.tops:
            self.layouts[top] = layout

    def maxout_reshape(self, layer, layout, before, after) -> bool:
        """Reshape (N, m*k) -> (N, m, k[, 1]) read only by a global MAX Pooling: a maxout layer."""
        if len(after) not in (3, 4) or after[0] != before[0] or (len(after) == 4 and after[3] != 1):
            return False
        if int(np.prod(before[1:])) != after[1] * after[2] or len(layout) != 1 or layout[0].block != 1:
            return False
        consumers = self.net.consumers(layer.tops[0])
        if len(consumers) != 1 or consumers[0].type != "Pooling":
            return False
        pool = consumers[0]
        param = pool.param.pooling_param
        if param.pool != caffe_pb2.PoolingParameter.MAX or self.shapes.blob(pool.tops[0])[1:] != (after[1], 1, 1)[:len(after) - 1]:
            return False
        units, k = after[1], after[2]
        piece = layout[0]
        group = self.group(piece.group)
        if group.maxout is not None or len(piece.index) != units * k or piece.index.shape[1] != 1:
            return False
        group.maxout = Maxout("reshape-pool", units, k, piece.index[:, 0].reshape(units, k), [layer.name, pool.name])
        group.members.append(Member(layer.name, "structure", f"maxout reshape to {units} units of {k}"))
        group.members.append(Member(pool.name, "structure", "maxout max over each unit"))
        neurons = piece.index[:, 0].reshape(units, k)
        self.layouts[layer.tops[0]] = [Piece(piece.group, neurons)]
        self.layouts[pool.tops[0]] = [Piece(piece.group, neurons)]
        self.handled.add(pool.name)
        return True

    def _chain(self, blob: BlobVersion) -> tuple[Layer, list[str]] | None:
        """Walk up from an Eltwise input through single-use parameter-free layers to its source."""
        chain = []
        while True:
            if len(self.net.consumers(blob)) != 1:
                return None
            layer = self.net.producer(blob)
            if not layers.carries_channels(layer.type, weighted=False):
                return layer, chain
            chain.append(layer.name)
            blob = layer.bottoms[0]

    def maxout_eltwise(self, layer, bottoms) -> bool:
        """Eltwise MAX over k single-piece inputs: k branch producers, or k slices of one producer."""
        k = len(bottoms)
        if any(len(b) != 1 or b[0].block != 1 or b[0].index.shape[1] != 1 for b in bottoms):
            return False
        units = len(bottoms[0][0].index)
        if any(len(b[0].index) != units for b in bottoms):
            return False
        walks = [self._chain(b) for b in layer.bottoms]
        if any(w is None for w in walks):
            return False
        sources = [w[0] for w in walks]
        gids = [self.find(b[0].group) for b in bottoms]
        if any(self.groups[g].maxout is not None for g in gids):
            return False
        if len(set(gids)) == 1 and all(s.type == "Slice" for s in sources) and len({s.name for s in sources}) == 1:
            group = self.groups[gids[0]]
            neurons = np.stack([b[0].index[:, 0] for b in bottoms], axis=1)  # (units, k) producer channels
            if group.size != units * k or not np.array_equal(neurons, np.arange(units * k).reshape(k, units).T):
                return False
            group.maxout = Maxout("slice-eltwise-max", units, k, neurons, [sources[0].name, layer.name],
                                  chains=[w[1] for w in walks])
        elif (len(set(gids)) == k and all(layers.produces_channels(s.type) for s in sources)
              and len({s.bottoms[0] for s in sources}) == 1
              and all(self.groups[g].producers == [s.name] and self.groups[g].size == units for g, s in zip(gids, sources))):
            neurons = np.arange(units * k).reshape(units, k)
            self._relabel_branches(gids, neurons)
            for g in gids[1:]:
                self.union(gids[0], g)
            group = self.group(gids[0])
            group.size = units * k
            group.maxout = Maxout("eltwise-max", units, k, neurons, [layer.name], [s.name for s in sources],
                                  chains=[w[1] for w in walks])
        else:
            return False
        group.members.append(Member(layer.name, "structure", f"maxout over {units} units of {k}"))
        self.layouts[layer.tops[0]] = [Piece(self.find(gids[0]), group.maxout.neurons)]
        return True

    def _relabel_branches(self, gids: list[int], neurons: np.ndarray) -> None:
        """After merging k branch groups into one maxout group, renumber their channels unit-major."""
        pieces = {id(piece): piece for layout in self.layouts.values() for piece in layout}
        for piece in pieces.values():
            root = self.find(piece.group)
            if root in gids:
                piece.index = neurons[:, gids.index(root)][piece.index]
                piece.group = gids[0]

    def merge(self, layer: Layer, bottoms: list[Layout]) -> None:
        """Inputs combined element by element: matching pieces become one group."""
        first = bottoms[0]
        shapes_match = all(len(b) == len(first) and all(
            p.width == q.width and p.block == q.block and np.array_equal(p.index, q.index) for p, q in zip(b, first))
            for b in bottoms[1:])
        if not shapes_match:
            for layout in bottoms:
                self.pin(layout, f"{layer.type} '{layer.name}' combines differently built channel sets")
            self.pinned_output(layer, f"output of {layer.type} '{layer.name}'")
            return
        for layout in bottoms[1:]:
            for p, q in zip(first, layout):
                if self.group(p.group).size == self.group(q.group).size:
                    self.union(p.group, q.group)
                else:
                    self.pin([p, q], f"{layer.type} '{layer.name}' combines channel sets of different sizes")
        self.member(first, layer, "structure")
        self.layouts[layer.tops[0]] = [Piece(self.find(p.group), p.index, p.block) for p in first]


def build_groups(net: Net, shapes: NetShapes) -> Groups:
    """Compute the channel groups of a net (see the module docstring)."""
    return _Builder(net, shapes).run()
