"""The IR: blob versions of in-place layers, phase filtering, wiring errors."""
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.errors import GraphError
from caffe_surgery.graph import TEST, TRAIN, build_net
from caffe_surgery.io import read_net_text
from conftest import REFERENCE

TRAIN_VAL = """
name: "tv"
layer { name: "train_data" type: "Input" top: "data" include { phase: TRAIN } input_param { shape { dim: 64 dim: 3 } } }
layer { name: "test_data" type: "Input" top: "data" include { phase: TEST } input_param { shape { dim: 1 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" exclude { phase: TEST } }
layer { name: "deep_only" type: "ReLU" bottom: "ip" top: "ip" include { min_level: 2 } }
layer { name: "staged" type: "Sigmoid" bottom: "ip" top: "sig" include { stage: "deploy" } }
layer { name: "out" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _net(text, **kwargs):
    return build_net(text_format.Parse(text, caffe_pb2.NetParameter()), **kwargs)


def test_in_place_versions_are_addressable():
    net = _net(TRAIN_VAL, phase=TEST)
    assert [l.name for l in net.layers] == ["test_data", "ip", "relu", "out"]
    versions = net.versions("ip")
    assert [v.producer for v in versions] == ["ip", "relu"]
    assert net.blob_after("relu") == versions[1] == net.final("ip")
    assert net.resolve("ip@ip") == versions[0] and versions[0].key == "ip" and versions[1].key == "ip@relu"
    assert net.consumers(versions[0]) == [net.layer("relu")]
    assert net.consumers(versions[1]) == [net.layer("out")]
    assert net.layer("relu").in_place and not net.layer("ip").in_place
    assert [o.name for o in net.outputs()] == ["prob"]


def test_phase_level_and_stage_rules():
    train = _net(TRAIN_VAL, phase=TRAIN)
    assert [l.name for l in train.layers] == ["train_data", "ip", "relu", "drop", "out"]
    deep = _net(TRAIN_VAL, phase=TEST, level=3, stages=["deploy"])
    assert [l.name for l in deep.layers] == ["test_data", "ip", "relu", "deep_only", "staged", "out"]
    assert [v.producer for v in deep.versions("ip")] == ["ip", "relu", "deep_only"]


def test_build_does_not_modify_its_input():
    message = text_format.Parse(TRAIN_VAL, caffe_pb2.NetParameter())
    before = message.SerializeToString()
    net = build_net(message, phase=TEST)
    net.layer("ip").param.inner_product_param.num_output = 99
    assert message.SerializeToString() == before


def test_reference_maxout_test_net():
    net = build_net(read_net_text(REFERENCE / "mnist_test_0.prototxt"))
    assert [l.type for l in net.layers][:6] == ["Data", "Convolution", "Pooling", "Convolution", "Pooling", "InnerProduct"]
    relu_out = net.blob_after("relu3")
    assert relu_out.name == "fc_3" and net.consumers(relu_out)[0].name == "premax"


def test_train_only_prototxt_fails_in_test_phase_like_caffe():
    with pytest.raises(GraphError, match="premax: bottom blob 'droppremax' is not produced"):
        build_net(read_net_text(REFERENCE / "mnist_train_0.prototxt"), phase=TEST)


@pytest.mark.parametrize("text, message", [
    ('layer { name: "a" type: "ReLU" bottom: "nothing" top: "a" }', "bottom blob 'nothing' is not produced"),
    ('layer { name: "a" type: "ReLU" bottom: "b" top: "a" } layer { name: "b" type: "ReLU" bottom: "a" top: "b" }',
     "produced only later, by layer 'b'"),
    ('layer { name: "i" type: "Input" top: "x" } layer { name: "j" type: "Input" top: "x" }',
     "top blob 'x' is already produced by layer 'i'"),
    ('layer { name: "i" type: "Input" top: "x" } layer { name: "i" type: "ReLU" bottom: "x" top: "x" }',
     "layer name is used twice"),
])
def test_wiring_errors(text, message):
    with pytest.raises(GraphError, match=message):
        _net(text)
