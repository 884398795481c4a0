"""Small nets that together cover every coupling case surgery handles, with random weights."""
import numpy as np
from caffe_surgery import caffe_pb2, textproto
from caffe_surgery.graph import build_net
from caffe_surgery.shapes import infer_shapes

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}\n'


def conv(name, bottom, outputs, kernel=3, pad=1, group=1, top=None, stride=1):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ num_output: {outputs} kernel_size: {kernel} pad: {pad} group: {group} stride: {stride} }} }}\n')


def ip(name, bottom, outputs, top=None):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" '
            f'inner_product_param {{ num_output: {outputs} }} }}\n')


def simple(kind, name, bottom, top=None, extra=""):
    return f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top or bottom}" {extra} }}\n'


def bn_scale(name, blob):
    return (simple("BatchNorm", f"{name}_bn", blob) + simple("Scale", f"{name}_scale", blob, extra="scale_param { bias_term: true }"))


NETS = {
    "maxout_reshape_pool": INPUT.format(n=2, c=1, h=12, w=12) + conv("conv1", "data", 6, 5, 0) + simple(
        "Pooling", "pool1", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }") + ip("fc_3", "pool1", 32)
    + simple("ReLU", "relu3", "fc_3") + 'layer { name: "premax" type: "Reshape" bottom: "fc_3" top: "premax" '
      'reshape_param { shape { dim: 0 dim: 8 dim: 4 dim: 1 } } }\n'
    + simple("Pooling", "maxout", "premax", "maxout", "pooling_param { pool: MAX global_pooling: true }")
    + ip("fc_classes", "maxout", 5) + simple("Softmax", "prob", "fc_classes", "prob"),
    "maxout_eltwise_branches": INPUT.format(n=2, c=3, h=6, w=6) + conv("conv1", "data", 8) + simple("ReLU", "relu1", "conv1")
    + "".join(ip(f"branch{i}", "conv1", 10) + simple("ReLU", f"brelu{i}", f"branch{i}") for i in range(3))
    + 'layer { name: "max" type: "Eltwise" bottom: "branch0" bottom: "branch1" bottom: "branch2" top: "max" '
      'eltwise_param { operation: MAX } }\n' + ip("out", "max", 4),
    "max_feature_map": INPUT.format(n=2, c=3, h=9, w=9) + conv("conv1", "data", 12, 3, 1) + simple("ReLU", "relu1", "conv1")
    + 'layer { name: "slice1" type: "Slice" bottom: "conv1" top: "s0" top: "s1" slice_param { axis: 1 } }\n'
    + 'layer { name: "mfm1" type: "Eltwise" bottom: "s0" bottom: "s1" top: "mfm1" eltwise_param { operation: MAX } }\n'
    + conv("conv2", "mfm1", 5, 3, 0) + simple("Flatten", "flat", "conv2", "flat") + ip("out", "flat", 3),
    "grouped_depthwise_bn": INPUT.format(n=2, c=4, h=11, w=11) + conv("conv1", "data", 8) + bn_scale("c1", "conv1")
    + simple("PReLU", "prelu1", "conv1") + conv("conv2", "conv1", 12, 3, 1, group=2) + simple("ReLU", "relu2", "conv2")
    + conv("dw3", "conv2", 12, 3, 1, group=12) + bn_scale("dw3", "dw3") + conv("pw4", "dw3", 6, 1, 0)
    + simple("Pooling", "pool", "pw4", "pool", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }") + ip("out", "pool", 3),
    "residual_concat_slice": INPUT.format(n=2, c=3, h=10, w=10) + conv("stem", "data", 8) + simple("ReLU", "stem_relu", "stem")
    + conv("res_a", "stem", 8) + bn_scale("res_a", "res_a") + simple("ReLU", "res_relu", "res_a")
    + conv("res_b", "res_a", 8)
    + 'layer { name: "sum" type: "Eltwise" bottom: "stem" bottom: "res_b" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }\n'
    + conv("left", "sum", 6) + conv("right", "sum", 5, 1, 0)
    + 'layer { name: "cat" type: "Concat" bottom: "left" bottom: "right" top: "cat" }\n'
    + 'layer { name: "split" type: "Slice" bottom: "cat" top: "part0" top: "part1" slice_param { axis: 1 slice_point: 4 } }\n'
    + conv("head0", "part0", 3) + conv("head1", "part1", 3)
    + 'layer { name: "join" type: "Eltwise" bottom: "head0" bottom: "head1" top: "join" eltwise_param { operation: PROD } }\n'
    + 'layer { name: "flat" type: "Reshape" bottom: "join" top: "flat" reshape_param { shape { dim: 0 dim: -1 } } }\n'
    + ip("out", "flat", 4),
    "deconvolution": INPUT.format(n=1, c=2, h=7, w=7) + conv("conv1", "data", 6)
    + 'layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up" convolution_param { num_output: 5 kernel_size: 4 stride: 2 pad: 1 } }\n'
    + simple("ReLU", "relu", "up") + conv("conv2", "up", 3),
    # Resizing carries channels; an SE block's (N, C) gate scales from axis 0 and couples its channels.
    "resize_squeeze_excite": INPUT.format(n=2, c=3, h=5, w=6) + conv("conv1", "data", 6) + simple("ReLU", "relu1", "conv1")
    + simple("Upsample", "up", "conv1", "up", "upsample_param { scale: 2 }") + conv("conv2", "up", 7)
    + simple("Interp", "interp", "conv2", "interp", "interp_param { height: 7 width: 9 }") + conv("conv3", "interp", 8)
    + simple("Pooling", "squeeze", "conv3", "squeeze", "pooling_param { pool: AVE global_pooling: true }")
    + conv("reduce", "squeeze", 3, 1, 0) + simple("ReLU", "reduce_relu", "reduce") + conv("expand", "reduce", 8, 1, 0)
    + simple("Sigmoid", "gate", "expand") + simple("Flatten", "gate_flat", "expand", "gate_flat")
    + 'layer { name: "excite" type: "Scale" bottom: "conv3" bottom: "gate_flat" top: "excite" '
      'scale_param { axis: 0 bias_term: false } }\n'
    + conv("out", "excite", 4),
    # MobileNet/ShuffleNet forks: a depthwise alias follows its input's channels (DepthwiseConvolution shares
    # its declaration; OpenCV cannot create it), ReLU6 and the unary types carry them, ShuffleChannel pins.
    "mobile_forks": INPUT.format(n=2, c=3, h=8, w=8) + conv("conv1", "data", 6) + simple("ReLU6", "relu6", "conv1")
    + conv("dw", "conv1", 6, group=6).replace('"Convolution"', '"ConvolutionDepthwise"') + simple("HardSwish", "hswish", "dw")
    + conv("pw", "dw", 8, 1, 0) + simple("Mish", "mish", "pw")
    + conv("dw2", "pw", 8, group=8) + conv("pw2", "dw2", 6, 1, 0)
    + simple("ShuffleChannel", "shuffle", "pw2", "shuffle", "shuffle_channel_param { group: 2 }") + conv("out", "shuffle", 4),
}


def random_weights(text: str, seed: int):
    """The net of ``text`` (TEST phase) with random weights and its shapes."""
    net_param = caffe_pb2.NetParameter()
    textproto.parse(text, net_param)  # keeps the fork params the schema lacks (interp_param)
    net = build_net(net_param)
    shapes = infer_shapes(net)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        expected = shapes.layer(layer.name).param_shapes or []
        blobs = []
        for index, shape in enumerate(expected):
            if layer.type == "BatchNorm":
                values = rng.random(shape) + (0.5 if index == 1 else 0) if index < 2 else np.ones(shape)
            else:
                values = rng.standard_normal(shape) * (0.5 if index == 0 else 0.2)
            blobs.append(values.astype(np.float32))
        layer.blobs = blobs
    return net, shapes
