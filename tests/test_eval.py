"""End to end on real data: Fashion-MNIST -> convert-data LMDB -> the reference LeNet test net -> eval,
checked against a numpy computation of the same net on the same images."""
import json
import shutil

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from caffe_surgery.cli import main
from caffe_surgery.data import parse_data_spec
from caffe_surgery.io import read_net_text
from caffe_surgery.model import load_model
from caffe_surgery.save import save_caffemodel
from conftest import FASHION_MNIST, REFERENCE

COUNT = 300

pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")


def _conv(x, w, b):
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # N, C, H', W', kh, kw
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def _maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _numpy_lenet_maxout(blobs, images):
    x = _maxpool2(_conv(images.astype(np.float64), *blobs["conv1"]))
    x = _maxpool2(_conv(x, *blobs["conv2"]))
    fc3 = np.maximum(x.reshape(len(x), -1) @ blobs["fc_3"][0].T + blobs["fc_3"][1], 0)
    units = fc3.reshape(len(x), 64, 4).max(axis=2)
    return units @ blobs["fc_classes"][0].T + blobs["fc_classes"][1]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The reference test prototxt beside ../Dataset/mnist_test_lmdb built by convert-data, and random weights."""
    root = tmp_path_factory.mktemp("lenet")
    (root / "prototxt").mkdir()
    prototxt = root / "prototxt" / "mnist_test_0.prototxt"
    shutil.copy(REFERENCE / "mnist_test_0.prototxt", prototxt)
    spec = (f"idx:{FASHION_MNIST / 't10k-images-idx3-ubyte.gz'}:{FASHION_MNIST / 't10k-labels-idx1-ubyte.gz'}")
    assert main(["convert-data", spec, "-o", str(root / "Dataset" / "mnist_test_lmdb"), "--limit", str(COUNT)]) == 0
    model = load_model(prototxt, input_shapes={"images": (1, 1, 28, 28)})
    rng = np.random.default_rng(0)
    for layer in model.net.layers:
        shapes = model.shapes.layer(layer.name).param_shapes or []
        layer.blobs = [(rng.standard_normal(s) * (0.1 if i == 0 else 0.05)).astype(np.float32)
                       for i, s in enumerate(shapes)]
    weights = root / "lenet.caffemodel"
    save_caffemodel(model.net, weights)
    return prototxt, weights, {layer.name: layer.blobs for layer in model.net.layers if layer.blobs}


def test_pipeline_predictions_equal_numpy(experiment, capsys):
    prototxt, weights, blobs = experiment
    assert main(["eval", str(prototxt), "-w", str(weights), "--top-k", "1,3", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    source = parse_data_spec(f"lmdb:{prototxt.parent.parent / 'Dataset' / 'mnist_test_lmdb'}",
                             read_net_text(prototxt).layer[0].transform_param)
    images, labels = next(iter(source.iter_batches(COUNT)))
    assert images.shape == (COUNT, 1, 28, 28) and np.isclose(images.max(), 1.0, atol=1e-6)
    logits = _numpy_lenet_maxout(blobs, images)
    order = np.sort(logits, axis=1)
    clear = order[:, -1] - order[:, -2] > 1e-4  # samples whose top score is not a near-tie
    predicted = logits.argmax(axis=1)
    accuracy = (predicted == labels).mean()
    assert reported["samples"] == COUNT
    assert abs(reported["accuracy"]["top1"] - accuracy) <= (~clear).sum() / COUNT
    shifted = logits - logits.max(axis=1, keepdims=True)
    loss = (np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(COUNT), labels]).mean()
    assert reported["loss"] == pytest.approx(loss, rel=1e-4)
    top3 = (np.argsort(-logits, axis=1)[:, :3] == labels[:, None]).any(axis=1).mean()
    assert abs(reported["accuracy"]["top3"] - top3) <= (~clear).sum() / COUNT + 1e-9
