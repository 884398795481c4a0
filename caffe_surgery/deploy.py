"""A deploy version of a TEST net: data layers become Input layers, loss and accuracy layers go.

What a Caffe deployment (or OpenCV dnn) loads: the same layers and weights,
images in, the net's scores or probabilities out.
"""
from __future__ import annotations

from . import caffe_pb2, layers
from .graph import Net, net_from_layers
from .shapes import NetShapes


def deploy_net(net: Net, shapes: NetShapes, batch: int = 1) -> Net:
    """The deploy net, with a batch of ``batch``: data layers keep only the tops later layers read."""
    kept = [layer for layer in net.layers if not layers.is_training_only(layer.type)]
    read = {b.name for layer in kept for b in layer.bottoms}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net.header)
    for layer in kept:
        if layer.bottoms:
            out.layer.add().CopyFrom(layer.param)
            continue
        tops = [top for top in layer.tops if top.name in read]
        if not tops:
            continue
        param = out.layer.add(name=layer.name, type="Input")
        for top in tops:
            param.top.append(top.name)
            param.input_param.shape.add().dim.extend((batch,) + tuple(shapes.blob(top)[1:]))
    deployed = net_from_layers(out, source=net.source)
    weights = {layer.name: layer.blobs for layer in net.layers}
    for layer in deployed.layers:
        layer.blobs = weights[layer.name] if layer.bottoms else []
    return deployed
