"""The backends behind the data passes: OpenCV dnn against onnxruntime on real models and real data, and the
automatic choice between them."""
import time

import numpy as np
import pytest

from caffe_surgery import backends
from caffe_surgery.backends import AutoRuntime, OpenCVRuntime, open_runtime
from caffe_surgery.criteria import get_criterion
from caffe_surgery.data import parse_data_spec
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.evaluate import evaluate
from caffe_surgery.groups import build_groups
from caffe_surgery.model import load_model
from caffe_surgery.pruning import chosen_groups, gather, statistics_plan
from caffe_surgery.runtime import Runtime
from conftest import FASHION_MNIST, REAL_MODELS
from netgen import generate

LENET = REAL_MODELS / "lenet_v1_everpeace"
needs_lenet = pytest.mark.skipif(not LENET.is_dir(), reason="../shared/real-models is not present")
needs_fashion = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
COUNT = 256


@pytest.fixture(scope="module")
def lenet():
    return load_model(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel")


@pytest.fixture(scope="module")
def fashion_batches():
    """Real images: the first Fashion-MNIST test images, scaled as Caffe's MNIST examples (1/256)."""
    from caffe_surgery import caffe_pb2

    transform = caffe_pb2.TransformationParameter(scale=0.00390625)
    spec = f"idx:{FASHION_MNIST / 't10k-images-idx3-ubyte.gz'}:{FASHION_MNIST / 't10k-labels-idx1-ubyte.gz'}"
    return list(parse_data_spec(spec, transform).head(COUNT).iter_batches(64))


@needs_lenet
@needs_fashion
@pytest.mark.parametrize("criterion", ["apoz", "mean-activation"])
def test_statistics_of_both_backends_agree_on_real_data(lenet, fashion_batches, criterion):
    groups = build_groups(lenet.net, lenet.shapes)
    group_list = chosen_groups(groups, None)
    gathered = {}
    for backend in ("onnxruntime", "opencv"):
        stats = statistics_plan(lenet, groups, group_list, get_criterion(criterion))
        gathered[backend] = gather(lenet, stats, groups, fashion_batches, {"device": "cpu", "backend": backend})
    ort, cv = gathered["onnxruntime"], gathered["opencv"]
    assert ort.samples == cv.samples == COUNT and list(ort.channels) == list(cv.channels)
    for key, expected in ort.channels.items():
        got = cv.channels[key]
        assert got.count == expected.count
        np.testing.assert_allclose(got.total, expected.total, rtol=1e-4, atol=1e-4 * np.abs(expected.total).max())
        if "squares" in expected.kinds:
            np.testing.assert_allclose(got.squares, expected.squares, rtol=1e-4)
        assert np.abs(got.zeros - expected.zeros).max() <= 1e-4 * expected.count, key


@needs_lenet
@needs_fashion
def test_eval_top1_is_identical_on_both_backends(lenet, fashion_batches):
    results = {backend: evaluate(lenet.net, lenet.shapes, fashion_batches, (1, 5), {"device": "cpu", "backend": backend})
               for backend in ("onnxruntime", "opencv", "auto")}
    assert results["onnxruntime"].samples == COUNT
    assert results["onnxruntime"].correct == results["opencv"].correct == results["auto"].correct
    assert 0.0 < results["onnxruntime"].accuracy(5) <= 1.0


@needs_lenet
def test_auto_probes_once_per_net_and_returns_onnxruntime_results(lenet, monkeypatch):
    monkeypatch.setattr(backends, "_CHOICES", {})
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    reference = Runtime(lenet.net, lenet.shapes, taps=["ip1"]).run(x)
    first = open_runtime(lenet.net, lenet.shapes, backend="auto", taps=["ip1"])
    assert isinstance(first, AutoRuntime) and first.backend is None
    results = first.run(x)
    assert first.backend in ("onnxruntime", "onnxruntime-1thread", "opencv")
    assert {"onnxruntime", "opencv"} <= set(first.timings) <= {"onnxruntime", "onnxruntime-1thread", "opencv"}
    assert list(results) == list(reference) == first.keys
    for key in reference:
        np.testing.assert_array_equal(results[key], reference[key])
    assert list(backends._CHOICES.values()) == [first.backend]
    second = open_runtime(lenet.net, lenet.shapes, backend="auto", taps=["ip1"])
    again = second.run(x)
    assert second.backend == first.backend and second.timings == {}, "the cached choice skips the probe"
    for key in reference:
        np.testing.assert_allclose(again[key], reference[key], rtol=1e-5, atol=1e-5 * np.abs(reference[key]).max())


@needs_lenet
def test_auto_keeps_onnxruntime_where_opencv_disagrees(lenet, monkeypatch):
    monkeypatch.setattr(backends, "_CHOICES", {})
    runner = open_runtime(lenet.net, lenet.shapes, backend="auto")
    original = runner.opencv.run
    monkeypatch.setattr(runner.opencv, "run", lambda feeds: {k: v + 1 for k, v in original(feeds).items()})
    monkeypatch.setattr(backends, "_timings", lambda runners, feeds, first: {name: float(name != "opencv")
                                                                            for name in runners})
    runner.run(np.zeros((2, 1, 28, 28), np.float32))
    assert runner.backend == "onnxruntime"
    assert runner.why.startswith("opencv differs from onnxruntime: 'prob' differs by")


def test_auto_falls_back_to_onnxruntime_where_opencv_cannot_run(tmp_path):
    generated = generate("threshold_tile", tmp_path)  # OpenCV cannot read Caffe's Tile
    model = load_model(generated.prototxt, generated.caffemodel)
    feeds = generated.inputs(np.random.default_rng(0))
    with pytest.raises(CaffeSurgeryError, match="OpenCV dnn cannot run the net: .*Tile"):
        OpenCVRuntime(model.net, model.shapes).run(feeds)
    runner = open_runtime(model.net, model.shapes, backend="auto")
    expected = Runtime(model.net, model.shapes).run(feeds)
    results = runner.run(feeds)
    # either onnxruntime candidate may win the timing (all threads, or one for a small net)
    assert runner.backend in ("onnxruntime", "onnxruntime-1thread") and "OpenCV dnn cannot run the net" in runner.why
    for key in expected:
        np.testing.assert_allclose(results[key], expected[key], rtol=1e-6, atol=1e-7)


def test_backend_arguments_are_checked(tmp_path):
    generated = generate("conv_pool", tmp_path)
    model = load_model(generated.prototxt, generated.caffemodel)
    with pytest.raises(CaffeSurgeryError, match="unknown backend 'tensorrt'"):
        open_runtime(model.net, model.shapes, backend="tensorrt")
    with pytest.raises(CaffeSurgeryError, match="the opencv backend runs on the CPU"):
        open_runtime(model.net, model.shapes, backend="opencv", device="cuda")
    assert isinstance(open_runtime(model.net, model.shapes, backend="auto", batch_size=2), Runtime)


@needs_fashion
def test_relevance_command_gives_the_same_statistics_on_either_backend(tmp_path, capsys):
    from caffe_surgery.cli import main
    from conftest import REPO

    sample = REPO / "samples" / "lenet_maxout.prototxt"
    spec = f"idx:{FASHION_MNIST / 't10k-images-idx3-ubyte.gz'}:{FASHION_MNIST / 't10k-labels-idx1-ubyte.gz'}"
    for backend in ("onnxruntime", "opencv"):
        code = main(["relevance", str(sample), "-w", str(sample.with_suffix(".caffemodel")), "--criterion", "apoz",
                     "--data", spec, "--scale", "0.00390625", "--limit", "128", "--backend", backend,
                     "-o", str(tmp_path / f"{backend}.npz")])
        assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "onnxruntime.npz") as ort, np.load(tmp_path / "opencv.npz") as cv:
        assert ort.files == cv.files and int(ort["samples"]) == 128
        for key in ort.files:
            if key.endswith(("/total", "/squares")):
                np.testing.assert_allclose(cv[key], ort[key], rtol=1e-4, atol=1e-4 * np.abs(ort[key]).max())
            elif not key.startswith("about/"):
                counts = ort[key.rsplit("/", 1)[0] + "/count"] if key.endswith("/zeros") else 0
                assert np.abs(cv[key] - ort[key]).max() <= 1e-4 * counts, key



class Sleeper:
    """A runner whose run takes ``seconds`` (time.sleep) and counts its runs: the probe's timing on known costs."""

    def __init__(self, seconds: float):
        self.seconds, self.runs = seconds, 0

    def run(self, feeds):
        time.sleep(self.seconds)
        self.runs += 1


def test_probe_runs_again_only_while_the_two_fastest_are_close(monkeypatch):
    monkeypatch.setattr(backends, "PROBE_SECONDS", 0.06)
    fast, slow = Sleeper(0.001), Sleeper(0.004)
    apart = backends._timings({"fast": fast, "slow": slow}, {}, 0.0)
    assert apart["slow"] > backends.CLOSE * apart["fast"]
    a, b = Sleeper(0.002), Sleeper(0.002)
    backends._timings({"a": a, "b": b}, {}, 0.0)
    # the same cost: both extra probes run, so each runner gets about (1 + EXTRA_PROBES) times the blocks
    assert a.runs >= (1 + backends.EXTRA_PROBES) * backends.PROBE_ROUNDS
    assert a.runs > 2 * slow.runs
