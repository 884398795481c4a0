"""The LeNet maxout experiment at a reduced budget: the pipeline's invariants, not its accuracy."""
import json

import cv2
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.data import parse_data_spec
from caffe_surgery.evaluate import evaluate
from caffe_surgery.io import read_net_text
from caffe_surgery.model import load_model
from caffe_surgery.reproduce import lenet_maxout_text, reproduce_lenet
from conftest import FASHION_MNIST, REFERENCE

pytest.importorskip("torch")


def _comparable(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """The net without what legitimately differs: name, data source and batch, the Reshape's batch dim."""
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net)
    copy.ClearField("name")
    for layer in copy.layer:
        if layer.type == "Data":
            layer.data_param.ClearField("source")
            layer.data_param.ClearField("batch_size")
            layer.data_param.ClearField("prefetch")
        if layer.type == "Reshape":
            layer.reshape_param.shape.dim[0] = 0
    return copy


@pytest.mark.parametrize("reference, training", [("mnist_train_0.prototxt", True), ("mnist_test_0.prototxt", False)])
def test_experiment_nets_are_the_reference_architecture(reference, training):
    ours = text_format.Parse(lenet_maxout_text("db", 1, training), caffe_pb2.NetParameter())
    theirs = read_net_text(REFERENCE / reference)
    assert _comparable(ours) == _comparable(theirs)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_reduced_reproduction_keeps_the_pipeline_invariants(tmp_path):
    spec = "idx:{0}/{1}-images-idx3-ubyte.gz:{0}/{1}-labels-idx1-ubyte.gz"
    run = dict(max_iter=8, train_limit=640, test_limit=100, device="cpu", conv_max_steps=3, log=lambda _: None)
    document = reproduce_lenet(spec.format(FASHION_MNIST, "train"), spec.format(FASHION_MNIST, "t10k"), tmp_path, **run)
    stages = {s["name"]: s for s in document["stages"]}
    assert [stages[f"k{k}"]["params"] for k in (4, 3, 2, 1)] == [240_470, 187_158, 133_846, 80_534]
    for name in ("k3", "k2", "k1"):
        plan = json.loads((tmp_path / f"{name}.plan.json").read_text())
        k = int(name[1])
        assert len(plan["keep"]["fc_3"]) == 64 * k
        assert all(sum(1 for i in plan["keep"]["fc_3"] if i // (k + 1) == u) == k for u in range(64))
    weights = 80_534 - (20 + 52 + 64 + 10)  # the k = 1 net's weights, biases left out
    assert stages["k1_sparse"]["nonzero"] <= 80_534 - int(0.75 * weights) + 1
    assert stages["k1_conv"]["params"] <= stages["k1"]["params"]
    assert all(s["opencv_agrees"] for s in document["stages"]), "every deploy pair loads in OpenCV and agrees"
    test = parse_data_spec(spec.format(FASHION_MNIST, "t10k"),
                           caffe_pb2.TransformationParameter(scale=0.00392156862745)).head(100)
    for stage in document["stages"]:  # each reported accuracy is its deploy pair's on the 100 test images
        model = load_model(stage["deploy_prototxt"], stage["deploy_caffemodel"], input_shapes={"images": (50, 1, 28, 28)})
        again = evaluate(model.net, model.shapes, test.iter_batches(50), (1,), {"device": "cpu"})
        assert again.samples == 100 and again.accuracy(1) == pytest.approx(stage["accuracy"], abs=1e-9), stage["name"]
    steps = document["conv_pruning_steps"]
    assert steps[0]["accepted"] and 2 <= len(steps) <= 4
    assert [s["accepted"] for s in steps[1:]] == [100 * (stages["k4"]["accuracy"] - s["accuracy"]) <= 0.2
                                                   for s in steps[1:]], "the tolerance is below the unpruned net"
    assert all(s["accepted"] for s in steps[:-1]), "pruning stops at the first step beyond the tolerance"
    assert steps[-1]["accepted"] == (len(steps) == 4), "the 85 % target is out of reach in 3 steps"
    accepted = [s["params"] for s in steps if s["accepted"]]
    assert stages["k1_conv"]["params"] == accepted[-1]
    assert (tmp_path / "results.md").read_text().count("\n| k") == 7
    image = cv2.imread(str(tmp_path / "results.png"))
    assert image is not None and image.shape == (560, 900, 3)

    weights_files = sorted(tmp_path.glob("*/weights.caffemodel"))
    written = {path: path.stat().st_mtime_ns for path in weights_files}
    resumed = reproduce_lenet(spec.format(FASHION_MNIST, "train"), spec.format(FASHION_MNIST, "t10k"), tmp_path,
                              resume=True, **run)
    assert resumed == document, "a resumed run reuses every finished stage"
    changed = [p.parent.name for p in weights_files if p.stat().st_mtime_ns != written[p]]
    assert changed == ["k1_conv"], "nothing is retrained; only k1_conv is copied again from its accepted step"
