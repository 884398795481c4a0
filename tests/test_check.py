"""check: every problem of a prototxt/caffemodel pair, one line each, as strict as Caffe's loader."""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.blobs import array_to_blob
from caffe_surgery.check import check_files, check_model
from caffe_surgery.graph import build_net
from caffe_surgery.io import write_binary
from caffe_surgery.shapes import infer_shapes
from conftest import REAL_MODELS, REAL_PAIRS

pytest.importorskip("caffe_surgery.upgrade")

NET = """
name: "small"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "dw" type: "Convolution" bottom: "conv" top: "dw" convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "dw" top: "sum" }
layer { name: "relu" type: "PReLU" bottom: "sum" top: "sum" }
layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc" inner_product_param { num_output: 10 } }
"""


def good_weights(prototxt: str) -> caffe_pb2.NetParameter:
    """A caffemodel whose blobs have exactly the shapes the net expects."""
    net = build_net(text_format.Parse(prototxt, caffe_pb2.NetParameter()))
    shapes = infer_shapes(net)
    weights = caffe_pb2.NetParameter(name="small")
    for layer in net.layers:
        expected = shapes.layer(layer.name).param_shapes
        if expected:
            stored = weights.layer.add(name=layer.name, type=layer.type)
            stored.blobs.extend(array_to_blob(np.ones(shape, np.float32)) for shape in expected)
    return weights


def stored(weights: caffe_pb2.NetParameter, name: str) -> caffe_pb2.LayerParameter:
    return next(layer for layer in weights.layer if layer.name == name)


@pytest.fixture
def write_pair(tmp_path):
    def write(prototxt: str, weights: caffe_pb2.NetParameter):
        (tmp_path / "net.prototxt").write_text(prototxt)
        write_binary(tmp_path / "net.caffemodel", weights)
        return str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel")
    return write



@pytest.mark.parametrize("directory, prototxt, caffemodel", REAL_PAIRS, ids=[p[0] for p in REAL_PAIRS])
def test_real_pairs_have_no_problems(directory, prototxt, caffemodel):
    # lenet and the cifar nets store legacy 4-D dims (an InnerProduct weight as 1x1xOxI): Caffe accepts them
    assert check_files(REAL_MODELS / directory / prototxt, REAL_MODELS / directory / caffemodel) == []


def test_correct_pair_has_no_problems(write_pair):
    assert check_files(*write_pair(NET, good_weights(NET))) == []


def test_wrong_blob_shape(write_pair):
    weights = good_weights(NET)
    del stored(weights, "fc").blobs[0:1]
    stored(weights, "fc").blobs.insert(0, array_to_blob(np.ones((10, 255), np.float32)))
    prototxt, caffemodel = write_pair(NET, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{caffemodel}: fc: blob 0 has shape (10, 255), the layer expects (10, 256)"]


def test_missing_blobs(write_pair):
    weights = good_weights(NET)
    weights.layer.remove(stored(weights, "relu"))
    prototxt, caffemodel = write_pair(NET, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{caffemodel}: relu: no weights in the caffemodel; the PReLU layer needs 1 blobs of shapes (4,)"]


def test_batch_norm_with_two_blobs(write_pair):
    weights = good_weights(NET)
    del stored(weights, "bn").blobs[2]
    prototxt, caffemodel = write_pair(NET, weights)
    [problem] = check_files(prototxt, caffemodel)
    assert problem.startswith(f"{caffemodel}: bn: the caffemodel has 2 blobs, the BatchNorm layer needs 3")


def test_blobs_for_a_layer_without_weights(write_pair):
    weights = good_weights(NET)
    weights.layer.add(name="sum", type="Eltwise").blobs.append(array_to_blob(np.ones(3, np.float32)))
    prototxt, caffemodel = write_pair(NET, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{caffemodel}: sum: the caffemodel has 1 blobs, the Eltwise layer needs 0"]


def test_unequal_eltwise_inputs(write_pair):
    net = NET.replace("num_output: 4 group: 4 kernel_size: 3 pad: 1", "num_output: 4 group: 4 kernel_size: 3")
    prototxt, caffemodel = write_pair(net, good_weights(NET))
    assert check_files(prototxt, caffemodel) == [
        f"{prototxt}: sum: Eltwise bottoms differ: 'x' is (1, 4, 8, 8), 'dw' is (1, 4, 6, 6)"]


def test_group_mismatch(write_pair):
    net = NET.replace("num_output: 4 group: 4", "num_output: 6 group: 4")
    prototxt, caffemodel = write_pair(net, good_weights(NET))
    assert check_files(prototxt, caffemodel) == [f"{prototxt}: dw: num_output 6 is not divisible by group 4"]


def test_every_problem_is_reported(write_pair):
    net = (NET.replace("num_output: 4 group: 4", "num_output: 6 group: 4")  # group; what follows is skipped
           + 'layer { name: "scale" type: "ReLU" bottom: "x" top: "x2" }\n'  # a duplicate name: left out
           + 'layer { name: "loose" type: "ReLU" bottom: "nowhere" top: "loose" }\n'
           + 'layer { name: "after_loose" type: "ReLU" bottom: "loose" top: "after" }\n'  # follows silently
           + 'layer { name: "again" type: "Sigmoid" bottom: "x" top: "fc" }\n')
    weights = good_weights(NET)
    del stored(weights, "bn").blobs[2]
    stored(weights, "scale").blobs[1].CopyFrom(array_to_blob(np.ones(5, np.float32)))
    weights.layer.remove(stored(weights, "conv"))
    prototxt, caffemodel = write_pair(net, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{prototxt}: scale: layer name is used twice (this layer is left out of the check)",
        f"{prototxt}: loose: bottom blob 'nowhere' is not produced by any earlier layer",
        f"{prototxt}: again: top blob 'fc' is already produced by layer 'fc' (only in-place layers may rewrite a blob)",
        f"{prototxt}: dw: num_output 6 is not divisible by group 4",
        f"{caffemodel}: conv: no weights in the caffemodel; the Convolution layer needs 2 blobs of shapes (4, 4, 3, 3), (4,)",
        f"{caffemodel}: bn: the caffemodel has 2 blobs, the BatchNorm layer needs 3 (mean, variance, moving-average factor)",
        f"{caffemodel}: scale: blob 1 has shape (5,), the layer expects (4,)",
    ]


def test_misordered_layers(write_pair):
    net = NET + 'layer { name: "early" type: "ReLU" bottom: "late" top: "early" }\n' \
                'layer { name: "late" type: "ReLU" bottom: "fc" top: "late" }\n'
    prototxt, caffemodel = write_pair(net, good_weights(NET))
    assert check_files(prototxt, caffemodel) == [
        f"{prototxt}: early: bottom blob 'late' is produced only later, by layer 'late'"]


def test_legacy_dims(write_pair):
    weights = good_weights(NET)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=10, width=256)
    legacy.data.extend(np.ones(2560, np.float32))
    stored(weights, "fc").blobs[0].CopyFrom(legacy)
    assert check_files(*write_pair(NET, weights)) == []
    legacy.height, legacy.width = 256, 10  # transposed: Caffe refuses it
    stored(weights, "fc").blobs[0].CopyFrom(legacy)
    prototxt, caffemodel = write_pair(NET, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{caffemodel}: fc: blob 0 has shape (1, 1, 256, 10), the layer expects (10, 256)"]


def test_blob_with_wrong_value_count(write_pair):
    weights = good_weights(NET)
    del stored(weights, "relu").blobs[0].data[1:]
    prototxt, caffemodel = write_pair(NET, weights)
    assert check_files(prototxt, caffemodel) == [
        f"{caffemodel}: relu: blob 0: blob of shape (4,) holds 1 values, expected 4"]


def test_unreadable_files(write_pair, tmp_path):
    prototxt, _ = write_pair(NET, good_weights(NET))
    (tmp_path / "bad.caffemodel").write_bytes(b"\xff\xff\xff")
    [problem] = check_files(prototxt, tmp_path / "bad.caffemodel")
    assert problem.startswith(f"{tmp_path / 'bad.caffemodel'}: ")
    (tmp_path / "bad.prototxt").write_text("layer {")
    [problem] = check_files(tmp_path / "bad.prototxt", tmp_path / "bad.caffemodel")
    assert problem.startswith(f"{tmp_path / 'bad.prototxt'}: ")


def test_check_model_on_a_built_net():
    net = build_net(text_format.Parse(NET, caffe_pb2.NetParameter()), source="small.prototxt")
    shapes = infer_shapes(net)
    for layer in net.layers:
        layer.blobs = [np.ones(shape, np.float32) for shape in shapes.layer(layer.name).param_shapes]
    assert check_model(net, shapes) == []
    net.layer("dw").blobs[0] = np.ones((4, 4, 3, 3), np.float32)
    net.layers.append(net.layers[1])  # writing "conv" again, not in place
    assert check_model(net, None, weights_source="small.caffemodel") == [
        "small.prototxt: conv: top blob 'conv' is already produced by layer 'scale' (only in-place layers may rewrite a blob)",
        "small.caffemodel: dw: blob 0 has shape (4, 4, 3, 3), the layer expects (4, 1, 3, 3)",
    ]
