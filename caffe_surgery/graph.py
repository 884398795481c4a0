"""The net in memory: layers in order, blob versions, producers and consumers.

A Caffe blob name can be written by several layers in a row (in-place layers
such as ReLU or BatchNorm write their bottom). Each write makes a new
``BlobVersion``, so "fc_3 after relu3" is a value of its own that can be tapped,
exported and pruned. Layers keep their original ``LayerParameter`` so fields
this tool does not know survive, and their weights as numpy arrays.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import caffe_pb2
from .errors import GraphError

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


@dataclass(frozen=True)
class BlobVersion:
    """One value of a named blob: ``version`` counts the writes before it (0 = first)."""

    name: str
    version: int
    producer: str

    @property
    def key(self) -> str:
        """A unique, readable identifier: the blob name, plus ``@producer`` for rewrites."""
        return self.name if self.version == 0 else f"{self.name}@{self.producer}"


@dataclass(eq=False)
class Layer:
    """A layer of the net with its wiring and weights."""

    param: caffe_pb2.LayerParameter
    bottoms: list[BlobVersion]
    tops: list[BlobVersion]
    blobs: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def in_place(self) -> bool:
        """True when some top rewrites one of the bottoms (same blob name)."""
        return any(t.name == b.name for t in self.tops for b in self.bottoms)

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, {self.type!r})"


def _state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    """Caffe's include/exclude rule: no include rule means included unless excluded."""
    included = not len(layer.include)
    if any(_state_meets_rule(state, rule) for rule in layer.exclude):
        included = False
    if any(_state_meets_rule(state, rule) for rule in layer.include):
        included = True
    return included


class Net:
    """A filtered (one phase) current-format net with versioned blobs."""

    def __init__(self, header: caffe_pb2.NetParameter, layers: list[Layer], source: str | None = None):
        self.header = header
        self.layers = layers
        self.source = source
        self._by_name = {layer.name: layer for layer in layers}
        self._consumers: dict[BlobVersion, list[Layer]] = {}
        self._producer: dict[BlobVersion, Layer] = {}
        self._versions: dict[str, list[BlobVersion]] = {}
        for layer in layers:
            for bottom in layer.bottoms:
                self._consumers.setdefault(bottom, []).append(layer)
            for top in layer.tops:
                self._producer[top] = layer
                self._versions.setdefault(top.name, []).append(top)

    @property
    def name(self) -> str:
        return self.header.name

    def __repr__(self) -> str:
        inputs = [t.name for layer in self.layers if not layer.bottoms for t in layer.tops]
        return (f"Net({self.name!r}: {len(self.layers)} layers, inputs {', '.join(inputs) or '-'}, "
                f"outputs {', '.join(v.name for v in self.outputs()) or '-'})")

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; GraphError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError("no such layer in the net", file=self.source, layer=name) from None

    def has_layer(self, name: str) -> bool:
        return name in self._by_name

    def producer(self, blob: BlobVersion) -> Layer:
        """The layer that wrote this version."""
        return self._producer[blob]

    def consumers(self, blob: BlobVersion) -> list[Layer]:
        """Layers reading this version, in net order."""
        return list(self._consumers.get(blob, ()))

    def versions(self, name: str) -> list[BlobVersion]:
        """Every version of the named blob, in the order they are written."""
        if name not in self._versions:
            raise GraphError(f"no blob named '{name}' in the net", file=self.source)
        return list(self._versions[name])

    def final(self, name: str) -> BlobVersion:
        """The last version of the named blob (what Caffe's net.blobs[name] holds after forward)."""
        return self.versions(name)[-1]

    def blob_after(self, layer_name: str, top_index: int = 0) -> BlobVersion:
        """The version written by ``layer_name`` at ``top_index`` (e.g. fc_3 after relu3)."""
        return self.layer(layer_name).tops[top_index]

    def resolve(self, spec: str) -> BlobVersion:
        """A blob by ``name`` (final version) or ``name@layer`` (the version that layer wrote)."""
        name, _, layer_name = spec.partition("@")
        if not layer_name:
            return self.final(name)
        for top in self.layer(layer_name).tops:
            if top.name == name:
                return top
        raise GraphError(f"layer does not write blob '{name}'", file=self.source, layer=layer_name)

    def blob_versions(self) -> Iterable[BlobVersion]:
        """Every blob version in net order."""
        for layer in self.layers:
            yield from layer.tops

    def outputs(self) -> list[BlobVersion]:
        """Final versions no layer reads: what Caffe reports as net outputs."""
        return [v for v in self.blob_versions() if v == self.final(v.name) and not self._consumers.get(v)]

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A current-format NetParameter of this net without weights (a deploy prototxt)."""
        net = caffe_pb2.NetParameter()
        net.CopyFrom(self.header)
        for layer in self.layers:
            net.layer.add().CopyFrom(layer.param)
        return net


def _wire_layers(params: Sequence[caffe_pb2.LayerParameter], source: str | None) -> list[Layer]:
    """Give every bottom and top its version, checking Caffe's wiring rules."""
    current: dict[str, BlobVersion] = {}
    produced_later: dict[str, str] = {}
    for param in params:
        for top in param.top:
            produced_later.setdefault(top, param.name)
    seen_names: set[str] = set()
    layers = []
    for param in params:
        if param.name in seen_names:
            raise GraphError("layer name is used twice", file=source, layer=param.name)
        seen_names.add(param.name)
        bottoms = []
        for name in param.bottom:
            if name not in current:
                later = produced_later.get(name)
                problem = (f"bottom blob '{name}' is produced only later, by layer '{later}' (a cycle or misordered layers)"
                           if later and later != param.name else f"bottom blob '{name}' is not produced by any earlier layer")
                raise GraphError(problem, file=source, layer=param.name)
            bottoms.append(current[name])
        tops = []
        bottom_names = set(param.bottom)
        for name in param.top:
            previous = current.get(name)
            if previous is not None and name not in bottom_names:
                raise GraphError(f"top blob '{name}' is already produced by layer '{previous.producer}'",
                                 file=source, layer=param.name)
            version = BlobVersion(name, 0 if previous is None else previous.version + 1, param.name)
            tops.append(version)
        for version in tops:
            current[version.name] = version
        layers.append(Layer(param=param, bottoms=bottoms, tops=tops))
    return layers


def net_state(net_param: caffe_pb2.NetParameter, phase: int, level: int = 0,
              stages: Sequence[str] = ()) -> caffe_pb2.NetState:
    """The state a net is filtered with, as Caffe builds it: the prototxt's own ``state`` with the caller's
    phase and level, and the caller's stages appended to the prototxt's."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase
    state.level = level
    state.stage.extend(stages)
    return state


def included_layers(net_param: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
                    source: str | None = None) -> list[caffe_pb2.LayerParameter]:
    """The layers the state includes; GraphError for a net without layers or with none in this state."""
    if not len(net_param.layer):
        raise GraphError("the net has no layers (an empty or comment-only prototxt?)", file=source)
    params = [layer for layer in net_param.layer if layer_included(layer, state)]
    if not params:
        raise GraphError(f"none of the net's {len(net_param.layer)} layers is included in the "
                         f"{caffe_pb2.Phase.Name(state.phase)} phase (stages {list(state.stage)}, level "
                         f"{state.level}); e.g. a net of training-only layers", file=source)
    return params


def build_net(net_param: caffe_pb2.NetParameter, phase: int = TEST, level: int = 0,
              stages: Sequence[str] = (), source: str | None = None) -> Net:
    """Build the IR for one phase of a current-format (upgraded) NetParameter.

    Layers are filtered with Caffe's include/exclude rules for the given state
    (``net_state``); the layer messages are copied, so the caller's message is
    never modified.
    """
    if len(net_param.layers):
        raise GraphError("net is in the V1 format; upgrade it first", file=source)
    state = net_state(net_param, phase, level, stages)
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net_param)
    del header.layer[:]
    params = []
    for layer in included_layers(net_param, state, source):
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer)
        params.append(copy)
    return Net(header, _wire_layers(params, source), source)


def net_from_layers(net_param: caffe_pb2.NetParameter, source: str | None = None) -> Net:
    """Build the IR from a NetParameter whose layers are already the ones to run (no phase filter)."""
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net_param)
    del header.layer[:]
    return Net(header, _wire_layers(list(net_param.layer), source), source)
