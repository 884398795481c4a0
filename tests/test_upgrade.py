"""Upgrading V0/V1 nets and legacy solvers to the current format (caffe_surgery.upgrade)."""
import difflib
from collections import Counter

import numpy as np
import pytest
from google.protobuf import text_format, unknown_fields

from caffe_surgery import caffe_pb2
from caffe_surgery.errors import CaffeSurgeryError, GraphError, ParseError, UnsupportedLayerError
from caffe_surgery.upgrade import (SOLVER_TYPE_NAMES, V0_TYPE_NAMES, V1_TYPE_NAMES, net_format,
                                   upgrade_net, upgrade_solver)
from conftest import REAL_MODELS, REFERENCE

V1Layer = caffe_pb2.V1LayerParameter


def parse_net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Merge(text, caffe_pb2.NetParameter())


def load_net(path) -> caffe_pb2.NetParameter:
    if path.suffix == ".caffemodel":
        net = caffe_pb2.NetParameter()
        net.ParseFromString(path.read_bytes())
        return net
    return parse_net(path.read_text())


def assert_same_net(actual, expected):
    """Compare messages with ==; on a mismatch fail with a text diff."""
    if actual != expected:
        diff = difflib.unified_diff(text_format.MessageToString(expected).splitlines(),
                                    text_format.MessageToString(actual).splitlines(),
                                    "expected", "actual", lineterm="")
        pytest.fail("upgraded message differs from the expectation:\n" + "\n".join(diff))


def by_name(net):
    return {layer.name: layer for layer in net.layer}


# --- tables -----------------------------------------------------------------------------

def test_v1_type_table_covers_every_enum_value():
    assert set(V1_TYPE_NAMES) == set(V1Layer.LayerType.keys())
    assert len(V1_TYPE_NAMES) == 40
    assert V1_TYPE_NAMES["SOFTMAX_LOSS"] == "SoftmaxWithLoss"
    assert V1_TYPE_NAMES["NONE"] == ""


def test_v0_type_table_targets_v1_enum_names():
    assert set(V0_TYPE_NAMES.values()) <= set(V1Layer.LayerType.keys())


def test_solver_type_table_covers_every_enum_value():
    assert set(SOLVER_TYPE_NAMES) == set(caffe_pb2.SolverParameter.SolverType.keys())


def test_every_copied_v1_field_has_the_same_field_in_layer_parameter():
    """The V1 -> V2 copy relies on same-named, same-typed fields."""
    special = {"type", "param", "blob_share_mode", "blobs_lr", "weight_decay", "layer"}
    current = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for field in V1Layer.DESCRIPTOR.fields:
        if field.name in special:
            continue
        assert field.name in current, field.name
        twin = current[field.name]
        assert (twin.type, twin.is_repeated) == (field.type, field.is_repeated), field.name
        assert twin.message_type is field.message_type, field.name


# --- hand-written nets ------------------------------------------------------------------

V1_NET = """
name: "tiny_v1"
layers {
  name: "mnist" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 16
               scale: 0.5 mean_file: "mean.binaryproto" crop_size: 6 mirror: true }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "conv1_w" param: "conv1_b" blob_share_mode: PERMISSIVE
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  param: "shared_w" blobs_lr: 1 blobs_lr: 2
  blobs { num: 1 channels: 1 height: 2 width: 3 data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }
  blobs { num: 1 channels: 1 height: 1 width: 2 data: 0.5 data: -0.5 }
  inner_product_param { num_output: 2 }
}
layers { name: "sum" type: ELTWISE bottom: "ip1" bottom: "ip1" top: "sum"
         eltwise_param { operation: 1 coeff: 1 coeff: -1 } }
layers { name: "drop" type: DROPOUT bottom: "sum" top: "sum" dropout_param { dropout_ratio: 0.25 }
         exclude { stage: "deploy" } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "sum" bottom: "label" top: "loss"
         loss_weight: 2 loss_param { ignore_label: 255 normalize: false } }
layers { name: "acc" type: ACCURACY bottom: "sum" bottom: "label" top: "acc"
         accuracy_param { top_k: 2 } include { phase: TEST } }
"""

V1_NET_UPGRADED = """
name: "tiny_v1"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.5 mean_file: "mean.binaryproto" crop_size: 6 mirror: true }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 16 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "conv1_w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
  param { name: "conv1_b" lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { name: "shared_w" lr_mult: 1 }
  param { lr_mult: 2 }
  blobs { num: 1 channels: 1 height: 2 width: 3 data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }
  blobs { num: 1 channels: 1 height: 1 width: 2 data: 0.5 data: -0.5 }
  inner_product_param { num_output: 2 }
}
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip1" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "drop" type: "Dropout" bottom: "sum" top: "sum" dropout_param { dropout_ratio: 0.25 }
        exclude { stage: "deploy" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss"
        loss_weight: 2 loss_param { ignore_label: 255 normalize: false } }
layer { name: "acc" type: "Accuracy" bottom: "sum" bottom: "label" top: "acc"
        accuracy_param { top_k: 2 } include { phase: TEST } }
"""


def test_hand_written_v1_net_upgrades_to_expected_net():
    net = parse_net(V1_NET)
    assert net_format(net) == "V1"
    assert_same_net(upgrade_net(net), parse_net(V1_NET_UPGRADED))


V0_NET = """
name: "tiny_v0"
force_backward: true
layers {
  layer { name: "data" type: "data" source: "train_leveldb" batchsize: 32 scale: 0.25
          meanfile: "mean.binaryproto" cropsize: 24 mirror: true rand_skip: 5 }
  top: "data" top: "label"
}
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 8 biasterm: false kernelsize: 5 stride: 2 group: 2
          weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 weight_decay: 1
          blobs { num: 1 channels: 1 height: 1 width: 2 data: 0.5 data: -1 } }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 pad: 1 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.001 beta: 0.5 k: 2 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "norm1" top: "pad2" }
layers { layer { name: "pool2" type: "pool" pool: STOCHASTIC kernelsize: 2 }
         bottom: "pad2" top: "pool2" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10
                 bias_filler { type: "constant" value: 0.1 } } bottom: "pool2" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "fc" bottom: "fc" top: "cat" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "cat" bottom: "label" }
layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } }
         bottom: "fc" bottom: "label" }
"""

V0_NET_UPGRADED = """
name: "tiny_v0"
force_backward: true
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.25 mean_file: "mean.binaryproto" crop_size: 24 mirror: true }
  data_param { source: "train_leveldb" batch_size: 32 rand_skip: 5 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  blobs { num: 1 channels: 1 height: 1 width: 2 data: 0.5 data: -1 }
  convolution_param { num_output: 8 bias_term: false pad: 2 kernel_size: 5 stride: 2 group: 2
                      weight_filler { type: "gaussian" std: 0.01 } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.001 beta: 0.5 k: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "norm1" top: "pool2"
        pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 10 bias_filler { type: "constant" value: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "cat" type: "Concat" bottom: "fc" bottom: "fc" top: "cat"
        concat_param { concat_dim: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cat" bottom: "label" }
layer { name: "out" type: "HDF5Output" bottom: "fc" bottom: "label"
        hdf5_output_param { file_name: "out.h5" } }
"""


def test_hand_written_v0_net_upgrades_to_expected_net():
    net = parse_net(V0_NET)
    assert net_format(net) == "V0"
    assert_same_net(upgrade_net(net), parse_net(V0_NET_UPGRADED))


V0_DATA_SOURCES = """
layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 4 rand_skip: 1
                 shuffle_images: true new_height: 32 new_width: 48 } top: "img" top: "img_label" }
layers { layer { name: "win" type: "window_data" source: "windows.txt" batchsize: 8 cropsize: 16
                 mirror: true det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.5
                 det_context_pad: 3 det_crop_mode: "square" } top: "win" top: "win_label" }
layers { layer { name: "h5" type: "hdf5_data" source: "files.txt" batchsize: 2 }
         top: "h5" top: "h5_label" }
layers { layer { name: "info" type: "infogain_loss" source: "H.binaryproto" }
         bottom: "h5" bottom: "h5_label" }
"""

V0_DATA_SOURCES_UPGRADED = """
layer { name: "img" type: "ImageData" top: "img" top: "img_label"
        image_data_param { source: "list.txt" batch_size: 4 rand_skip: 1 shuffle: true
                           new_height: 32 new_width: 48 } }
layer { name: "win" type: "WindowData" top: "win" top: "win_label"
        transform_param { crop_size: 16 mirror: true }
        window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.6
                            bg_threshold: 0.4 fg_fraction: 0.5 context_pad: 3
                            crop_mode: "square" } }
layer { name: "h5" type: "HDF5Data" top: "h5" top: "h5_label"
        hdf5_data_param { source: "files.txt" batch_size: 2 } }
layer { name: "info" type: "InfogainLoss" bottom: "h5" bottom: "h5_label"
        infogain_loss_param { source: "H.binaryproto" } }
"""


def test_v0_data_source_fields_go_to_their_typed_parameters():
    assert_same_net(upgrade_net(parse_net(V0_DATA_SOURCES)), parse_net(V0_DATA_SOURCES_UPGRADED))


def test_v1_image_and_window_data_transformation_fields_move():
    net = parse_net("""
        layers { name: "img" type: IMAGE_DATA top: "a" top: "b"
                 image_data_param { source: "l.txt" scale: 2 mirror: true } }
        layers { name: "win" type: WINDOW_DATA top: "c" top: "d"
                 window_data_param { source: "w.txt" mean_file: "m.binaryproto" crop_size: 9 }
                 transform_param { mirror: true } }
    """)
    expected = parse_net("""
        layer { name: "img" type: "ImageData" top: "a" top: "b"
                transform_param { scale: 2 mirror: true } image_data_param { source: "l.txt" } }
        layer { name: "win" type: "WindowData" top: "c" top: "d"
                transform_param { mirror: true mean_file: "m.binaryproto" crop_size: 9 }
                window_data_param { source: "w.txt" } }
    """)
    assert_same_net(upgrade_net(net), expected)


def test_current_format_net_is_returned_unchanged():
    for path in sorted(REFERENCE.glob("mnist_t*_?.prototxt")):
        net = load_net(path)
        assert net_format(net) == "V2"
        assert_same_net(upgrade_net(net), net)


def test_net_level_unknown_fields_survive():
    raw = parse_net(V1_NET).SerializeToString() + b"\xb8\x3e\x07"  # field 999, varint 7
    net = caffe_pb2.NetParameter()
    net.ParseFromString(raw)
    upgraded = upgrade_net(net)
    kept = [(field.field_number, field.data) for field in unknown_fields.UnknownFieldSet(upgraded)]
    assert kept == [(999, 7)]


# --- real legacy files ------------------------------------------------------------------

def test_real_v0_imagenet_padding_layers_fold_into_the_next_conv(shared_dir):
    source = load_net(REAL_MODELS / "proto_v0_bvlc" / "imagenet_deploy_v0_padding.prototxt")
    assert net_format(source) == "V0"
    net = upgrade_net(source)
    assert net_format(net) == "V2"
    names = [layer.name for layer in net.layer]
    assert not [name for name in names if name.startswith("pad")]
    assert len(names) == 27 - 4 + 1  # four padding layers gone, one Input layer added
    layers = by_name(net)
    # pad2 (pad 2) reads norm1, pad3 (1) norm2, pad4 (1) conv3, pad5 (1) conv4.
    expected = {"conv1": ([], "data"), "conv2": ([2], "norm1"), "conv3": ([1], "norm2"),
                "conv4": ([1], "conv3"), "conv5": ([1], "conv4")}
    for name, (pad, bottom) in expected.items():
        assert layers[name].type == "Convolution"
        assert list(layers[name].convolution_param.pad) == pad, name
        assert list(layers[name].bottom) == [bottom], name
    assert list(layers["conv2"].convolution_param.kernel_size) == [5]
    assert layers["conv2"].convolution_param.group == 2
    assert list(layers["conv1"].convolution_param.stride) == [4]
    assert [(p.lr_mult, p.decay_mult) for p in layers["fc6"].param] == [(1, 1), (2, 0)]
    assert layers["prob"].type == "Softmax"
    assert Counter(layer.type for layer in net.layer) == {
        "Input": 1, "Convolution": 5, "ReLU": 7, "Pooling": 3, "LRN": 2, "InnerProduct": 3,
        "Dropout": 2, "Softmax": 1}
    assert names[0] == "input" and list(net.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]


def test_real_v0_imagenet_train_file_upgrades_like_the_deploy_file(shared_dir):
    """The two BVLC V0 files differ only in the net name."""
    named = upgrade_net(load_net(REAL_MODELS / "proto_v0_bvlc" / "imagenet_v0.prototxt"))
    assert named.name == "CaffeNet"
    named.ClearField("name")
    deploy = upgrade_net(load_net(REAL_MODELS / "proto_v0_bvlc" /
                                  "imagenet_deploy_v0_padding.prototxt"))
    assert_same_net(named, deploy)


def test_real_v0_lenet_upgrades_to_the_same_net_as_the_v1_lenet(shared_dir):
    v0 = upgrade_net(load_net(REAL_MODELS / "proto_v0_bvlc" / "lenet_v0.prototxt"))
    v1 = upgrade_net(load_net(REAL_MODELS / "lenet_v1_everpeace" / "lenet.prototxt"))
    assert_same_net(v0, v1)


def test_real_v0_lenet_train_net(shared_dir):
    net = upgrade_net(load_net(REAL_MODELS / "proto_v0_bvlc" / "lenet_train_v0.prototxt"))
    data = net.layer[0]
    assert (data.type, list(data.top)) == ("Data", ["data", "label"])
    assert data.data_param.source == "mnist-train-leveldb"
    assert data.data_param.batch_size == 64
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert not data.data_param.HasField("scale")
    assert [layer.type for layer in net.layer][-1] == "SoftmaxWithLoss"
    assert len(net.layer) == 9


V1_FILES = {
    "proto_v1_bvlc/bvlc_caffenet_deploy_v1.prototxt": {
        "Input": 1, "Convolution": 5, "ReLU": 7, "Pooling": 3, "LRN": 2, "InnerProduct": 3,
        "Dropout": 2, "Softmax": 1},
    "proto_v1_bvlc/bvlc_googlenet_deploy_v1.prototxt": {
        "Input": 1, "Convolution": 57, "ReLU": 57, "Pooling": 14, "LRN": 2, "Concat": 9,
        "Dropout": 1, "InnerProduct": 1, "Softmax": 1},
    "proto_v1_bvlc/mnist_autoencoder_v1.prototxt": {
        "Data": 3, "Flatten": 1, "InnerProduct": 8, "Sigmoid": 7, "SigmoidCrossEntropyLoss": 1,
        "EuclideanLoss": 1},
    "proto_v1_bvlc/mnist_siamese_train_test_v1.prototxt": {
        "Data": 2, "Slice": 1, "Convolution": 4, "Pooling": 4, "InnerProduct": 6, "ReLU": 2,
        "ContrastiveLoss": 1},
    "lenet_v1_everpeace/lenet.prototxt": {
        "Input": 1, "Convolution": 2, "Pooling": 2, "InnerProduct": 2, "ReLU": 1, "Softmax": 1},
    "lenet_v1_everpeace/lenet_train_test.prototxt": {
        "Data": 2, "Convolution": 2, "Pooling": 2, "InnerProduct": 2, "ReLU": 1,
        "SoftmaxWithLoss": 1, "Accuracy": 1},
    "cifar10_quick_v1_everpeace/cifar10_quick.prototxt": {
        "Input": 1, "Convolution": 3, "Pooling": 3, "ReLU": 3, "InnerProduct": 2, "Softmax": 1},
    "cifar10_quick_v1_everpeace/cifar10_quick_train_test.prototxt": {
        "Data": 2, "Convolution": 3, "Pooling": 3, "ReLU": 3, "InnerProduct": 2,
        "SoftmaxWithLoss": 1, "Accuracy": 1},
    "cifar10_full_v1_everpeace/cifar10_full.prototxt": {
        "Input": 1, "Convolution": 3, "Pooling": 3, "ReLU": 3, "LRN": 2, "InnerProduct": 1,
        "Softmax": 1},
    "cifar10_full_v1_everpeace/cifar10_full_train_test.prototxt": {
        "Data": 2, "Convolution": 3, "Pooling": 3, "ReLU": 3, "LRN": 2, "InnerProduct": 1,
        "SoftmaxWithLoss": 1, "Accuracy": 1},
}


@pytest.mark.parametrize("relative", sorted(V1_FILES))
def test_real_v1_prototxt_upgrades(shared_dir, relative):
    source = load_net(REAL_MODELS / relative)
    assert net_format(source) == "V1"
    net = upgrade_net(source)
    assert net_format(net) == "V2"
    assert not net.input and not net.input_dim and not net.input_shape
    assert Counter(layer.type for layer in net.layer) == V1_FILES[relative]
    has_input = "Input" in V1_FILES[relative]
    assert [layer.name for layer in net.layer] == ["input"] * has_input + [
        layer.name for layer in source.layers]
    for old, new in zip(source.layers, net.layer[has_input:]):
        assert list(new.bottom) == list(old.bottom) and list(new.top) == list(old.top)
        assert [p.lr_mult for p in new.param] == list(old.blobs_lr)


def test_real_v1_siamese_shared_params_and_data_scale(shared_dir):
    net = upgrade_net(load_net(REAL_MODELS / "proto_v1_bvlc" /
                               "mnist_siamese_train_test_v1.prototxt"))
    layers = by_name(net)
    for twin in ("conv1", "conv2", "ip1", "ip2", "feat"):
        for name in (twin, twin + "_p"):
            assert [(p.name, p.lr_mult) for p in layers[name].param] == [
                (twin + "_w", 1), (twin + "_b", 2)], name
    data = [layer for layer in net.layer if layer.type == "Data"]
    assert [layer.include[0].phase for layer in data] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    for layer in data:
        assert layer.transform_param.scale == pytest.approx(0.00390625)
        assert not layer.data_param.HasField("scale")
    assert list(layers["slice_pair"].slice_param.slice_point) == [1]
    assert layers["loss"].contrastive_loss_param.margin == 1.0


def test_real_v1_googlenet_input_header(shared_dir):
    net = upgrade_net(load_net(REAL_MODELS / "proto_v1_bvlc" /
                               "bvlc_googlenet_deploy_v1.prototxt"))
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert [list(shape.dim) for shape in first.input_param.shape] == [[10, 3, 224, 224]]


CAFFEMODELS = ["lenet_v1_everpeace/lenet_iter_10000.caffemodel",
               "cifar10_quick_v1_everpeace/cifar10_quick_iter_5000.caffemodel",
               "cifar10_full_v1_everpeace/cifar10_full_iter_70000.caffemodel"]


@pytest.mark.parametrize("relative", CAFFEMODELS)
def test_real_v1_caffemodel_keeps_its_blobs(shared_dir, relative):
    source = load_net(REAL_MODELS / relative)
    assert net_format(source) == "V1"
    net = upgrade_net(source)
    layers = by_name(net)
    assert [layer.name for layer in net.layer] == [layer.name for layer in source.layers]
    weighted = [old for old in source.layers if old.blobs]
    assert weighted
    for old in weighted:
        new = layers[old.name]
        assert len(new.blobs) == len(old.blobs), old.name
        for old_blob, new_blob in zip(old.blobs, new.blobs):
            assert new_blob == old_blob  # legacy num/channels/height/width are kept as they are
            np.testing.assert_array_equal(np.asarray(new_blob.data, dtype=np.float32),
                                          np.asarray(old_blob.data, dtype=np.float32))


def test_real_v1_lenet_caffemodel_layers(shared_dir):
    net = upgrade_net(load_net(REAL_MODELS / "lenet_v1_everpeace" / "lenet_iter_10000.caffemodel"))
    layers = by_name(net)
    assert [layer.type for layer in net.layer] == [
        "Data", "Convolution", "Pooling", "Convolution", "Pooling", "InnerProduct", "ReLU",
        "InnerProduct", "SoftmaxWithLoss"]
    conv1 = layers["conv1"]
    assert [(b.num, b.channels, b.height, b.width) for b in conv1.blobs] == [(20, 1, 5, 5),
                                                                            (1, 1, 1, 20)]
    assert conv1.convolution_param.num_output == 20
    assert [p.lr_mult for p in conv1.param] == [1, 2]
    assert layers["ip1"].blobs[0].height == 500 and layers["ip1"].blobs[0].width == 800


# --- input header -----------------------------------------------------------------------

def test_input_shape_per_input_becomes_a_leading_input_layer():
    net = parse_net("""
        input: "a" input: "b"
        input_shape { dim: 1 dim: 3 } input_shape { dim: 2 dim: 5 dim: 7 }
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """)
    expected = parse_net("""
        layer { name: "input" type: "Input" top: "a" top: "b"
                input_param { shape { dim: 1 dim: 3 } shape { dim: 2 dim: 5 dim: 7 } } }
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """)
    assert_same_net(upgrade_net(net), expected)


def test_input_dim_groups_of_four_become_shapes():
    net = parse_net('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
                    'input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8')
    expected = parse_net('layer { name: "input" type: "Input" top: "a" top: "b" input_param { '
                         'shape { dim: 1 dim: 2 dim: 3 dim: 4 } '
                         'shape { dim: 5 dim: 6 dim: 7 dim: 8 } } }')
    assert_same_net(upgrade_net(net), expected)


def test_one_input_shape_is_shared_by_all_inputs():
    net = parse_net('input: "a" input: "b" input_shape { dim: 1 dim: 4 }')
    expected = parse_net('layer { name: "input" type: "Input" top: "a" top: "b" '
                         'input_param { shape { dim: 1 dim: 4 } } }')
    assert_same_net(upgrade_net(net), expected)


def test_input_names_without_shapes_are_dropped():
    net = parse_net('name: "old" input: "data" '
                    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    expected = parse_net('name: "old" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert_same_net(upgrade_net(net), expected)


@pytest.mark.parametrize("header, problem", [
    ('input: "a" input_dim: 1 input_dim: 2 input_dim: 3', "4 per input"),
    ('input: "a" input: "b" input: "c" input_shape { dim: 1 } input_shape { dim: 2 }',
     "3 inputs but 2 input shapes"),
    ('input: "a" input_shape { dim: 1 } input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1',
     "both input_shape and input_dim"),
])
def test_bad_input_headers_are_rejected(header, problem):
    with pytest.raises(ParseError, match=problem):
        upgrade_net(parse_net(header))


# --- BatchNorm --------------------------------------------------------------------------

def test_batch_norm_with_three_param_specs_gets_zero_multipliers():
    net = parse_net("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { name: "mean" lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 0 } }
    """)
    expected = parse_net("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { name: "mean" lr_mult: 0 decay_mult: 0 }
                param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 0 } }
    """)
    assert_same_net(upgrade_net(net), expected)


# --- solver -----------------------------------------------------------------------------

@pytest.mark.parametrize("enum_name, type_name", sorted(SOLVER_TYPE_NAMES.items()))
def test_solver_type_enum_becomes_type_string(enum_name, type_name):
    solver = text_format.Merge(f"base_lr: 0.01 solver_type: {enum_name}",
                               caffe_pb2.SolverParameter())
    upgraded = upgrade_solver(solver)
    assert upgraded.type == type_name and upgraded.HasField("type")
    assert not upgraded.HasField("solver_type")
    assert upgraded.base_lr == pytest.approx(0.01)


def test_solver_type_and_agreeing_solver_type_are_accepted():
    solver = text_format.Merge('type: "Adam" solver_type: ADAM', caffe_pb2.SolverParameter())
    upgraded = upgrade_solver(solver)
    assert upgraded.type == "Adam" and not upgraded.HasField("solver_type")


def test_solver_type_and_disagreeing_solver_type_are_rejected():
    solver = text_format.Merge('type: "SGD" solver_type: NESTEROV', caffe_pb2.SolverParameter())
    with pytest.raises(ParseError, match="disagree"):
        upgrade_solver(solver)


def test_current_solver_is_unchanged(shared_dir):
    solver = text_format.Merge((REFERENCE / "mnist_solver_0.prototxt").read_text(),
                               caffe_pb2.SolverParameter())
    assert upgrade_solver(solver) == solver


def test_solver_embedded_nets_are_upgraded():
    solver = caffe_pb2.SolverParameter()
    solver.solver_type = caffe_pb2.SolverParameter.RMSPROP
    solver.net_param.CopyFrom(parse_net(V1_NET))
    solver.test_net_param.add().CopyFrom(parse_net(V0_NET))
    upgraded = upgrade_solver(solver)
    assert upgraded.type == "RMSProp"
    assert_same_net(upgraded.net_param, parse_net(V1_NET_UPGRADED))
    assert_same_net(upgraded.test_net_param[0], parse_net(V0_NET_UPGRADED))


# --- inputs are never mutated -----------------------------------------------------------

def test_upgrade_does_not_mutate_its_arguments(shared_dir):
    nets = [parse_net(V0_NET), parse_net(V1_NET),
            load_net(REAL_MODELS / "proto_v0_bvlc" / "imagenet_deploy_v0_padding.prototxt"),
            load_net(REAL_MODELS / "lenet_v1_everpeace" / "lenet_iter_10000.caffemodel")]
    for net in nets:
        before = net.SerializeToString()
        upgrade_net(net)
        assert net.SerializeToString() == before
    solver = text_format.Merge("solver_type: ADAGRAD", caffe_pb2.SolverParameter())
    solver.net_param.CopyFrom(parse_net(V1_NET))
    before = solver.SerializeToString()
    upgrade_solver(solver)
    assert solver.SerializeToString() == before


# --- format detection and errors --------------------------------------------------------

def test_net_format():
    assert net_format(parse_net(V0_NET)) == "V0"
    assert net_format(parse_net(V1_NET)) == "V1"
    assert net_format(parse_net(V1_NET_UPGRADED)) == "V2"
    assert net_format(caffe_pb2.NetParameter()) == "V2"


def test_mixed_layer_and_layers_is_rejected():
    net = parse_net('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(ParseError, match="both 'layer'"):
        net_format(net)
    with pytest.raises(ParseError):
        upgrade_net(net)


def test_mixed_v0_and_v1_layers_are_rejected():
    net = parse_net('layers { layer { name: "a" type: "relu" } } layers { name: "b" type: RELU }')
    with pytest.raises(ParseError) as caught:
        upgrade_net(net)
    assert caught.value.layer == "b"


def _v0_error(text, kind):
    with pytest.raises(kind) as caught:
        upgrade_net(parse_net(text))
    assert isinstance(caught.value, CaffeSurgeryError)
    return caught.value


def test_unknown_v0_type_names_the_layer():
    error = _v0_error('layers { layer { name: "odd" type: "warp" } top: "x" }',
                      UnsupportedLayerError)
    assert error.layer == "odd" and "warp" in error.problem


def test_v0_field_that_does_not_fit_the_layer_type_is_rejected():
    error = _v0_error('input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } '
                      'bottom: "x" top: "x" }', ParseError)
    assert error.layer == "r" and "num_output" in error.problem


def test_v0_fields_outside_the_nested_layer_are_rejected():
    error = _v0_error('layers { layer { name: "r" type: "relu" } name: "outer" blobs_lr: 1 }',
                      ParseError)
    assert error.layer == "r" and "name, blobs_lr" in error.problem


def test_padding_layer_read_by_a_non_conv_layer_is_rejected():
    error = _v0_error("""
        input: "x"
        layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "relu" type: "relu" } bottom: "p" top: "r" }
    """, ParseError)
    assert error.layer == "relu" and "padding layer 'pad'" in error.problem


def test_padding_layer_nobody_reads_is_rejected():
    error = _v0_error("""
        input: "x"
        layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "relu" type: "relu" } bottom: "x" top: "r" }
    """, GraphError)
    assert error.layer == "pad"


def test_padding_into_a_conv_with_its_own_pad_is_rejected():
    error = _v0_error("""
        input: "x"
        layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "conv" type: "conv" num_output: 1 kernelsize: 3 pad: 1 }
                 bottom: "p" top: "c" }
    """, ParseError)
    assert error.layer == "conv"


def test_v0_bottom_without_producer_is_rejected():
    error = _v0_error('layers { layer { name: "relu" type: "relu" } bottom: "ghost" top: "r" }',
                      GraphError)
    assert error.layer == "relu" and "ghost" in error.problem


def test_unknown_v1_type_number_is_rejected():
    layer = V1Layer()
    layer.ParseFromString(V1Layer(name="custom").SerializeToString() + b"\x28\x63")  # type: 99
    net = caffe_pb2.NetParameter()
    net.layers.add().CopyFrom(layer)
    with pytest.raises(UnsupportedLayerError, match="99") as caught:
        upgrade_net(net)
    assert caught.value.layer == "custom"
