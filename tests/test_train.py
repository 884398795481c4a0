"""Training with PyTorch (caffe_surgery.train): Caffe's solver updates, lr policies, fillers,
BatchNorm statistics, forward parity with onnxruntime, a real short training run, keep_zeros."""
import importlib
import math
import sys

import pytest

torch = pytest.importorskip("torch")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffe_surgery import caffe_pb2  # noqa: E402
from caffe_surgery.blobs import blob_to_array  # noqa: E402
from caffe_surgery.data import ArraySource, Transformer, idx_source  # noqa: E402
from caffe_surgery.errors import CaffeSurgeryError  # noqa: E402
from caffe_surgery.graph import TEST, TRAIN, build_net  # noqa: E402
from caffe_surgery.io import read_weights, write_text  # noqa: E402
from caffe_surgery.model import load_model, load_net  # noqa: E402
from caffe_surgery.runtime import Runtime  # noqa: E402
from caffe_surgery.save import save_caffemodel  # noqa: E402
from caffe_surgery.shapes import infer_shapes  # noqa: E402
from caffe_surgery.train import TorchNet, fill, learning_rate, train  # noqa: E402
from caffe_surgery.train.feed import Feed  # noqa: E402
from conftest import FASHION_MNIST, REFERENCE  # noqa: E402

TINY_NET = """
layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "unused" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { lr_mult: 2 decay_mult: 0.5 } param { lr_mult: 1 decay_mult: 0 }
        inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver(text: str, net: str = TINY_NET) -> caffe_pb2.SolverParameter:
    solver = text_format.Parse(text, caffe_pb2.SolverParameter())
    solver.net_param.CopyFrom(text_format.Parse(net, caffe_pb2.NetParameter()))
    return solver


def _stored(path) -> dict[str, list[np.ndarray]]:
    return {layer.name: [blob_to_array(b).astype(np.float64) for b in layer.blobs]
            for layer in read_weights(path).layer if len(layer.blobs)}


def _tiny_setup(tmp_path, weight=None):
    """Eight samples of 3 values with integer targets, and a caffemodel holding the start weights."""
    rng = np.random.default_rng(5)
    images = rng.normal(size=(8, 3, 1, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0, 3, 1, 2])
    net = build_net(text_format.Parse(TINY_NET, caffe_pb2.NetParameter()), TRAIN)
    start = [np.array([[0.5, -0.3, 0.2]] if weight is None else weight, dtype=np.float32),
             np.array([0.1], dtype=np.float32)]
    net.layer("ip").blobs = start
    save_caffemodel(net, tmp_path / "start.caffemodel")
    return ArraySource(images, labels, "tiny"), images.reshape(8, 3).astype(np.float64), labels, start


def test_sgd_matches_caffes_update_with_momentum_decay_multipliers_and_iter_size(tmp_path):
    source, x, y, (w0, b0) = _tiny_setup(tmp_path)
    solver = _solver('type: "SGD" base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 1 momentum: 0.9 '
                     'weight_decay: 0.01 iter_size: 2 max_iter: 2')
    train(solver, weights=tmp_path / "start.caffemodel", train_data=source, device="cpu",
          output=tmp_path / "out.caffemodel", progress=False)
    w, b = w0.astype(np.float64), b0.astype(np.float64)
    history_w, history_b = np.zeros_like(w), np.zeros_like(b)
    for iteration in range(2):
        grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
        for batch in range(2):
            rows = slice((2 * iteration + batch) * 2, (2 * iteration + batch) * 2 + 2)
            d = (x[rows] @ w.T + b - y[rows, None]) / 2  # EuclideanLoss: sum(diff^2) / N / 2
            grad_w += d.T @ x[rows]
            grad_b += d.sum(0)
        rate = 0.1 * 0.5 ** iteration
        history_w = 0.9 * history_w + rate * 2 * (grad_w / 2 + 0.01 * 0.5 * w)
        history_b = 0.9 * history_b + rate * 1 * (grad_b / 2)
        w, b = w - history_w, b - history_b
    got_w, got_b = _stored(tmp_path / "out.caffemodel")["ip"]
    np.testing.assert_allclose(got_w, w, rtol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-5)


def _reference_update(kind, p, diff, state, rate, t):
    """Caffe's ComputeUpdateValue for one blob, in float64."""
    if kind == "Nesterov":
        previous = state["h"].copy()
        state["h"] = p["momentum"] * state["h"] + rate * diff
        return (1 + p["momentum"]) * state["h"] - p["momentum"] * previous
    if kind == "AdaGrad":
        state["h"] = state["h"] + diff ** 2
        return rate * diff / (np.sqrt(state["h"]) + p["delta"])
    if kind == "RMSProp":
        state["h"] = p["rms_decay"] * state["h"] + (1 - p["rms_decay"]) * diff ** 2
        return rate * diff / (np.sqrt(state["h"]) + p["delta"])
    if kind == "AdaDelta":
        state["h"] = p["momentum"] * state["h"] + (1 - p["momentum"]) * diff ** 2
        step = diff * np.sqrt((state["u"] + p["delta"]) / (state["h"] + p["delta"]))
        state["u"] = p["momentum"] * state["u"] + (1 - p["momentum"]) * step ** 2
        return rate * step
    state["h"] = p["momentum"] * state["h"] + (1 - p["momentum"]) * diff
    state["u"] = p["momentum2"] * state["u"] + (1 - p["momentum2"]) * diff ** 2
    correction = math.sqrt(1 - p["momentum2"] ** t) / (1 - p["momentum"] ** t)
    return rate * correction * state["h"] / (np.sqrt(state["u"]) + p["delta"])


@pytest.mark.parametrize("kind,extra", [
    ("Nesterov", {"momentum": 0.9}), ("AdaGrad", {"momentum": 0.0}),
    ("RMSProp", {"momentum": 0.0, "rms_decay": 0.95}), ("AdaDelta", {"momentum": 0.95}),
    ("Adam", {"momentum": 0.9, "momentum2": 0.99}),
])
def test_other_solver_types_follow_caffes_formulas_with_l1_decay_and_clipping(tmp_path, kind, extra):
    source, x, y, (w0, b0) = _tiny_setup(tmp_path)
    p = {"delta": 1e-6, "momentum2": 0.999, "rms_decay": 0.99, **extra}
    settings = " ".join(f"{k}: {v}" for k, v in p.items())
    solver = _solver(f'type: "{kind}" base_lr: 0.05 lr_policy: "fixed" weight_decay: 0.01 regularization_type: "L1" '
                     f'clip_gradients: 0.5 max_iter: 3 {settings}')
    train(solver, weights=tmp_path / "start.caffemodel", train_data=source, device="cpu",
          output=tmp_path / "out.caffemodel", progress=False)
    blobs = [w0.astype(np.float64), b0.astype(np.float64)]
    states = [{"h": np.zeros_like(v), "u": np.zeros_like(v)} for v in blobs]
    for iteration in range(3):
        rows = slice(2 * iteration, 2 * iteration + 2)
        d = (x[rows] @ blobs[0].T + blobs[1] - y[rows, None]) / 2
        grads = [d.T @ x[rows], d.sum(0)]
        norm = math.sqrt(sum((g ** 2).sum() for g in grads))
        grads = [g * 0.5 / norm for g in grads] if norm > 0.5 else grads
        diffs = [grads[0] + 0.01 * 0.5 * np.sign(blobs[0]), grads[1]]
        for index, (lr_mult, diff) in enumerate(zip((2, 1), diffs)):
            blobs[index] = blobs[index] - _reference_update(kind, p, diff, states[index], 0.05 * lr_mult, iteration + 1)
    got = _stored(tmp_path / "out.caffemodel")["ip"]
    for value, expected in zip(got, blobs):
        np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-7)


def test_every_lr_policy_follows_caffes_formula():
    base = {"base_lr": 0.01, "gamma": 0.8, "power": 0.75, "stepsize": 10, "max_iter": 100}
    formulas = {
        "fixed": lambda i: 0.01,
        "step": lambda i: 0.01 * 0.8 ** (i // 10),
        "exp": lambda i: 0.01 * 0.8 ** i,
        "inv": lambda i: 0.01 * (1 + 0.8 * i) ** -0.75,
        "multistep": lambda i: 0.01 * 0.8 ** sum(i >= s for s in (5, 20, 60)),
        "poly": lambda i: 0.01 * (1 - i / 100) ** 0.75,
        "sigmoid": lambda i: 0.01 / (1 + math.exp(-0.8 * (i - 10))),
    }
    for policy, formula in formulas.items():
        param = caffe_pb2.SolverParameter(lr_policy=policy, stepvalue=[5, 20, 60], **base)
        for iteration in (0, 1, 4, 5, 9, 10, 19, 20, 59, 60, 99):
            assert learning_rate(param, iteration) == pytest.approx(formula(iteration), rel=1e-6), (policy, iteration)
    with pytest.raises(CaffeSurgeryError, match="unknown lr_policy"):
        learning_rate(caffe_pb2.SolverParameter(lr_policy="cosine"), 0)


def test_fillers_follow_caffes_definitions():
    rng = np.random.default_rng(0)
    shape = (64, 32, 3, 3)  # fan_in 288, fan_out 576
    xavier = fill(caffe_pb2.FillerParameter(type="xavier"), shape, rng)
    bound = math.sqrt(3 / 288)
    assert xavier.dtype == np.float32 and xavier.shape == shape
    assert np.abs(xavier).max() <= bound and np.abs(xavier).max() > 0.98 * bound
    norm = caffe_pb2.FillerParameter
    average = fill(caffe_pb2.FillerParameter(type="xavier", variance_norm=norm.AVERAGE), shape, rng)
    assert np.abs(average).max() <= math.sqrt(3 / 432) < bound
    msra = fill(caffe_pb2.FillerParameter(type="msra"), shape, rng)
    assert msra.std() == pytest.approx(math.sqrt(2 / 288), rel=0.03) and abs(msra.mean()) < 0.003
    fan_out = fill(caffe_pb2.FillerParameter(type="msra", variance_norm=norm.FAN_OUT), shape, rng)
    assert fan_out.std() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    np.testing.assert_array_equal(fill(caffe_pb2.FillerParameter(), (3, 2), rng), np.zeros((3, 2)))
    np.testing.assert_array_equal(fill(caffe_pb2.FillerParameter(type="constant", value=0.25), (4,), rng), 0.25)
    gaussian = fill(caffe_pb2.FillerParameter(type="gaussian", mean=1, std=0.1), (200, 100), rng)
    assert gaussian.mean() == pytest.approx(1, abs=0.003) and gaussian.std() == pytest.approx(0.1, rel=0.03)
    uniform = fill(caffe_pb2.FillerParameter(type="uniform", min=-2, max=3), (1000,), rng)
    assert -2 <= uniform.min() < -1.9 and 2.9 < uniform.max() <= 3
    unitball = fill(caffe_pb2.FillerParameter(type="positive_unitball"), (5, 7), rng)
    np.testing.assert_allclose(unitball.sum(axis=1), 1, rtol=1e-6)
    with pytest.raises(CaffeSurgeryError, match="unknown filler type"):
        fill(caffe_pb2.FillerParameter(type="orthogonal"), (2, 2), rng)


BN_NET = """
layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "unused" batch_size: 4 } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "scale" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_batchnorm_keeps_caffes_moving_sums_and_scale_factor(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(2.0, 3.0, size=(8, 2, 3, 3)).astype(np.float32)
    solver = _solver('base_lr: 0.01 lr_policy: "fixed" max_iter: 2', BN_NET)
    train(solver, train_data=ArraySource(images, np.arange(8) % 3, "bn"), device="cpu",
          output=tmp_path / "bn.caffemodel", progress=False)
    mean, var, factor = np.zeros(2), np.zeros(2), 0.0
    for batch in (images[:4], images[4:]):
        m = batch.size // 2
        factor = 0.9 * factor + 1
        mean = 0.9 * mean + batch.mean(axis=(0, 2, 3))
        var = 0.9 * var + m / (m - 1) * batch.var(axis=(0, 2, 3))
    stored = _stored(tmp_path / "bn.caffemodel")
    np.testing.assert_allclose(stored["bn"][0], mean, rtol=1e-5)
    np.testing.assert_allclose(stored["bn"][1], var, rtol=1e-5)
    np.testing.assert_allclose(stored["bn"][2], [factor], rtol=1e-6)
    net = build_net(text_format.Parse(BN_NET, caffe_pb2.NetParameter()), TEST)
    for layer in net.layers:
        layer.blobs = [b.astype(np.float32) for b in stored.get(layer.name, [])]
    shapes = infer_shapes(net, {"data": (4, 2, 3, 3)})
    values = TorchNet(net, shapes, TEST)({"data": torch.from_numpy(images[:4]), "label": torch.zeros(4)})
    expected = (images[:4] - (mean / factor).reshape(1, 2, 1, 1)) / np.sqrt((var / factor).reshape(1, 2, 1, 1) + 1e-5)
    np.testing.assert_allclose(values["data@bn"].numpy(), expected, rtol=1e-4, atol=1e-5)


def _random_blobs(net, shapes, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        layer.blobs = [rng.normal(0, 0.2, s).astype(np.float32) for s in shapes.layer(layer.name).param_shapes or []]


def test_test_forward_matches_onnxruntime_on_the_reference_maxout_lenet():
    model = load_model(REFERENCE / "mnist_test_0.prototxt", data_shapes=lambda layer: [(1, 28, 28)])
    _random_blobs(model.net, model.shapes)
    torch_net = TorchNet(model.net, model.shapes, TEST)
    runtime = Runtime(model.net, model.shapes, taps=["fc_classes", "maxout"], device="cpu")
    images = np.random.default_rng(2).random((6, 1, 1, 28, 28)).astype(np.float32)
    for image in images:
        expected = runtime.run({"images": image})
        got = torch_net({"images": torch.from_numpy(image), "label": torch.zeros(1)})
        for key in ("fc_classes", "maxout", "class_proba"):
            np.testing.assert_allclose(got[key].detach().numpy(), expected[key], rtol=1e-4, atol=1e-4)


POOL_NET = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "conv" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "far" type: "Pooling" bottom: "conv" top: "far"
        pooling_param { pool: AVE kernel_size: 3 stride: 4 pad: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "ave" bottom: "max" top: "sum" eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "max" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "a" top: "b" slice_param { slice_point: 5 } }
layer { name: "flat" type: "Flatten" bottom: "b" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_convolution_pooling_and_wiring_layers_match_onnxruntime(tmp_path):
    write_text(tmp_path / "pool.prototxt", text_format.Parse(POOL_NET, caffe_pb2.NetParameter()))
    model = load_model(tmp_path / "pool.prototxt")
    _random_blobs(model.net, model.shapes, seed=3)
    runtime = Runtime(model.net, model.shapes, taps=["ave", "max", "a"], outputs=["far", "prob"], device="cpu")
    x = np.random.default_rng(4).normal(size=(2, 4, 9, 8)).astype(np.float32)
    expected = runtime.run({"data": x})
    got = TorchNet(model.net, model.shapes, TEST)({"data": torch.from_numpy(x)})
    assert expected["far"].shape == (2, 6, 3, 2)  # Caffe drops a last window starting in the padding
    for key in ("ave", "max", "far", "a", "prob"):
        np.testing.assert_allclose(got[key].detach().numpy(), expected[key], rtol=1e-4, atol=1e-5)


def _fashion(name: str, count: int):
    transform = Transformer(caffe_pb2.TransformationParameter(scale=0.00392156862745))
    return idx_source(str(FASHION_MNIST / f"{name}-images-idx3-ubyte.gz"),
                      str(FASHION_MNIST / f"{name}-labels-idx1-ubyte.gz"), transform).head(count)


def _deploy(tmp_path):
    """The reference test net with an Input layer instead of Data and without loss and accuracy."""
    net = load_net(REFERENCE / "mnist_test_0.prototxt").to_proto()
    layers = [l for l in net.layer if l.type not in ("Data", "SoftmaxWithLoss", "Accuracy")]
    del net.layer[:]
    net.layer.add().CopyFrom(text_format.Parse('name: "images" type: "Input" top: "images" '
                                               'input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } }',
                                               caffe_pb2.LayerParameter()))
    net.layer.extend(layers)
    write_text(tmp_path / "deploy.prototxt", net)
    return tmp_path / "deploy.prototxt"


def test_short_training_of_the_reference_net_learns_and_writes_a_caffemodel_opencv_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{REFERENCE / "mnist_train_0.prototxt"}"\n'
        f'test_net: "{REFERENCE / "mnist_test_0.prototxt"}"\n'
        'test_iter: 500 test_interval: 100 test_initialization: false\n'
        'base_lr: 0.01 lr_policy: "inv" gamma: 0.0001 power: 0.75 momentum: 0.9 weight_decay: 0.0005\n'
        'display: 50 max_iter: 150 snapshot: 100 snapshot_prefix: "snap/lenet" random_seed: 1\n')
    result = train(tmp_path / "solver.prototxt", train_data=_fashion("train", 3000), test_data=_fashion("t10k", 500),
                   device="cpu", output=tmp_path / "out.caffemodel", progress=False)
    assert [s.iteration for s in result.history] == [100, 150]
    assert result.accuracy > 0.5 and result.history[-1].outputs["acc"] == result.accuracy
    assert result.loss < 1.5 and result.train_loss < 1.5
    assert (tmp_path / "snap" / "lenet_iter_100.caffemodel").is_file()

    opencv = cv2.dnn.readNetFromCaffe(str(_deploy(tmp_path)), str(tmp_path / "out.caffemodel"))
    model = load_model(REFERENCE / "mnist_test_0.prototxt", tmp_path / "out.caffemodel",
                       data_shapes=lambda layer: [(1, 28, 28)])
    torch_net = TorchNet(model.net, model.shapes, TEST)
    images, labels = next(_fashion("t10k", 20).iter_batches(20))
    agree = 0
    for image, label in zip(images, labels):
        opencv.setInput(image[None])
        expected = opencv.forward("class_proba").reshape(-1)
        got = torch_net({"images": torch.from_numpy(image[None]), "label": torch.tensor([float(label)])})
        np.testing.assert_allclose(got["class_proba"].detach().numpy().reshape(-1), expected, atol=1e-4)
        agree += int(expected.argmax() == label)
    assert agree >= 10


def test_feeds_read_in_order_wrap_around_and_augment_only_in_train():
    net = build_net(text_format.Parse(
        'layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 2 } '
        'transform_param { crop_size: 2 mirror: true scale: 0.5 } }', caffe_pb2.NetParameter()), TRAIN)
    images = np.arange(5 * 9, dtype=np.float32).reshape(5, 1, 3, 3)
    source = ArraySource(images, np.arange(5), "five", Transformer(net.layers[0].param.transform_param))
    test_feed = Feed(net, TEST, source)
    labels = [test_feed.next(torch.device("cpu"))["label"].tolist() for _ in range(3)]
    assert labels == [[0, 1], [2, 3], [4, 0]]
    centre = test_feed.next(torch.device("cpu"))["data"].numpy()
    np.testing.assert_array_equal(centre, images[1:3, :, :2, :2] * 0.5)  # Caffe: offset (3 - 2) // 2
    train_feed = Feed(net, TRAIN, source, rng=np.random.default_rng(0))
    windows = {(r, c, flip) for r in range(2) for c in range(2) for flip in (False, True)}
    seen = set()
    for _ in range(20):
        batch = train_feed.next(torch.device("cpu"))
        for image, label in zip(batch["data"].numpy(), batch["label"].numpy().astype(int)):
            raw = images[label, 0] * 0.5
            match = {(r, c, f) for r, c, f in windows
                     if np.array_equal(image[0], raw[r:r + 2, c:c + 2][:, ::-1] if f else raw[r:r + 2, c:c + 2])}
            assert match
            seen |= match
    assert len(seen) == 8
    train_feed.close()
    test_feed.close()


def test_a_solver_whose_net_files_are_missing_names_them():
    with pytest.raises(CaffeSurgeryError, match="net file '../mnist_prototxt/mnist_train_0.prototxt' not found"):
        train(REFERENCE / "mnist_solver_0.prototxt", device="cpu", progress=False)


def test_keep_zeros_keeps_pruned_weights_at_zero(tmp_path):
    source, *_ = _tiny_setup(tmp_path, weight=[[0.5, 0.0, 0.2]])
    solver = _solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 max_iter: 3')
    train(solver, weights=tmp_path / "start.caffemodel", train_data=source, device="cpu",
          output=tmp_path / "kept.caffemodel", keep_zeros=True, progress=False)
    train(solver, weights=tmp_path / "start.caffemodel", train_data=source, device="cpu",
          output=tmp_path / "free.caffemodel", progress=False)
    kept, free = _stored(tmp_path / "kept.caffemodel")["ip"][0], _stored(tmp_path / "free.caffemodel")["ip"][0]
    assert kept[0, 1] == 0 and free[0, 1] != 0
    assert kept[0, 0] != 0.5 and kept[0, 2] != 0.2


def test_importing_without_torch_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "caffe_surgery.train" or m.startswith("caffe_surgery.train.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CaffeSurgeryError) as error:
        importlib.import_module("caffe_surgery.train")
    assert str(error.value) == "training needs PyTorch: pip install 'caffe-surgery[train]'"
