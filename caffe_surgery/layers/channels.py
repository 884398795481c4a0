"""Channel rules: what removing channels of its bottoms does to a layer type (see ``groups``).

A rule's ``apply(builder, layer, bottoms)`` gives the layer's tops their layouts on the group
builder (``groups._Builder``): it passes its bottom's layout through, opens a group, joins or
cuts layouts, or pins the groups it reads with the reason ``info --groups`` prints. The shared
rules below cover most types; a type with its own logic wraps a function in ``ChannelRule``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelRule:
    """``apply(builder, layer, bottoms)``; ``per_channel``: top channel j is a function of bottom channel j
    only (activation statistics may be taken after it); ``weighted``: it holds per-channel weights;
    ``produces``: it opens a group of output channels from a weight matrix (Convolution, InnerProduct)."""

    apply: Callable
    describe: str
    per_channel: bool = False
    weighted: bool = False
    produces: bool = False


def _carry(builder, layer, bottoms) -> None:
    builder.pass_through(layer, bottoms[0], "channel")


def _structure(builder, layer, bottoms) -> None:
    builder.pass_through(layer, bottoms[0], "structure")


def pin_all(builder, layer, bottoms, reason: str, output: str) -> None:
    """Pin every group the layer reads with ``reason``, and give its tops fresh pinned groups."""
    for layout in bottoms:
        builder.pin(layout, reason)
    builder.pinned_output(layer, output)


def keep_or_pin(builder, layer, bottoms, pinned_because: str | None) -> None:
    """Without a reason, the top keeps the first bottom's channels (a structural pass-through); with one,
    every group read is pinned for it and the top is the layer's own pinned output."""
    if pinned_because is None:
        builder.pass_through(layer, bottoms[0], "structure")
    else:
        pin_all(builder, layer, bottoms, pinned_because, f"output of {layer.type} '{layer.name}'")


def _mixes(builder, layer, bottoms) -> None:
    pin_all(builder, layer, bottoms, f"read by {layer.type} '{layer.name}', which mixes channels",
            f"output of {layer.type} '{layer.name}'")


def _training_output(builder, layer, bottoms) -> None:
    builder.pinned_output(layer, f"output of {layer.type} '{layer.name}'")


def _net_input(builder, layer, bottoms) -> None:
    builder.pinned_output(layer, f"net input from {layer.type} '{layer.name}'")


ELEMENTWISE = ChannelRule(_carry, "element-wise: carries every channel", per_channel=True)
PER_CHANNEL = ChannelRule(_carry, "per-channel weights: carries every channel, loses the removed channels' weights",
                          per_channel=True, weighted=True)
PASS_THROUGH = ChannelRule(_structure, "keeps the channel axis as it is (spatial or batch work only)")
PIN = ChannelRule(_mixes, "mixes channels: pins the channels it reads")
TRAINING_OUTPUT = ChannelRule(_training_output, "training-only: its inputs stay prunable, its outputs are pinned")
NET_INPUT = ChannelRule(_net_input, "no bottoms: its tops are net inputs, pinned")


def custom(describe: str, per_channel: bool = False, weighted: bool = False, produces: bool = False):
    """Decorator: a type's own channel logic ``fn(builder, layer, bottoms)`` as a ChannelRule."""
    def wrap(fn: Callable) -> ChannelRule:
        return ChannelRule(fn, describe, per_channel, weighted, produces)
    return wrap


def drop_channel_entries(s, layer, blobs, count: int | None = None) -> list:
    """The surgery of per-channel weights: the first ``count`` blobs (default all) lose the removed
    channels' entries along axis 0."""
    kept = s.blob_positions(layer.bottoms[0])
    if kept is None:
        return blobs
    count = len(blobs) if count is None else count
    return [s.take(b, kept, 0) for b in blobs[:count]] + blobs[count:]
