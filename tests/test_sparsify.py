"""Magnitude weight pruning: the rules, the untouched input, the report's sizes, and files OpenCV runs."""
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.model import load_model
from caffe_surgery.runtime import Runtime
from caffe_surgery.sparsify import compressed_size, csr_bytes, format_sparsity_report, sparsify, sparsify_command
from netgen import Feed, write_net

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "lenet_maxout"
WEIGHTED = ("conv1", "conv2", "fc_3", "fc_classes")


@pytest.fixture(scope="module")
def model():
    return load_model(f"{SAMPLE}.prototxt", f"{SAMPLE}.caffemodel")


def _zeros(net, name):
    return int(np.count_nonzero(net.layer(name).blobs[0] == 0))


def _snapshot(net):
    return {layer.name: [b.copy() for b in layer.blobs] for layer in net.layers}


def _assert_same(net, snapshot):
    for layer in net.layers:
        for before, after in zip(snapshot[layer.name], layer.blobs):
            np.testing.assert_array_equal(before, after)


def test_per_layer_sparsity_is_reached_and_biases_and_input_stay(model):
    before = _snapshot(model.net)
    pruned, report = sparsify(model.net, sparsity=0.7)
    _assert_same(model.net, before)
    for name in WEIGHTED:
        weight = pruned.layer(name).blobs[0]
        assert _zeros(pruned, name) == math.ceil(0.7 * weight.size - 1e-6)
        kept = weight != 0
        np.testing.assert_array_equal(weight[kept], before[name][0][kept])
        assert np.abs(before[name][0][~kept]).max() <= np.abs(weight[kept]).min()
        np.testing.assert_array_equal(pruned.layer(name).blobs[1], before[name][1])
    assert [e.name for e in report.layers] == list(WEIGHTED)
    assert all(abs(e.sparsity - 0.7) < 1e-3 for e in report.layers)
    assert report.layers[0].nonzero == 500 - 350


def test_global_sparsity_uses_one_cut(model):
    pruned, report = sparsify(model.net, sparsity=0.8, scope="global")
    total = sum(pruned.layer(n).blobs[0].size for n in WEIGHTED)
    assert sum(_zeros(pruned, n) for n in WEIGHTED) == math.ceil(0.8 * total - 1e-6)
    largest_gone = max(np.abs(model.net.layer(n).blobs[0][pruned.layer(n).blobs[0] == 0]).max() for n in WEIGHTED)
    smallest_kept = min(np.abs(pruned.layer(n).blobs[0][pruned.layer(n).blobs[0] != 0]).min() for n in WEIGHTED)
    assert largest_gone <= smallest_kept
    assert abs(report.totals()["sparsity"] - 0.8) < 1e-5
    assert len({round(e.sparsity, 2) for e in report.layers}) > 1


def test_threshold_and_std_factor(model):
    pruned, _ = sparsify(model.net, threshold=0.05, scope="global")
    for name in WEIGHTED:
        original, weight = model.net.layer(name).blobs[0], pruned.layer(name).blobs[0]
        np.testing.assert_array_equal(weight, np.where(np.abs(original) < 0.05, 0, original))
    pruned, report = sparsify(model.net, std_factor=0.5, layers=["conv2", "fc_3"])
    for name in ("conv2", "fc_3"):
        original = model.net.layer(name).blobs[0]
        expected = np.abs(original) < 0.5 * original.astype(np.float64).std()
        np.testing.assert_array_equal(pruned.layer(name).blobs[0] == 0, expected | (original == 0))
    assert [e.name for e in report.layers] == ["conv2", "fc_3"]
    assert _zeros(pruned, "conv1") == _zeros(model.net, "conv1")


def test_zeros_already_there_count_as_pruned(model):
    first, _ = sparsify(model.net, sparsity=0.6)
    again, report = sparsify(first, sparsity=0.4)
    for name in WEIGHTED:
        np.testing.assert_array_equal(again.layer(name).blobs[0], first.layer(name).blobs[0])
    assert all(e.sparsity >= 0.6 - 1e-3 for e in report.layers)


def test_csr_size_by_hand(tmp_path):
    net_text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 3 } }
"""
    written = write_net(net_text, tmp_path, feeds={"x": Feed((1, 4))})
    loaded = load_model(written.prototxt, written.caffemodel)
    loaded.net.layer("fc").blobs[0] = np.array([[1, 0, 0, 2], [0, 0, 0, 0], [3, 4, 0, 5]], dtype=np.float32)
    _, report = sparsify(loaded.net, threshold=0.0)
    entry = report.layers[0]
    # 5 values (4 B) + 5 column indices (4 B) + 3 + 1 row pointers (4 B)
    assert (entry.params, entry.nonzero, entry.rows) == (12, 5, 3)
    assert entry.csr_bytes == csr_bytes(5, 3) == 5 * 4 + 5 * 4 + 4 * 4
    assert entry.dense_bytes == 48
    assert report.as_dict()["totals"]["csr_bytes"] == 56


def test_compressed_size_is_raw_deflate(tmp_path):
    data = bytes(range(256)) * 64 + b"\0" * 100000
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert compressed_size(path) == len(compressor.compress(data) + compressor.flush()) < len(data) // 10


def test_rule_errors(model):
    with pytest.raises(CaffeSurgeryError, match="exactly one"):
        sparsify(model.net)
    with pytest.raises(CaffeSurgeryError, match="exactly one"):
        sparsify(model.net, sparsity=0.5, threshold=0.1)
    with pytest.raises(CaffeSurgeryError, match="sparsity"):
        sparsify(model.net, sparsity=1.5)
    with pytest.raises(CaffeSurgeryError, match="scope"):
        sparsify(model.net, sparsity=0.5, scope="everywhere")
    with pytest.raises(CaffeSurgeryError, match="no such layer"):
        sparsify(model.net, sparsity=0.5, layers=["nope"])
    with pytest.raises(CaffeSurgeryError, match="Pooling"):
        sparsify(model.net, sparsity=0.5, layers=["pool1"])


def test_written_pair_runs_in_opencv_like_onnxruntime(tmp_path, model, capsys):
    cv2 = pytest.importorskip("cv2")
    prefix = tmp_path / "out" / "sparse"
    assert sparsify_command(f"{SAMPLE}.prototxt", f"{SAMPLE}.caffemodel", prefix, sparsity=0.9) == 0
    printed = capsys.readouterr().out
    assert "fc_3" in printed and "90.00%" in printed and "deflated caffemodel" in printed
    report = json.loads(Path(f"{prefix}.report.json").read_text())
    assert report["rule"] == {"sparsity": 0.9, "scope": "per-layer"}
    caffemodel, deflated = report["files"]["caffemodel"], report["files"]["deflated caffemodel"]
    assert caffemodel[1] <= caffemodel[0] and deflated[1] < 0.5 * deflated[0]

    reloaded = load_model(f"{prefix}.prototxt", f"{prefix}.caffemodel")
    assert [layer.name for layer in reloaded.net.layers] == [layer.name for layer in model.net.layers]
    for entry in report["layers"]:
        assert np.count_nonzero(reloaded.net.layer(entry["name"]).blobs[0]) == entry["nonzero"]
    pruned, in_memory = sparsify(model.net, sparsity=0.9)
    assert in_memory.as_dict()["layers"] == report["layers"]
    images = np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    expected = Runtime(pruned, model.shapes).run(images)["class_proba"]
    dense = Runtime(model.net, model.shapes).run(images)["class_proba"]
    opencv = cv2.dnn.readNetFromCaffe(f"{prefix}.prototxt", f"{prefix}.caffemodel")
    opencv.setInput(images)
    got = opencv.forward("class_proba")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - dense).max() > 1e-3
    assert "total" in format_sparsity_report(in_memory)
