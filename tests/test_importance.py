"""Importance-weight filter pruning: attaching the weights, their initialisations, the whole method on real data."""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.cli import main
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.graph import build_net
from caffe_surgery.importance import importance_init, with_importance
from caffe_surgery.io import write_text
from caffe_surgery.model import load_model
from caffe_surgery.reproduce import lenet_maxout_text, solver_param
from conftest import FASHION_MNIST

pytest.importorskip("torch")


def test_initialisations():
    weight = np.zeros((3, 2, 1, 1), dtype=np.float32)
    weight[:, 0, 0, 0] = [1.0, -4.0, 2.0]
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(importance_init(weight, "ones", rng), [1, 1, 1])
    np.testing.assert_allclose(importance_init(weight, "l1", rng), [0.25, 1.0, 0.5])
    uniform = importance_init(weight, "uniform", rng)
    assert uniform.shape == (3,) and ((0 <= uniform) & (uniform < 1)).all()
    with pytest.raises(CaffeSurgeryError, match="unknown importance initialisation 'x'"):
        importance_init(weight, "x", rng)


def test_importance_scale_follows_its_convolution_in_place():
    net = text_format.Parse(lenet_maxout_text("db", 4, False), caffe_pb2.NetParameter())
    marked = build_net(with_importance(net, ["conv1", "conv2"]))
    names = [layer.name for layer in marked.layers]
    assert names.index("conv1_importance") == names.index("conv1") + 1
    scale = marked.layer("conv2_importance")
    assert scale.in_place and scale.type == "Scale" and not scale.param.scale_param.bias_term
    assert marked.consumers(scale.tops[0]) == [marked.layer("pool2")]


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_importance_pruning_writes_a_plain_smaller_net(tmp_path, capsys):
    spec = "idx:{0}/{1}-images-idx3-ubyte.gz:{0}/{1}-labels-idx1-ubyte.gz"
    for name, kind, limit in (("train", "train", 640), ("test", "t10k", 200)):
        assert main(["convert-data", spec.format(FASHION_MNIST, kind), "-o", str(tmp_path / f"{name}_lmdb"),
                     "--limit", str(limit)]) == 0
        (tmp_path / f"{name}.prototxt").write_text(lenet_maxout_text(str(tmp_path / f"{name}_lmdb"), 64 if name == "train" else 100,
                                                                     name == "train"))
    write_text(tmp_path / "solver.prototxt", solver_param(tmp_path / "train.prototxt", tmp_path / "test.prototxt", 20))
    assert main(["train", str(tmp_path / "solver.prototxt"), "-o", str(tmp_path / "base.caffemodel"),
                 "--device", "cpu"]) == 0
    code = main(["importance", str(tmp_path / "solver.prototxt"), "-w", str(tmp_path / "base.caffemodel"),
                 "--train-iter", "10", "--finetune-iter", "10", "--tolerance", "100", "--device", "cpu",
                 "-o", str(tmp_path / "small")])
    out = capsys.readouterr().out
    assert code == 0 and "filters kept" in out
    small = load_model(tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    assert {"Scale", "Data"}.isdisjoint(layer.type for layer in small.net.layers), "importance layers are folded"
    conv1 = small.net.layer("conv1").param.convolution_param.num_output
    conv2 = small.net.layer("conv2").param.convolution_param.num_output
    assert conv1 + conv2 < 72, "a tolerance of 100 points lets the ranking remove filters"
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "small.prototxt"), str(tmp_path / "small.caffemodel"))
    net.setInput(np.zeros((1, 1, 28, 28), dtype=np.float32))
    assert net.forward().shape == (1, 10)
