"""A plugin declaring two made-up fork layer types, as a user with a private Caffe fork would write it.

* ``ScaledTanh``: y = scale * tanh(x), ``scale`` read from the fork field
  ``scaled_tanh_param { scale: S }`` that the project's caffe.proto does not know (default 1);
  element-wise, so pruning carries its channels.
* ``ChannelGain``: y = x * gain[c], one learned gain per channel (blob 0, shape (C,)); pruning
  removes the removed channels' gains.

Load it with ``caffe-surgery --plugin tests/plugins/fork_layers.py VERB ...``.
"""
from caffe_surgery.export.context import channel_broadcast
from caffe_surgery.layers import (ELEMENTWISE, PER_CHANNEL, Departure, LayerType, NotApplicable, Rule, Train,
                                  declare, drop_channel_entries, fail, fork_param, same_shape)


def scale_of(layer) -> float:
    """``scaled_tanh_param.scale`` from the fork text the parser kept beside the known fields."""
    return fork_param(layer.param, "scaled_tanh_param", {"scale": 1.0})["scale"]


def scaled_tanh(ctx) -> None:
    ctx.scaled(ctx.node("Tanh", [ctx.bottom()]), scale_of(ctx.layer), ctx.top())


def scaled_tanh_op(layer, bottoms, phase):
    import torch
    scale = scale_of(layer)
    return lambda x, blobs: [scale * torch.tanh(x[0])]


def channel_gain_shape(layer, bottoms) -> Rule:
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"ChannelGain needs a channel axis, got {shape}")
    return Rule([shape], [(shape[1],)])


def channel_gain(ctx) -> None:
    (gain,) = ctx.weights(1)
    ctx.node("Mul", [ctx.bottom(), ctx.const(channel_broadcast(gain.reshape(-1), len(ctx.bottom_shape())), "gain")],
             ctx.top())


def channel_gain_rewrite(surgeon, layer, param, blobs):
    return drop_channel_entries(surgeon, layer, blobs)


declare(
    LayerType("ScaledTanh", shape=same_shape, export=scaled_tanh, channels=ELEMENTWISE,
              rewrite=NotApplicable("element-wise: nothing in it counts channels"), train=Train(scaled_tanh_op),
              departures=(Departure("OpenCV has no ScaledTanh layer"),)),
    LayerType("ChannelGain", shape=channel_gain_shape, export=channel_gain, channels=PER_CHANNEL,
              rewrite=channel_gain_rewrite, train=NotApplicable("no torch op in this plugin"),
              departures=(Departure("OpenCV has no ChannelGain layer"),)),
)
