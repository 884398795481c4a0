"""Shape inference: hand-computed shapes, parameter counts and MACs, and agreement with OpenCV's Caffe importer."""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.blobs import array_to_blob
from caffe_surgery.errors import GraphError, ShapeError, UnsupportedLayerError
from caffe_surgery.graph import build_net
from caffe_surgery.io import read_net_text, write_binary, write_text
from caffe_surgery.shapes import infer_shapes
from conftest import REAL_MODELS, REAL_PAIRS, REFERENCE
from opencv_layers import fork_layers

cv2 = pytest.importorskip("cv2")


def net_of(text: str):
    return build_net(text_format.Parse(text, caffe_pb2.NetParameter()), source="test.prototxt")


def with_input(shape, body: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n{body}'


def layer_of(shape, body: str, name: str, **kwargs):
    """The LayerShapes of ``name`` in a net of an Input ``x`` of ``shape`` followed by ``body``."""
    return infer_shapes(net_of(with_input(shape, body)), **kwargs).layer(name)


def tops_of(shape, body: str, name: str):
    return layer_of(shape, body, name).top_shapes


def load(path):
    upgrade = pytest.importorskip("caffe_surgery.upgrade")
    return build_net(upgrade.upgrade_net(read_net_text(path)), source=str(path))


# ------------------------------------------------------------- maxout LeNet


def maxout_lenet_params(fc3_outputs: int) -> int:
    """conv1 20x1x5x5+20, conv2 52x20x5x5+52, fc_3 on 52x4x4 inputs (+bias), fc_classes on 64 units (+bias)."""
    conv1 = 20 * 1 * 5 * 5 + 20
    conv2 = 52 * 20 * 5 * 5 + 52
    fc3 = fc3_outputs * (52 * 4 * 4) + fc3_outputs
    fc_classes = 10 * 64 + 10
    return conv1 + conv2 + fc3 + fc_classes


@pytest.mark.parametrize("stage, k", [(0, 4), (1, 3), (2, 2), (3, 1)])
def test_maxout_lenet_parameter_counts(stage, k):
    net = build_net(read_net_text(REFERENCE / f"mnist_test_{stage}.prototxt"))
    shapes = infer_shapes(net, {"images": (1, 1, 28, 28)})
    expected = maxout_lenet_params(64 * k)
    assert expected == {4: 240_470, 3: 187_158, 2: 133_846, 1: 80_534}[k]
    assert shapes.totals()[0] == expected
    assert shapes.layer("premax").top_shapes == [(1, 64, k, 1)]
    assert shapes.layer("maxout").top_shapes == [(1, 64, 1, 1)]


def test_maxout_lenet_shapes_and_macs():
    net = build_net(read_net_text(REFERENCE / "mnist_test_0.prototxt"))
    shapes = infer_shapes(net, {"images": (1, 1, 28, 28)})
    expected = {"images": [(1, 1, 28, 28), (1,)], "conv1": [(1, 20, 24, 24)], "pool1": [(1, 20, 12, 12)],
                "conv2": [(1, 52, 8, 8)], "pool2": [(1, 52, 4, 4)], "fc_3": [(1, 256)], "relu3": [(1, 256)],
                "premax": [(1, 64, 4, 1)], "maxout": [(1, 64, 1, 1)], "fc_classes": [(1, 10)],
                "class_proba": [(1, 10)], "loss": [()], "acc": [()]}
    assert {layer.name: shapes.layer(layer.name).top_shapes for layer in net.layers} == expected
    assert shapes.layer("fc_3").param_shapes == [(256, 832), (256,)]
    assert shapes.layer("conv1").macs == 20 * 24 * 24 * 1 * 5 * 5
    assert shapes.layer("conv2").macs == 52 * 8 * 8 * 20 * 5 * 5
    assert shapes.layer("fc_3").macs == 832 * 256
    assert shapes.layer("relu3").macs == 0
    assert shapes.totals()[1] == 288_000 + 1_664_000 + 212_992 + 640
    assert shapes.blob(net.final("fc_3")) == (1, 256)


def test_data_layer_needs_input_shape():
    net = build_net(read_net_text(REFERENCE / "mnist_test_0.prototxt"), source="mnist.prototxt")
    with pytest.raises(ShapeError, match=r"mnist.prototxt: images: .*--input images=N,C,H,W"):
        infer_shapes(net)


def test_data_layer_shapes_from_resolver():
    net = build_net(read_net_text(REFERENCE / "mnist_test_0.prototxt"))
    asked = []
    shapes = infer_shapes(net, data_shapes=lambda layer: asked.append(layer.name) or [(1, 28, 28)])
    assert asked == ["images"]
    assert shapes.layer("images").top_shapes == [(1, 1, 28, 28), (1,)]  # batch_size 1 from data_param
    assert shapes.totals()[0] == 240_470
    hdf5 = 'layer { name: "h" type: "HDF5Data" top: "a" top: "b" hdf5_data_param { source: "s.txt" batch_size: 16 } }'
    shapes = infer_shapes(net_of(hdf5), data_shapes=lambda layer: [(3, 12, 12), ()])
    assert shapes.layer("h").top_shapes == [(16, 3, 12, 12), (16,)]
    overridden = infer_shapes(net_of(hdf5), {"a": (2, 3, 4, 4)}, data_shapes=lambda layer: [(3, 12, 12), ()])
    assert overridden.layer("h").top_shapes == [(2, 3, 4, 4), (16,)]


def test_input_shape_for_unknown_blob_is_an_error():
    with pytest.raises(ShapeError, match="nope"):
        infer_shapes(net_of(with_input((1, 2), "")), {"nope": (1, 2)})


# ------------------------------------------------------------- real models


def test_landmark106_layers_by_hand():
    net = load(REAL_MODELS / "landmark106_dq" / "landmark106.prototxt")
    shapes = infer_shapes(net)
    # 3x3 stride 2 pad 1 on 112: (112 + 2 - 3) // 2 + 1 = 56; no bias
    conv1 = shapes.layer("conv1_conv2d")
    assert conv1.top_shapes == [(1, 8, 56, 56)] and conv1.param_shapes == [(8, 3, 3, 3)]
    assert conv1.macs == 8 * 56 * 56 * 3 * 9
    bn = shapes.layer("conv1_batchnorm")
    assert bn.param_shapes == [(8,), (8,), (1,)] and bn.params == 17
    assert shapes.layer("conv1_batchnorm_scale").param_shapes == [(8,), (8,)]
    assert shapes.layer("conv1_relu").param_shapes == [(8,)]
    # depthwise: group 8 on 8 channels -> weight (8, 1, 3, 3), 9 MACs per output value
    dw = shapes.layer("res2_block0_conv_dw_conv2d")
    assert dw.param_shapes == [(8, 1, 3, 3)] and dw.macs == 8 * 56 * 56 * 9
    # depthwise stride 2: (56 + 2 - 3) // 2 + 1 = 28
    assert shapes.layer("dconv23_conv_dw_conv2d").top_shapes == [(1, 16, 28, 28)]
    assert shapes.layer("dconv23_conv_dw_conv2d").param_shapes == [(16, 1, 3, 3)]
    assert shapes.layer("plus0").top_shapes == [(1, 8, 56, 56)] and shapes.layer("plus0").params == 0
    # the head: 1x1 convs on a 1x1 map, then InnerProduct 256 -> 212 = 106 landmarks x 2
    assert shapes.layer("fc2_conv2d").top_shapes == [(1, 256, 1, 1)]
    head = shapes.layer("conv6_3")
    assert head.top_shapes == [(1, 212)] and head.param_shapes == [(212, 256), (212,)]
    assert head.params == 212 * 256 + 212 and head.macs == 256 * 212
    assert shapes.layer("bn6_3").param_shapes == [(212,), (212,), (1,)]
    assert shapes.totals()[0] == 339_922  # MANIFEST.tsv's n_params, counted from the caffemodel


def test_ultraface_heads_by_hand():
    net = load(REAL_MODELS / "ultraface_slim320" / "slim-320.prototxt")
    shapes = infer_shapes(net)
    # 240x320 input: heads at strides 8, 16, 32, 64 -> 30x40, 15x20, 8x10, 4x5 with 3, 2, 2, 3 anchors
    assert shapes.layer("233").top_shapes == [(1, 30, 40, 6)]          # Permute 0,2,3,1 of (1, 6, 30, 40)
    assert shapes.layer("243").top_shapes == [(1, 30 * 40 * 3, 2)]    # Reshape 1,-1,2
    assert shapes.layer("257").top_shapes == [(1, 3600, 4)]
    anchors = 30 * 40 * 3 + 15 * 20 * 2 + 8 * 10 * 2 + 4 * 5 * 3
    assert anchors == 4420
    assert shapes.layer("boxes").top_shapes == [(1, anchors, 4)]       # Concat on axis 1
    assert shapes.layer("scores").top_shapes == [(1, anchors, 2)]
    assert shapes.totals()[0] == 257_916
    first = shapes.layer("185")  # 3x3 stride 2 pad 1 on 240x320 -> 120x160, 16 outputs with bias
    assert first.top_shapes == [(1, 16, 120, 160)] and first.param_shapes == [(16, 3, 3, 3), (16,)]



def compare_with_opencv(net, shapes, prototxt, caffemodel):
    """Every top of every layer OpenCV runs has the inferred shape (the Input layer is not one of them)."""
    with fork_layers():
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        inputs = [layer for layer in net.layers if layer.type == "Input"]
        assert len(inputs) == 1 and len(inputs[0].tops) == 1
        cv_net.setInput(np.zeros(shapes.blob(inputs[0].tops[0]), np.float32))
        names = list(cv_net.getLayerNames())
        assert sorted(names) == sorted(layer.name for layer in net.layers if layer.type != "Input")
        retrieved = cv_net.forwardAndRetrieve(names)
    compared = 0
    for name, outputs in zip(names, retrieved):
        layer = net.layer(name)
        for top, output in zip(layer.tops, outputs):
            expected = shapes.blob(top)
            if layer.type == "DetectionOutput":  # data-dependent row count, at most keep_top_k
                assert output.shape[:2] + output.shape[3:] == expected[:2] + expected[3:]
                assert output.shape[2] <= expected[2]
            else:
                assert tuple(output.shape) == expected, (name, top.key)
            compared += 1
    assert compared == sum(len(layer.tops) for layer in net.layers if layer.type != "Input")


@pytest.mark.parametrize("directory, prototxt, caffemodel", REAL_PAIRS, ids=[p[0] for p in REAL_PAIRS])
def test_real_models_match_opencv(directory, prototxt, caffemodel):
    folder = REAL_MODELS / directory
    net = load(folder / prototxt)
    shapes = infer_shapes(net)
    compare_with_opencv(net, shapes, folder / prototxt, folder / caffemodel)


def random_weights(net, shapes) -> caffe_pb2.NetParameter:
    """A caffemodel with small random blobs of the inferred weight shapes."""
    weights = caffe_pb2.NetParameter()
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if shapes.layer(layer.name).param_shapes:
            stored = weights.layer.add(name=layer.name, type=layer.type)
            stored.blobs.extend(array_to_blob(rng.random(s).astype(np.float32) * 0.01 + 0.5)
                                for s in shapes.layer(layer.name).param_shapes)
    return weights


@pytest.mark.parametrize("path, params", [
    ("proto_mobilenet_ssd/MobileNetSSD_deploy.prototxt", None),
    ("proto_v1_bvlc/bvlc_googlenet_deploy_v1.prototxt", 6_998_552),  # GoogLeNet's published ~7M
])
def test_prototxt_only_models_match_opencv(tmp_path, path, params):
    net = load(REAL_MODELS / path)
    shapes = infer_shapes(net)
    write_text(tmp_path / "net.prototxt", net.to_proto())
    write_binary(tmp_path / "net.caffemodel", random_weights(net, shapes))
    compare_with_opencv(net, shapes, tmp_path / "net.prototxt", tmp_path / "net.caffemodel")
    assert params is None or shapes.totals()[0] == params


def test_cifar10_quick_ave_pooling_rounds_up():
    shapes = infer_shapes(load(REAL_MODELS / "cifar10_quick_v1_everpeace" / "cifar10_quick.prototxt"))
    # 32x32, 3x3 stride 2, no pad: ceil((32 - 3) / 2) + 1 = 16 (floor would give 15); then 8, 4
    assert shapes.layer("pool1").top_shapes == [(1, 32, 16, 16)]
    assert shapes.layer("pool2").top_shapes == [(1, 32, 8, 8)]
    assert shapes.layer("pool3").top_shapes == [(1, 64, 4, 4)]
    assert shapes.layer("ip1").param_shapes == [(64, 64 * 4 * 4), (64,)]


def test_yufacedetectnet_ssd_layers():
    shapes = infer_shapes(load(REAL_MODELS / "yufacedetectnet_v1" / "yufacedetectnet-open-v1.prototxt"))
    norm = shapes.layer("conv3_3_norm")
    channels = norm.top_shapes[0][1]
    assert norm.param_shapes == [(channels,)]  # channel_shared: false
    # three min sizes, no aspect ratios or max sizes: 3 priors per cell, 4 coordinates each
    height, width = norm.top_shapes[0][2:]
    assert shapes.layer("conv3_3_norm_mbox_priorbox").top_shapes == [(1, 2, height * width * 3 * 4)]
    assert shapes.layer("detection_out").top_shapes == [(1, 1, 50, 7)]  # keep_top_k: 50


EDGE_NET = """
layer { name: "conv_hw" type: "Convolution" bottom: "x" top: "conv_hw" convolution_param {
  num_output: 6 group: 2 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 pad_h: 2 pad_w: 1 } }
layer { name: "conv_dil" type: "Convolution" bottom: "x" top: "conv_dil" convolution_param {
  num_output: 8 kernel_size: 3 dilation: 2 pad: 2 bias_term: false } }
layer { name: "deconv" type: "Deconvolution" bottom: "x" top: "deconv" convolution_param {
  num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "pool_pad" type: "Pooling" bottom: "x" top: "pool_pad" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool_ceil" type: "Pooling" bottom: "x" top: "pool_ceil" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "pool_glob" type: "Pooling" bottom: "x" top: "pool_glob" pooling_param { pool: MAX global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 7 } }
layer { name: "ip_axis" type: "InnerProduct" bottom: "x" top: "ip_axis" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "ip_t" type: "InnerProduct" bottom: "x" top: "ip_t" inner_product_param { num_output: 3 transpose: true } }
layer { name: "slice" type: "Slice" bottom: "x" top: "s0" top: "s1" top: "s2" slice_param { axis: 3 slice_point: 2 slice_point: 7 } }
layer { name: "reshape" type: "Reshape" bottom: "x" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 13 } } }
layer { name: "crop" type: "Crop" bottom: "x" bottom: "pool_ceil" top: "crop" crop_param { axis: 2 offset: 1 offset: 3 } }
layer { name: "flat" type: "Flatten" bottom: "x" top: "flat" }
layer { name: "concat" type: "Concat" bottom: "x" bottom: "conv_dil" top: "concat" }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "x" top: "sum" eltwise_param { coeff: 1 coeff: -1 } }
layer { name: "perm" type: "Permute" bottom: "x" top: "perm" permute_param { order: 0 order: 3 order: 1 order: 2 } }
layer { name: "norm" type: "Normalize" bottom: "x" top: "norm" norm_param { across_spatial: false channel_shared: false } }
layer { name: "prior" type: "PriorBox" bottom: "pool_pad" bottom: "x" top: "prior" prior_box_param {
  min_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 3 flip: true variance: 0.1 } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "bn" top: "bn" }
layer { name: "softmax" type: "Softmax" bottom: "x" top: "softmax" softmax_param { axis: 2 } }
"""

EDGE_EXPECTED = {
    # H: (11 + 4 - 3) // 2 + 1 = 7; W: (13 + 2 - 5) // 3 + 1 = 4; weight (6, 4/2, 3, 5)
    "conv_hw": ([(1, 6, 7, 4)], [(6, 2, 3, 5), (6,)]),
    # dilated extent 2*(3-1)+1 = 5: 11 + 4 - 5 + 1 = 11
    "conv_dil": ([(1, 8, 11, 13)], [(8, 4, 3, 3)]),
    # 2*(11-1) + 4 - 2 = 22, 2*(13-1) + 4 - 2 = 26; weight (C_in, O/group, k, k)
    "deconv": ([(1, 6, 22, 26)], [(4, 3, 4, 4), (6,)]),
    # ceil((11+2-2)/2)+1 = 7 but window 7 would start at 12 >= 11+1: 6; likewise W 8 -> 7
    "pool_pad": ([(1, 4, 6, 7)], []),
    # ceil((11-3)/2)+1 = 5, ceil((13-3)/2)+1 = 6
    "pool_ceil": ([(1, 4, 5, 6)], []),
    "pool_glob": ([(1, 4, 1, 1)], []),
    "ip": ([(1, 7)], [(7, 4 * 11 * 13), (7,)]),
    "ip_axis": ([(1, 4, 5)], [(5, 11 * 13), (5,)]),
    "ip_t": ([(1, 3)], [(4 * 11 * 13, 3), (3,)]),
    "slice": ([(1, 4, 11, 2), (1, 4, 11, 5), (1, 4, 11, 6)], []),
    "reshape": ([(1, 44, 13)], []),
    "crop": ([(1, 4, 5, 6)], []),
    "flat": ([(1, 572)], []),
    "concat": ([(1, 12, 11, 13)], []),
    "sum": ([(1, 4, 11, 13)], []),
    "perm": ([(1, 13, 4, 11)], []),
    "norm": ([(1, 4, 11, 13)], [(4,)]),
    # ratios 1, 2, 1/2, 3, 1/3 for one min size, plus one max size: 6 priors on the 6x7 map
    "prior": ([(1, 2, 6 * 7 * 6 * 4)], []),
    "bn": ([(1, 4, 11, 13)], [(4,), (4,), (1,)]),
    "scale": ([(1, 4, 11, 13)], [(4,), (4,)]),
    "prelu": ([(1, 4, 11, 13)], [(4,)]),
    "softmax": ([(1, 4, 11, 13)], []),
}


def test_edge_cases_by_hand_and_against_opencv(tmp_path):
    text = with_input((1, 4, 11, 13), EDGE_NET)
    net = net_of(text)
    shapes = infer_shapes(net)
    for name, (tops, params) in EDGE_EXPECTED.items():
        assert (shapes.layer(name).top_shapes, shapes.layer(name).param_shapes) == (tops, params), name
    assert shapes.layer("deconv").macs == 4 * 11 * 13 * 3 * 16
    assert shapes.layer("conv_hw").macs == 6 * 7 * 4 * 2 * 15
    assert shapes.layer("ip_axis").macs == 4 * 143 * 5
    (tmp_path / "edge.prototxt").write_text(text)
    write_binary(tmp_path / "edge.caffemodel", random_weights(net, shapes))
    compare_with_opencv(net, shapes, tmp_path / "edge.prototxt", tmp_path / "edge.caffemodel")


# ------------------------------------------------------------- single rules


def test_convolution_forms():
    n_d = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 ' \
          'kernel_size: 3 kernel_size: 1 kernel_size: 2 stride: 1 stride: 1 stride: 2 pad: 1 } }'
    # 3-D: (5+2-3)+1 = 5, (6+2-1)+1 = 8, (7+2-2)//2+1 = 4
    conv = layer_of((1, 3, 5, 6, 7), n_d, "c")
    assert conv.top_shapes == [(1, 2, 5, 8, 4)] and conv.param_shapes == [(2, 3, 3, 1, 2), (2,)]
    axis2 = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 ' \
            'kernel_size: 2 axis: 2 } }'
    conv = layer_of((2, 3, 5, 6, 7), axis2, "c")  # N = 2*3, C = 5, spatial 6x7 -> 5x6
    assert conv.top_shapes == [(2, 3, 4, 5, 6)] and conv.macs == 6 * 4 * 30 * 5 * 4
    both = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 ' \
           'kernel_size: 2 kernel_h: 2 kernel_w: 2 } }'
    with pytest.raises(ShapeError, match="not both"):
        tops_of((1, 3, 5, 5), both, "c")
    big = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 7 } }'
    with pytest.raises(ShapeError, match="does not fit"):
        tops_of((1, 3, 5, 5), big, "c")


@pytest.mark.parametrize("group, outputs, message", [(4, 8, "input channels 6 are not divisible by group 4"),
                                                      (3, 8, "num_output 8 is not divisible by group 3")])
def test_convolution_group_mismatch(group, outputs, message):
    body = f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {{ ' \
           f'num_output: {outputs} kernel_size: 1 group: {group} }} }}'
    with pytest.raises(ShapeError, match=f"test.prototxt: c: {message}"):
        tops_of((1, 6, 4, 4), body, "c")


@pytest.mark.parametrize("size, kernel, stride, pad, mode, expected", [
    (6, 3, 2, 0, "CEIL", 3),   # ceil(3/2) + 1
    (6, 3, 2, 0, "FLOOR", 2),  # floor(3/2) + 1
    (5, 2, 2, 1, "CEIL", 3),   # ceil(5/2) + 1 = 4, but (4-1)*2 = 6 >= 5+1: the last window would start in the pad
    (4, 2, 2, 1, "CEIL", 3),   # ceil(4/2) + 1 = 3, (3-1)*2 = 4 < 4+1: kept
    (7, 3, 3, 1, "FLOOR", 3),  # floor(6/3) + 1 = 3, (3-1)*3 = 6 < 8
    (2, 2, 1, 1, "CEIL", 3),   # ceil(2/1) + 1 = 3, (3-1)*1 = 2 < 3
])
def test_pooling_rounding(size, kernel, stride, pad, mode, expected):
    body = f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ pool: MAX ' \
           f'kernel_size: {kernel} stride: {stride} pad: {pad} round_mode: {mode} }} }}'
    assert tops_of((1, 1, size, size), body, "p") == [(1, 1, expected, expected)]


def test_pooling_mask_top_and_errors():
    mask = 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "mask" pooling_param { kernel_size: 2 stride: 2 } }'
    assert tops_of((1, 2, 4, 4), mask, "p") == [(1, 2, 2, 2)] * 2
    ave_mask = mask.replace("kernel_size", "pool: AVE kernel_size")
    with pytest.raises(ShapeError, match="only MAX"):
        tops_of((1, 2, 4, 4), ave_mask, "p")
    glob = 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { global_pooling: true kernel_size: 2 } }'
    with pytest.raises(ShapeError, match="no kernel size"):
        tops_of((1, 2, 4, 4), glob, "p")


def test_spp():
    body = 'layer { name: "s" type: "SPP" bottom: "x" top: "s" spp_param { pyramid_height: 3 } }'
    # levels of 1, 2x2 and 4x4 bins on 5 channels
    assert tops_of((2, 5, 13, 9), body, "s") == [(2, 5 * (1 + 4 + 16))]
    assert tops_of((2, 5, 13, 9), body.replace("3", "1"), "s") == [(2, 5, 1, 1)]


@pytest.mark.parametrize("reshape, expected", [
    ("shape { dim: 0 dim: -1 }", (2, 60)),
    ("shape { dim: -1 dim: 0 dim: 1 }", (40, 3, 1)),      # axis 1 (3) copied, 120 / 3 = 40
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 12, 5)),
    ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3, 4, 5, 1, 1)),
    ("axis: 2 shape { dim: 0 dim: 5 }", (2, 3, 4, 5)),    # copy relative to axis 2
])
def test_reshape(reshape, expected):
    body = f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param {{ {reshape} }} }}'
    assert tops_of((2, 3, 4, 5), body, "r") == [expected]


@pytest.mark.parametrize("reshape, message", [("shape { dim: -1 dim: -1 }", "only one"),
                                              ("shape { dim: 7 dim: -1 }", "do not divide"),
                                              ("shape { dim: 2 dim: 3 }", "holds 6 values")])
def test_reshape_errors(reshape, message):
    body = f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param {{ {reshape} }} }}'
    with pytest.raises(ShapeError, match=message):
        tops_of((2, 3, 4, 5), body, "r")


def test_slice_forms():
    points = 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { slice_point: 2 slice_point: 5 } }'
    assert tops_of((1, 8, 3), points, "s") == [(1, 2, 3), (1, 3, 3), (1, 3, 3)]
    equal = 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_dim: 2 } }'
    assert tops_of((1, 8, 6), equal, "s") == [(1, 8, 3), (1, 8, 3)]
    with pytest.raises(ShapeError, match="evenly"):
        tops_of((1, 8, 5), equal, "s")
    with pytest.raises(ShapeError, match="2 slice points for 2 tops"):
        tops_of((1, 8, 6), points.replace(' top: "c"', ""), "s")


def test_crop():
    body = 'layer { name: "ref" type: "DummyData" top: "ref" dummy_data_param { shape { dim: 1 dim: 3 dim: 11 dim: 13 } } }\n' \
           'layer { name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "c" crop_param { axis: 2 offset: 1 offset: 2 } }'
    assert tops_of((1, 16, 20, 20), body, "c") == [(1, 16, 11, 13)]
    all_axes = body.replace("axis: 2 offset: 1 offset: 2", "axis: 1 offset: 0")
    assert tops_of((1, 16, 20, 20), all_axes, "c") == [(1, 3, 11, 13)]
    with pytest.raises(ShapeError, match="exceeds axis 3"):
        tops_of((1, 16, 20, 14), body, "c")


def test_deconvolution_and_inner_product_forms():
    deconv = 'layer { name: "d" type: "Deconvolution" bottom: "x" top: "d" convolution_param { ' \
             'num_output: 4 group: 2 kernel_size: 4 stride: 2 pad: 1 bias_term: false } }'
    layer = layer_of((1, 8, 7, 7), deconv, "d")
    assert layer.top_shapes == [(1, 4, 14, 14)] and layer.param_shapes == [(8, 2, 4, 4)]
    assert layer.macs == 8 * 49 * 2 * 16
    ip = 'layer { name: "f" type: "InnerProduct" bottom: "x" top: "f" inner_product_param { ' \
         'num_output: 10 axis: -1 transpose: true bias_term: false } }'
    layer = layer_of((2, 3, 4, 5), ip, "f")
    assert layer.top_shapes == [(2, 3, 4, 10)] and layer.param_shapes == [(5, 10)] and layer.macs == 24 * 5 * 10


@pytest.mark.parametrize("prior_box, priors", [
    ("min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3", 6),  # 1, 2, 1/2, 3, 1/3 + max
    ("min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 flip: false", 4),  # 1, 2, 3 + max
    ("min_size: 30 aspect_ratio: 1 aspect_ratio: 2 aspect_ratio: 2", 3),  # 1 and 2 counted once: 1, 2, 1/2
    ("min_size: 10 min_size: 20 aspect_ratio: 2", 6),  # (1, 2, 1/2) per min size
])
def test_prior_box_count(prior_box, priors):
    body = f'layer {{ name: "p" type: "PriorBox" bottom: "x" bottom: "x" top: "p" prior_box_param {{ {prior_box} }} }}'
    assert tops_of((1, 8, 10, 5), body, "p") == [(1, 2, 10 * 5 * priors * 4)]


def test_detection_output_declared_shape():
    body = 'layer { name: "d" type: "DetectionOutput" bottom: "x" bottom: "x" bottom: "x" top: "d" ' \
           'detection_output_param { num_classes: 2 KEEP } }'
    assert tops_of((1, 8), body.replace("KEEP", "keep_top_k: 200"), "d") == [(1, 1, 200, 7)]
    assert tops_of((1, 8), body.replace("KEEP", ""), "d") == [(1, 1, 1, 7)]


def test_scale_bias_forms():
    scale = 'layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { axis: 1 num_axes: -1 bias_term: true } }'
    assert layer_of((2, 3, 4), scale, "s").param_shapes == [(3, 4), (3, 4)]
    scalar = 'layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { num_axes: 0 } }'
    assert layer_of((2, 3, 4), scalar, "s").param_shapes == [()]
    two = 'layer { name: "y" type: "DummyData" top: "y" dummy_data_param { shape { dim: 2 dim: 3 } } }\n' \
          'layer { name: "s" type: "Scale" bottom: "x" bottom: "y" top: "s" scale_param { bias_term: true } }\n' \
          'layer { name: "b" type: "Bias" bottom: "x" bottom: "y" top: "b" }'
    net = net_of(with_input((2, 3, 4), two.replace("shape { dim: 2 dim: 3 }", "shape { dim: 3 }")))
    shapes = infer_shapes(net)
    assert shapes.layer("s").param_shapes == [(3,)]  # only the bias is learned
    assert shapes.layer("b").param_shapes == []
    bias = 'layer { name: "b" type: "Bias" bottom: "x" top: "b" bias_param { axis: 0 num_axes: 2 } }'
    assert layer_of((2, 3, 4), bias, "b").param_shapes == [(2, 3)]
    with pytest.raises(ShapeError, match="does not match"):
        layer_of((2, 3, 4), two.replace("dim: 2 dim: 3", "dim: 4"), "s")


def test_weighted_normalisation_layers():
    prelu = 'layer { name: "p" type: "PReLU" bottom: "x" top: "p" prelu_param { channel_shared: true } }'
    assert layer_of((1, 6, 2, 2), prelu, "p").param_shapes == [()]
    assert layer_of((1, 6, 2, 2), prelu.replace("true", "false"), "p").param_shapes == [(6,)]
    norm = 'layer { name: "n" type: "Normalize" bottom: "x" top: "n" norm_param { channel_shared: true } }'
    assert layer_of((1, 6, 2, 2), norm, "n").param_shapes == [()]
    assert layer_of((1, 6, 2, 2), norm.replace("true", "false"), "n").param_shapes == [(6,)]
    bn = 'layer { name: "b" type: "BatchNorm" bottom: "x" top: "b" }'
    assert layer_of((5, 6), bn, "b").param_shapes == [(6,), (6,), (1,)]
    embed = 'layer { name: "e" type: "Embed" bottom: "x" top: "e" embed_param { num_output: 8 input_dim: 100 } }'
    layer = layer_of((4, 7), embed, "e")
    assert layer.top_shapes == [(4, 7, 8)] and layer.param_shapes == [(100, 8), (8,)] and layer.params == 808


def test_eltwise_needs_equal_shapes():
    body = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }\n' \
           'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "c" top: "e" }'
    with pytest.raises(ShapeError, match=r"e: Eltwise bottoms differ: 'x' is \(1, 3, 5, 5\), 'c' is \(1, 3, 3, 3\)"):
        tops_of((1, 3, 5, 5), body, "e")


def test_concat_flatten_tile_reduction_argmax():
    def one(body, name, shape=(2, 3, 4, 5)):
        return tops_of(shape, body, name)

    legacy = 'layer { name: "c" type: "Concat" bottom: "x" bottom: "x" top: "c" concat_param { concat_dim: 2 } }'
    assert one(legacy, "c") == [(2, 3, 8, 5)]
    assert one('layer { name: "c" type: "Concat" bottom: "x" bottom: "x" top: "c" concat_param { axis: -1 } }', "c") \
        == [(2, 3, 4, 10)]
    assert one('layer { name: "f" type: "Flatten" bottom: "x" top: "f" flatten_param { axis: 1 end_axis: 2 } }', "f") \
        == [(2, 12, 5)]
    assert one('layer { name: "t" type: "Tile" bottom: "x" top: "t" tile_param { axis: 2 tiles: 3 } }', "t") \
        == [(2, 3, 12, 5)]
    assert one('layer { name: "r" type: "Reduction" bottom: "x" top: "r" reduction_param { axis: 2 } }', "r") == [(2, 3)]
    assert one('layer { name: "r" type: "Reduction" bottom: "x" top: "r" }', "r") == [()]
    assert one('layer { name: "a" type: "ArgMax" bottom: "x" top: "a" argmax_param { top_k: 2 out_max_val: true } }',
               "a") == [(2, 2, 2, 1)]
    assert one('layer { name: "a" type: "ArgMax" bottom: "x" top: "a" argmax_param { top_k: 3 } }', "a",
               (2, 10)) == [(2, 1, 3)]
    assert one('layer { name: "a" type: "ArgMax" bottom: "x" top: "a" argmax_param { axis: 1 top_k: 2 } }', "a") \
        == [(2, 2, 4, 5)]
    assert one('layer { name: "p" type: "Permute" bottom: "x" top: "p" permute_param { order: 0 order: 3 } }', "p") \
        == [(2, 5, 3, 4)]  # axes left out follow in order


def test_data_layers_declared_shapes():
    body = """
layer { name: "mem" type: "MemoryData" top: "m" top: "ml" memory_data_param { batch_size: 4 channels: 3 height: 8 width: 9 } }
layer { name: "img" type: "ImageData" top: "i" top: "il" image_data_param { source: "l.txt" batch_size: 2
        new_height: 20 new_width: 30 is_color: false } }
layer { name: "dummy" type: "DummyData" top: "d1" top: "d2" dummy_data_param { num: 2 channels: 3 channels: 4 height: 5 width: 6 } }
layer { name: "two" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "param" type: "Parameter" top: "w" parameter_param { shape { dim: 3 dim: 4 } } }
layer { name: "hdf5" type: "HDF5Data" top: "h" hdf5_data_param { source: "h.txt" batch_size: 8 } }
"""
    shapes = infer_shapes(net_of(with_input((1,), body)), {"h": (8, 7)})
    assert shapes.layer("mem").top_shapes == [(4, 3, 8, 9), (4,)]
    assert shapes.layer("img").top_shapes == [(2, 1, 20, 30), (2,)]
    assert shapes.layer("dummy").top_shapes == [(2, 3, 5, 6), (2, 4, 5, 6)]
    assert shapes.layer("two").top_shapes == [(1, 2), (1, 2)]
    assert shapes.layer("param").top_shapes == [(3, 4)] and shapes.layer("param").param_shapes == [(3, 4)]
    assert shapes.layer("hdf5").top_shapes == [(8, 7)]
    overridden = infer_shapes(net_of(with_input((1, 3, 8, 8), "")), {"x": (2, 3, 16, 16)})
    assert overridden.layer("in").top_shapes == [(2, 3, 16, 16)]


def test_losses_accuracy_silence():
    body = """
layer { name: "label" type: "DummyData" top: "label" dummy_data_param { shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per_class" }
layer { name: "euclid" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "euclid" }
layer { name: "silence" type: "Silence" bottom: "x" bottom: "label" }
"""
    shapes = infer_shapes(net_of(with_input((2, 10), body)))
    assert shapes.layer("loss").top_shapes == [(), (2, 10)]
    assert shapes.layer("acc").top_shapes == [(), (10,)]
    assert shapes.layer("euclid").top_shapes == [()]
    assert shapes.layer("silence").top_shapes == []


def test_lstm_parameters():
    body = """
layer { name: "cont" type: "DummyData" top: "cont" dummy_data_param { shape { dim: 5 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { num_output: 8 } }
"""
    lstm = layer_of((5, 2, 3), body, "lstm")
    assert lstm.top_shapes == [(5, 2, 8)]
    assert lstm.param_shapes == [(32, 3), (32,), (32, 8)]
    assert lstm.macs == 5 * 2 * (32 * 3 + 32 * 8)
    rnn = layer_of((5, 2, 3), body.replace('"LSTM"', '"RNN"'), "lstm")
    # W_xh, b_h, W_hh, W_ho, b_o
    assert rnn.top_shapes == [(5, 2, 8)] and rnn.param_shapes == [(8, 3), (8,), (8, 8), (8, 8), (8,)]


def test_unknown_type_needs_top_shapes():
    body = 'layer { name: "py" type: "Python" bottom: "x" top: "y" }\n' \
           'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }'
    with pytest.raises(UnsupportedLayerError, match="py: unknown layer type 'Python': no shape rule"):
        infer_shapes(net_of(with_input((1, 4), body)))
    shapes = infer_shapes(net_of(with_input((1, 4), body)), top_shapes={"py": [(1, 9)]})
    assert shapes.layer("py").param_shapes is None
    assert shapes.layer("r").top_shapes == [(1, 9)]


def test_wrong_bottom_count():
    with pytest.raises(GraphError, match="Eltwise takes 2 or more bottoms, got 1"):
        tops_of((1, 4), 'layer { name: "e" type: "Eltwise" bottom: "x" top: "e" }', "e")


def test_errors_are_collected_past_a_failed_layer():
    body = """
layer { name: "bad" type: "Convolution" bottom: "x" top: "bad" convolution_param { num_output: 3 kernel_size: 9 } }
layer { name: "after_bad" type: "ReLU" bottom: "bad" top: "after_bad" }
layer { name: "also_bad" type: "Pooling" bottom: "x" top: "p" pooling_param { kernel_size: 2 pad: 2 } }
layer { name: "fine" type: "InnerProduct" bottom: "x" top: "fine" inner_product_param { num_output: 2 } }
"""
    errors = []
    shapes = infer_shapes(net_of(with_input((1, 3, 4, 4), body)), errors=errors)
    assert [e.layer for e in errors] == ["bad", "also_bad"]
    assert shapes.layer("fine").top_shapes == [(1, 2)]
    with pytest.raises(ShapeError):
        shapes.layer("after_bad")


def test_shared_parameters_count_once():
    body = """
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" } inner_product_param { num_output: 3 } }
layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" } param { name: "b" } inner_product_param { num_output: 3 } }
"""
    shapes = infer_shapes(net_of(with_input((1, 4), body)))
    assert shapes.layer("b").params == 15
    assert shapes.totals() == (15, 24)
