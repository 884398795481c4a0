"""The layer registry: one ``LayerType`` declaration per Caffe type, holding every facet of it.

A declaration states, for its type, each of:

* ``shape``: the shape rule ``fn(layer, bottom_shapes) -> Rule`` (top shapes, learned blob shapes, MACs);
  for a data layer (``kind=DATA``) ``fn(layer, SourceContext) -> list[Shape]``;
  ``bottoms``/``tops`` bound how many bottoms and tops it takes;
* ``export``: the ONNX converter ``fn(ctx: LayerContext) -> None``;
* ``channels``: a ``ChannelRule`` saying what pruning channels does to it (see ``channels.py``);
* ``rewrite``: ``fn(surgeon, layer, param, blobs) -> blobs``, the surgery of its params and blobs
  when channels go;
* ``train``: a ``Train`` (torch op builder, blob fillers), the op importing torch only when called;
* ``departures``: where OpenCV (or another consumer) departs from Caffe on this type;
* ``kind``: LAYER, DATA (its tops are net inputs) or TRAINING_ONLY; ``dataset``: a DATA layer whose own
  source the tool reads (``data.source_from_layer``).

A facet that does not apply is ``NotApplicable("why")``, never left out. ``declare`` adds a
declaration; the built-in families load on the first lookup, plugins add theirs (``plugins.py``).
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CaffeSurgeryError
from .channels import ChannelRule

LAYER = "layer"
DATA = "data"
TRAINING_ONLY = "training-only"
KINDS = (LAYER, DATA, TRAINING_ONLY)
"""LAYER computes tops from bottoms; DATA feeds the net (its tops become graph inputs);
TRAINING_ONLY (losses, Accuracy, Silence) is left out of deploy graphs."""

FAMILIES = ("convolution", "pooling", "activation", "normalization", "arithmetic", "tensor",
            "recurrent", "detection", "yolo", "data", "loss", "resize", "flow")
"""The built-in family modules of ``caffe_surgery.layers``."""


class RegistryError(CaffeSurgeryError):
    """A declaration that cannot be registered (a duplicate type, a malformed facet)."""


@dataclass(frozen=True)
class NotApplicable:
    """A facet that does not apply to a type, with the reason (printed where the facet is asked for)."""

    reason: str

    def __post_init__(self):
        if not self.reason:
            raise ValueError("NotApplicable needs a reason")

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class Train:
    """The training facet: ``op(layer, bottom_shapes, phase) -> fn(bottoms, blobs) -> tops`` (torch, imported
    inside ``op``), ``fillers(layer) -> list[FillerParameter]`` for fresh blobs, and whether the blobs learn
    (BatchNorm's are running statistics: ``learns=False``)."""

    op: Callable
    fillers: Callable | None = None
    learns: bool = True


@dataclass(frozen=True)
class Departure:
    """Where a consumer of Caffe files (OpenCV's importer by default) departs from Caffe on this type.

    ``applies(layer)`` says whether a given layer hits it (default: every layer of the type);
    ``fusion`` marks departures that only OpenCV's layer fusion causes (tests turn fusion off);
    ``as_sets`` marks departures in the order and padding of output rows only (the same detections,
    sorted and padded otherwise): tests still compare with the consumer, rows as sets.
    """

    what: str
    applies: Callable[[Any], bool] = lambda layer: True
    consumer: str = "OpenCV"
    fusion: bool = False
    as_sets: bool = False


def _arity(count: int | tuple[int, int | None]) -> tuple[int, int | None]:
    return (count, count) if isinstance(count, int) else tuple(count)


@dataclass(frozen=True)
class LayerType:
    """Everything the tool knows about one Caffe layer type (see the module docstring)."""

    name: str
    shape: Callable | NotApplicable
    export: Callable | NotApplicable
    channels: ChannelRule
    rewrite: Callable | NotApplicable
    train: Train | NotApplicable
    bottoms: int | tuple[int, int | None] = 1
    tops: int | tuple[int, int | None] = 1
    kind: str = LAYER
    departures: tuple[Departure, ...] = ()
    dataset: bool = False
    origin: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RegistryError(f"layer type '{self.name}': kind must be one of {', '.join(KINDS)}")
        object.__setattr__(self, "bottoms", _arity(0 if self.kind == DATA else self.bottoms))
        object.__setattr__(self, "tops", _arity(self.tops))
        object.__setattr__(self, "departures", tuple(self.departures))
        for facet in FACETS:
            value = getattr(self, facet)
            expected = {"channels": ChannelRule, "train": (Train, NotApplicable)}.get(facet)
            if not (isinstance(value, expected) if expected else callable(value) or isinstance(value, NotApplicable)):
                raise RegistryError(f"layer type '{self.name}': facet '{facet}' must be given "
                                    f"(or NotApplicable('reason')), got {value!r}")

    def departures_for(self, layer) -> list[Departure]:
        """The departures a given layer of this type hits."""
        return [d for d in self.departures if d.applies(layer)]


FACETS = ("shape", "export", "channels", "rewrite", "train")
"""The facets every declaration states (a value, or NotApplicable with a reason)."""

_REGISTRY: dict[str, LayerType] = {}
_loaded = False
_loading = False
_LOADING_LOCK = threading.RLock()
_origin = ""


def set_origin(origin: str) -> str:
    """Mark the declarations that follow as coming from ``origin`` (a plugin); return the previous mark."""
    global _origin
    previous, _origin = _origin, origin
    return previous


def declare(*declarations: LayerType) -> LayerType:
    """Register declarations; a type declared twice is an error. Returns the last one."""
    for declaration in declarations:
        if declaration.name in _REGISTRY:
            previous = _REGISTRY[declaration.name].origin or "caffe-surgery"
            raise RegistryError(f"layer type '{declaration.name}' is already declared (by {previous})")
        object.__setattr__(declaration, "origin", _origin)
        _REGISTRY[declaration.name] = declaration
    return declarations[-1]


def _load_builtins() -> None:
    """Import the built-in families, then the installed plugins (entry points), once. Another thread
    asking meanwhile waits for the whole registry (a Ray worker unpickles a task's arguments in
    threads); a call from within that loading, on its own thread, returns at once."""
    global _loaded, _loading
    if _loaded:
        return
    with _LOADING_LOCK:
        if _loaded or _loading:
            return
        _loading = True
        try:
            for family in FAMILIES:
                importlib.import_module(f"{__package__}.{family}")
            from .plugins import load_entry_points
            load_entry_points()
        finally:  # once, even when a plugin fails (its error is raised this once)
            _loading, _loaded = False, True


def lookup(type_name: str) -> LayerType | None:
    """The declaration of a layer type, or None for a type nobody declared."""
    _load_builtins()
    return _REGISTRY.get(type_name)


def declarations() -> list[LayerType]:
    """Every declaration, sorted by type name."""
    _load_builtins()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def types_with(facet: str) -> list[str]:
    """The sorted type names whose ``facet`` applies."""
    return [d.name for d in declarations() if not isinstance(getattr(d, facet), NotApplicable)]


def types_of_kind(kind: str) -> frozenset[str]:
    """The type names of one kind (LAYER, DATA or TRAINING_ONLY)."""
    return frozenset(d.name for d in declarations() if d.kind == kind)
