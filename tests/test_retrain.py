"""Retraining between pruning steps with the training engine."""
import json

import numpy as np
import pytest

pytest.importorskip("torch")

from caffe_surgery.cli import main  # noqa: E402
from caffe_surgery.criteria import weight_l1  # noqa: E402
from caffe_surgery.data import convert_data, numpy_source  # noqa: E402
from caffe_surgery.evaluate import evaluate  # noqa: E402
from caffe_surgery.model import load_model  # noqa: E402
from caffe_surgery.retrain import Retrainer, tolerance_with_retraining  # noqa: E402
from caffe_surgery.save import save_caffemodel, save_prototxt  # noqa: E402
from pruning_nets import random_weights  # noqa: E402

LAYERS = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1" inner_product_param { num_output: 8 } }
layer { name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 } }
"""
DEPLOY = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }' + LAYERS
TRAIN = ('layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "train_lmdb" batch_size: 8 '
         'backend: LMDB } }' + LAYERS + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }')
SOLVER = 'train_net: "train.prototxt" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 max_iter: 4 random_seed: 1\n'


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64)
    images = (rng.standard_normal((64, 1, 6, 6)) + labels[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "data.npz", data=images, labels=labels)
    convert_data(f"npy:{tmp_path / 'data.npz'}", str(tmp_path / "train_lmdb"))
    (tmp_path / "train.prototxt").write_text(TRAIN)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    net, _ = random_weights(DEPLOY, 1)
    save_prototxt(net, tmp_path / "deploy.prototxt")
    save_caffemodel(net, tmp_path / "deploy.caffemodel")
    return tmp_path


def test_prune_then_retrain_reports_accuracy_before_and_after(tiny):
    common = [str(tiny / "deploy.prototxt"), "-w", str(tiny / "deploy.caffemodel"), "--criterion", "weight-l1",
              "--ratio", "0.5", "--data", f"npy:{tiny / 'data.npz'}", "--device", "cpu", "--metric", "top1"]
    assert main(["prune"] + common + ["-o", str(tiny / "plain")]) == 0
    assert main(["prune"] + common + ["--retrain", str(tiny / "solver.prototxt"), "-o", str(tiny / "tuned")]) == 0
    report = json.loads((tiny / "tuned.report.json").read_text())
    plain = json.loads((tiny / "plain.report.json").read_text())
    assert report["accuracy"]["before_retraining"] == plain["accuracy"]["after"]
    assert report["totals"] == plain["totals"]
    weights = {name: load_model(tiny / f"{name}.prototxt", tiny / f"{name}.caffemodel").net.layer("ip1").blobs[0]
               for name in ("plain", "tuned")}
    assert weights["plain"].shape == weights["tuned"].shape and not np.allclose(weights["plain"], weights["tuned"])


def test_tolerance_with_retraining_records_each_round(tiny):
    model = load_model(tiny / "deploy.prototxt", tiny / "deploy.caffemodel")
    batches = list(numpy_source(str(tiny / "data.npz")).iter_batches(16))

    def accuracy(net, shapes):
        return evaluate(net, shapes, batches, (1,), {"device": "cpu"}).accuracy(1)

    retrainer = Retrainer(str(tiny / "solver.prototxt"), iterations=3, device="cpu")
    net, shapes, plan, curve = tolerance_with_retraining(
        model, lambda groups: groups.prunable(),
        lambda current, groups, group_list: {g.id: weight_l1(current.net, groups, g, None) for g in group_list},
        accuracy, 100.0, retrainer, step=0.4)
    assert [entry["round"] for entry in curve] == [0, 1, 2]
    assert all("accuracy_before_retraining" in entry for entry in curve[1:])
    assert curve[2]["params"] < curve[1]["params"] < curve[0]["params"] == model.shapes.totals()[0]
    assert shapes.totals()[0] == curve[2]["params"] and len(plan.about["rounds"]) == 2
    assert accuracy(net, shapes) == curve[2]["accuracy"]
