"""The onnxruntime runner (caffe_surgery.runtime): keys and taps, batching, devices, statistics."""
import cv2
import numpy as np
import onnxruntime as ort
import pytest

from caffe_surgery.errors import CaffeSurgeryError, ShapeError
from caffe_surgery.model import load_model
from caffe_surgery.runtime import Runtime, providers_for
from caffe_surgery.statistics import ChannelStats, channel_summary
from conftest import REAL_MODELS
from netgen import generate


@pytest.fixture
def conv_pool(tmp_path):
    generated = generate("conv_pool", tmp_path)
    return generated, load_model(generated.prototxt, generated.caffemodel)


def test_results_are_keyed_by_blob_key_with_taps_before_in_place_layers(conv_pool):
    generated, model = conv_pool
    runtime = Runtime(model.net, model.shapes, taps=["fc@fc", "fc", "conv1@conv1", "conv1"], device="cpu")
    assert runtime.keys == ["prob", "fc", "fc@drop", "conv1", "conv1@relu1"]
    x = generated.inputs(np.random.default_rng(0))["data"]
    results = runtime.run({"data": x})
    assert set(results) == set(runtime.keys)
    assert (results["fc"] < 0).any() and (results["fc@drop"] >= 0).all()
    np.testing.assert_array_equal(results["fc@drop"], np.maximum(results["fc"], 0))
    np.testing.assert_allclose(results["conv1@relu1"], np.where(results["conv1"] > 0, results["conv1"],
                                                                0.1 * results["conv1"]), rtol=1e-6)


def test_any_batch_size_and_a_bare_array_for_one_input(conv_pool):
    generated, model = conv_pool
    runtime = Runtime(model.net, model.shapes, threads=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 13, 11)).astype(np.float32)
    together = runtime.run(x)["prob"]
    assert together.shape == (5, 5)
    for i in range(5):
        np.testing.assert_allclose(runtime.run(x[i:i + 1])["prob"], together[i:i + 1], rtol=1e-5, atol=1e-7)
    assert runtime.session.get_session_options().intra_op_num_threads == 1


def test_real_v1_model_at_another_batch_matches_opencv():
    directory = REAL_MODELS / "cifar10_quick_v1_everpeace"
    prototxt, weights = directory / "cifar10_quick.prototxt", directory / "cifar10_quick_iter_5000.caffemodel"
    model = load_model(prototxt, weights)
    runtime = Runtime(model.net, model.shapes, taps=["pool1"])  # pool1's final version: after relu1
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    results = runtime.run(x)
    opencv = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    opencv.setInput(x)
    prob, pool1 = opencv.forward(["prob", "relu1"])
    assert runtime.keys == ["prob", "pool1@relu1"]
    np.testing.assert_allclose(results["prob"], prob.reshape(3, -1), atol=1e-5)
    np.testing.assert_allclose(results["pool1@relu1"], pool1, atol=1e-4 * max(1, np.abs(pool1).max()))


def test_batch_size_runs_chunks_and_keeps_constant_outputs(tmp_path):
    generated = generate("ssd_head", tmp_path)
    model = load_model(generated.prototxt, generated.caffemodel)
    whole = Runtime(model.net, model.shapes)
    chunked = Runtime(model.net, model.shapes, batch_size=2)
    x = np.random.default_rng(0).standard_normal((5, 3, 24, 30)).astype(np.float32)
    expected, results = whole.run(x), chunked.run(x)
    assert results["loc_softmax"].shape == (5, 264, 4)
    assert results["priors"].shape == (1, 2, 1200)
    for key in expected:
        np.testing.assert_allclose(results[key], expected[key], rtol=1e-5, atol=1e-6)


def test_ssd_model_up_to_detection_output_in_chunks():
    directory = REAL_MODELS / "yufacedetectnet_v1"
    model = load_model(directory / "yufacedetectnet-open-v1.prototxt", directory / "yufacedetectnet-open-v1.caffemodel")
    detection = model.net.layer("detection_out")
    whole = Runtime(model.net, model.shapes, outputs=detection.bottoms)
    chunked = Runtime(model.net, model.shapes, outputs=(), taps=detection.bottoms, batch_size=1)
    assert whole.keys == chunked.keys == ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    x = np.random.default_rng(0).standard_normal((2, 3, 240, 320)).astype(np.float32)
    expected, results = whole.run(x), chunked.run(x)
    assert results["mbox_loc"].shape == (2, 17680) and results["mbox_priorbox"].shape == (1, 2, 17680)
    for key in expected:
        np.testing.assert_allclose(results[key], expected[key], rtol=1e-5, atol=1e-5)


def test_batch_size_refuses_outputs_that_mix_samples(tmp_path):
    generated = generate("reduction", tmp_path)
    model = load_model(generated.prototxt, generated.caffemodel)
    runtime = Runtime(model.net, model.shapes, batch_size=1)
    with pytest.raises(CaffeSurgeryError, match="outputs mean mix the samples"):
        runtime.run(np.zeros((2, 3, 4, 5), np.float32))
    assert runtime.run(np.zeros((1, 3, 4, 5), np.float32))["mean"].shape == ()


def test_inputs_are_checked(tmp_path):
    generated = generate("batchnorm_scale", tmp_path)
    model = load_model(generated.prototxt, generated.caffemodel)
    runtime = Runtime(model.net, model.shapes)
    feeds = generated.inputs(np.random.default_rng(0))
    with pytest.raises(CaffeSurgeryError, match=r"missing: gain; unknown: extra"):
        runtime.run({"data": feeds["data"], "extra": feeds["gain"]})
    with pytest.raises(CaffeSurgeryError, match="pass a dict"):
        runtime.run(feeds["data"])
    with pytest.raises(ShapeError, match=r"input 'data' has shape \(2, 3, 7, 6\), the net expects \(N, 3, 7, 5\)"):
        runtime.run({"data": np.zeros((2, 3, 7, 6)), "gain": feeds["gain"]})
    assert runtime.run({k: v.astype(np.float64) for k, v in feeds.items()})["fc"].dtype == np.float32


def test_devices(monkeypatch, conv_pool):
    _, model = conv_pool
    assert Runtime(model.net, model.shapes, device="cpu").device == "cpu"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(CaffeSurgeryError, match="device 'cuda' was requested but this onnxruntime has no CUDA"):
        Runtime(model.net, model.shapes, device="cuda")
    assert providers_for("auto") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(CaffeSurgeryError, match="unknown device 'tpu'"):
        providers_for("tpu")


def test_statistics_gathered_batch_by_batch_equal_those_of_all_values(conv_pool):
    generated, model = conv_pool
    runtime = Runtime(model.net, model.shapes, taps=["conv1@relu1", "fc@drop"], batch_size=3)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 3, 13, 11)).astype(np.float32) for n in (4, 1, 7)]
    keys = ["conv1@relu1", "fc@drop"]
    stats = {key: ChannelStats(model.shapes.blob(model.net.resolve(key))[1]) for key in keys}

    def collect(results, batch):
        for key in keys:
            stats[key].update(results[key])

    assert runtime.run_batches(batches, collect) == 12
    everything = runtime.run(np.concatenate(batches))
    for key in keys:
        values = everything[key]
        per_channel = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1).astype(np.float64)
        assert stats[key].count == per_channel.shape[1]
        np.testing.assert_allclose(stats[key].mean(), per_channel.mean(1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats[key].mean_square(), (per_channel ** 2).mean(1), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(stats[key].zero_fraction(), (per_channel <= 0).mean(1))
    assert stats["fc@drop"].zero_fraction().max() > 0  # after the ReLU


def test_channel_summaries_computed_in_the_graph_equal_numpy_in_chunks(conv_pool):
    generated, model = conv_pool
    runtime = Runtime(model.net, model.shapes, taps=["conv1@relu1"], summaries=["conv1@relu1", "fc@drop"],
                      outputs=(), batch_size=3)
    images = np.random.default_rng(1).standard_normal((8, 3, 13, 11)).astype(np.float32)
    results = runtime.run(images)
    assert set(results) == {"conv1@relu1", "conv1@relu1/channel_stats", "fc@drop/channel_stats"}
    expected = channel_summary(results["conv1@relu1"])
    np.testing.assert_allclose(results["conv1@relu1/channel_stats"][:2], expected[:2], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(results["conv1@relu1/channel_stats"][2], expected[2])
    assert results["fc@drop/channel_stats"].shape == (3, model.shapes.blob(model.net.resolve("fc@drop"))[1])
