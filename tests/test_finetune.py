"""Prune, then fine-tune: the plan applied to the train_val net, a solver beside it, and training that runs on them."""
import importlib.util
import math
import re

import cv2
import numpy as np
import pytest

from caffe_surgery import caffe_pb2
from caffe_surgery.cli import main
from caffe_surgery.data import convert_data
from caffe_surgery.io import read_net_text, read_solver, write_text
from caffe_surgery.model import load_model
from caffe_surgery.reproduce import lenet_maxout_text, solver_param
from caffe_surgery.runtime import Runtime
from caffe_surgery.upgrade import upgrade_net
from conftest import FASHION_MNIST, REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
LENET = REAL_MODELS / "lenet_v1_everpeace"
needs_fashion = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"Fashion-MNIST not at {FASHION_MNIST} "
                                   "(apt-get install dataset-fashion-mnist)")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="training needs PyTorch: pip install 'caffe-surgery[train]'")
needs_lenet = pytest.mark.skipif(not LENET.is_dir(), reason=f"real models not at {REAL_MODELS}")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fashion_lmdb(path, kind, count):
    spec = f"idx:{FASHION_MNIST}/{kind}-images-idx3-ubyte.gz:{FASHION_MNIST}/{kind}-labels-idx1-ubyte.gz"
    convert_data(spec, str(path), limit=count)


def final_test_loss(out: str) -> float:
    return float(re.search(r"test loss ([-\w.]+)", out).group(1))


def opencv_matches_onnxruntime(prototxt, caffemodel, shape):
    """OpenCV loads the pair and computes what onnxruntime computes on a random image (to 1e-4)."""
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(image)
    ours = load_model(prototxt, caffemodel)
    output = ours.net.outputs()[0]
    expected = Runtime(ours.net, ours.shapes).run(image)[output.key]
    np.testing.assert_allclose(net.forward(), expected, atol=1e-4)


def shorten_tests(solver_path):
    """Two test batches instead of the default solver's 50 (keeps the tests fast)."""
    solver = read_solver(solver_path)
    solver.test_iter[0] = 2
    write_text(solver_path, solver)


def without_num_output(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net)
    for layer in copy.layer:
        for name in ("convolution_param", "inner_product_param"):
            if layer.HasField(name):
                getattr(layer, name).ClearField("num_output")
    return copy


@needs_torch
@needs_lenet
@needs_fashion
def test_real_lenet_pruned_with_its_train_val_fine_tunes_and_loads_in_opencv(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the train_val's sources are relative to Caffe's working directory
    fashion_lmdb(tmp_path / "examples/mnist/mnist_train_lmdb", "train", 256)
    fashion_lmdb(tmp_path / "examples/mnist/mnist_test_lmdb", "t10k", 200)
    code, out, _ = run(capsys, "prune", LENET / "lenet.prototxt", "-w", LENET / "lenet_iter_10000.caffemodel",
                       "--criterion", "weight-l1", "--ratio", "0.5", "--train-val", LENET / "lenet_train_test.prototxt",
                       "-o", tmp_path / "out/small")
    assert code == 0 and "small.train_val.prototxt" in out and "small.solver.prototxt" in out
    original = upgrade_net(read_net_text(LENET / "lenet_train_test.prototxt"))
    pruned = read_net_text(tmp_path / "out/small.train_val.prototxt")
    # Every phase, data layer, transform, include rule and lr_mult is kept; only the widths change.
    assert without_num_output(pruned) == without_num_output(original)
    widths = {l.name: l.convolution_param.num_output or l.inner_product_param.num_output for l in pruned.layer}
    assert widths["conv1"] == 10 and widths["conv2"] == 25 and widths["ip1"] == 250 and widths["ip2"] == 10
    assert [p.lr_mult for p in pruned.layer[2].param] == [1.0, 2.0]
    solver = read_solver(tmp_path / "out/small.solver.prototxt")
    assert solver.net == str(tmp_path / "out/small.train_val.prototxt") and solver.base_lr < 0.01
    assert solver.snapshot_prefix == str(tmp_path / "out/small_finetune")
    assert list(solver.test_iter) == [50] and solver.test_interval == 500
    shorten_tests(tmp_path / "out/small.solver.prototxt")

    code, out, _ = run(capsys, "train", tmp_path / "out/small.solver.prototxt", "-w", tmp_path / "out/small.caffemodel",
                       "--max-iter", "4", "-o", tmp_path / "out/tuned.caffemodel")
    assert code == 0 and math.isfinite(final_test_loss(out))
    opencv_matches_onnxruntime(tmp_path / "out/small.prototxt", tmp_path / "out/tuned.caffemodel", (1, 1, 28, 28))


@needs_torch
@needs_lenet
@needs_fashion
def test_a_train_val_given_as_the_net_gives_a_deploy_pair_and_its_pruned_train_val(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fashion_lmdb(tmp_path / "examples/mnist/mnist_train_lmdb", "train", 128)
    fashion_lmdb(tmp_path / "examples/mnist/mnist_test_lmdb", "t10k", 100)
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "keep": {"conv2": [0, 1, 2, 3, 4, 5, 6, 7], "ip1": [1, 3, 5, 7]}}')
    code, out, err = run(capsys, "prune", LENET / "lenet_train_test.prototxt", "-w", LENET / "lenet_iter_10000.caffemodel",
                         "--phase", "TRAIN", "--plan", plan, "-o", tmp_path / "small")
    assert code == 0, err
    deploy = read_net_text(tmp_path / "small.prototxt")
    assert [l.type for l in deploy.layer][0] == "Input" and "SoftmaxWithLoss" not in [l.type for l in deploy.layer]
    train_val = read_net_text(tmp_path / "small.train_val.prototxt")
    assert [l.name for l in train_val.layer] == [l.name for l in upgrade_net(read_net_text(
        LENET / "lenet_train_test.prototxt")).layer]
    opencv_matches_onnxruntime(tmp_path / "small.prototxt", tmp_path / "small.caffemodel", (1, 1, 28, 28))
    shorten_tests(tmp_path / "small.solver.prototxt")
    code, out, _ = run(capsys, "train", tmp_path / "small.solver.prototxt", "-w", tmp_path / "small.caffemodel",
                       "--max-iter", "2", "-o", tmp_path / "tuned.caffemodel")
    assert code == 0 and math.isfinite(final_test_loss(out))


def sample_train_val(train_lmdb, test_lmdb) -> str:
    """The sample's train net (reproduce.lenet_maxout_text) as a train_val: a TEST data layer, dropout in place."""
    train = lenet_maxout_text(str(train_lmdb), 64, True)
    test_data = lenet_maxout_text(str(test_lmdb), 100, False).split("layer {")[1]
    train = train.replace("batch_size: 64 backend: LMDB }", "batch_size: 64 backend: LMDB } include { phase: TRAIN }")
    train = train.replace('top: "droppremax"', 'top: "fc_3"').replace('bottom: "droppremax"', 'bottom: "fc_3"')
    head, first, rest = train.partition("layer {")
    return head + "layer {" + test_data.replace("backend: LMDB }", "backend: LMDB } include { phase: TEST }") \
        + first + rest


@needs_torch
@needs_fashion
def test_the_sample_pruned_with_its_train_net_and_the_users_solver(tmp_path, capsys):
    fashion_lmdb(tmp_path / "train_lmdb", "train", 128)
    fashion_lmdb(tmp_path / "test_lmdb", "t10k", 100)
    train_val = sample_train_val(tmp_path / "train_lmdb", tmp_path / "test_lmdb")
    (tmp_path / "train.prototxt").write_text(train_val)
    user = solver_param(tmp_path / "train.prototxt", tmp_path / "train.prototxt", 3749)
    user.test_iter[0] = 1
    write_text(tmp_path / "solver.prototxt", user)
    code, out, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
                         "--train-val", tmp_path / "train.prototxt", "--solver", tmp_path / "solver.prototxt",
                         "-o", tmp_path / "out/small")
    assert code == 0, err
    solver = read_solver(tmp_path / "out/small.solver.prototxt")
    assert solver.base_lr == pytest.approx(0.001, rel=1e-6) and solver.lr_policy == "inv"
    assert solver.momentum == pytest.approx(0.9, rel=1e-6)
    assert not solver.train_net and not solver.test_net and solver.test_iter == [1]
    assert solver.net == str(tmp_path / "out/small.train_val.prototxt")
    pruned = read_net_text(tmp_path / "out/small.train_val.prototxt")
    layers = {l.name: l for l in pruned.layer}
    assert layers["droppremax"].include[0].phase == caffe_pb2.TRAIN
    assert layers["images"].transform_param.scale == pytest.approx(1 / 255)
    deploy = {l.name: l for l in read_net_text(tmp_path / "out/small.prototxt").layer}
    for name in ("conv1", "conv2"):
        assert layers[name].convolution_param.num_output == deploy[name].convolution_param.num_output
    for name in ("fc_3", "fc_classes"):
        assert layers[name].inner_product_param.num_output == deploy[name].inner_product_param.num_output
    assert layers["premax"].reshape_param == deploy["premax"].reshape_param
    assert layers["conv1"].convolution_param.weight_filler.type == "xavier"
    code, out, err = run(capsys, "train", tmp_path / "out/small.solver.prototxt", "-w", tmp_path / "out/small.caffemodel",
                         "--max-iter", "3", "-o", tmp_path / "out/tuned.caffemodel")
    assert code == 0 and math.isfinite(final_test_loss(out)), err
    opencv_matches_onnxruntime(tmp_path / "out/small.prototxt", tmp_path / "out/tuned.caffemodel", (1, 1, 28, 28))


def test_a_training_only_weighted_layer_is_pruned_by_shape(tmp_path, capsys):
    aux = ('layer { name: "aux" type: "InnerProduct" bottom: "pool2" top: "aux" '
           'inner_product_param { num_output: 10 } }\n'
           'layer { name: "aux_loss" type: "SoftmaxWithLoss" bottom: "aux" bottom: "label" top: "aux_loss" '
           'loss_weight: 0.3 }\n')
    (tmp_path / "train_val.prototxt").write_text(sample_train_val(tmp_path / "a_lmdb", tmp_path / "b_lmdb") + aux)
    code, _, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
                       "--train-val", tmp_path / "train_val.prototxt", "-o", tmp_path / "small")
    assert code == 0, err
    pruned = load_model(tmp_path / "small.train_val.prototxt", phase=caffe_pb2.TRAIN,
                        input_shapes={"images": (64, 1, 28, 28)})
    conv2 = read_net_text(tmp_path / "small.prototxt").layer[3].convolution_param.num_output
    assert pruned.shapes.layer("aux").param_shapes == [(10, conv2 * 4 * 4), (10,)]


@needs_torch
@pytest.mark.parametrize("with_data", [True, False])
def test_train_refuses_a_net_without_a_loss(tmp_path, capsys, with_data):
    (tmp_path / "solver.prototxt").write_text(f'net: "{SAMPLE}"\nbase_lr: 0.01\nmax_iter: 5\n')
    data = ["--data", f"npy:{tmp_path / 'images.npy'}"] if with_data else []
    np.save(tmp_path / "images.npy", np.zeros((4, 1, 28, 28), dtype=np.float32))
    code, _, err = run(capsys, "train", tmp_path / "solver.prototxt", *data, "-o", tmp_path / "x.caffemodel")
    assert code == 1 and err.count("\n") == 1 and "has no loss layer" in err and str(SAMPLE) in err
    assert not (tmp_path / "x.caffemodel").exists()


def test_a_solver_without_the_training_net_is_refused_before_writing(tmp_path, capsys):
    code, _, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
                       "--solver", tmp_path / "solver.prototxt", "-o", tmp_path / "out/small")
    assert code == 1 and "--train-val" in err and not (tmp_path / "out").exists()
