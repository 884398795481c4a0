"""profile: per-layer times from onnxruntime's profiler and OpenCV's getPerfProfile, mapped to Caffe layers."""
import json

import pytest

from caffe_surgery.cli import main
from caffe_surgery.profile import _layer_of_node
from conftest import REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
WEIGHTED = ("Convolution", "InnerProduct")
REAL = [("mtcnn_det2", "det2.prototxt", "det2.caffemodel"),
        ("ultraface_slim320", "slim-320.prototxt", "slim-320.caffemodel")]
needs_real = pytest.mark.skipif(not REAL_MODELS.is_dir(), reason=f"real models not at {REAL_MODELS}")


def profile(capsys, *argv) -> dict:
    code = main(["profile", *[str(a) for a in argv], "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def check_totals(document: dict) -> None:
    """Positive, and close to the wall time of the same timed runs: the layers' times are part of it, so their
    sum is at most 1.1 times it (+0.05 ms for clock granularity), and at least a fiftieth of it (a generous
    bound: on tiny nets the call overhead of a run is a large share)."""
    assert document["total_ms"] > 0 and document["wall_ms"] > 0
    assert document["wall_ms"] / 50 <= document["total_ms"] <= 1.1 * document["wall_ms"] + 0.05


def test_node_names_map_back_to_layers():
    layers, producers = ["conv1", "conv1/dw", "relu1"], {"conv1@conv1": "conv1", "relu1": "relu1"}
    assert _layer_of_node("conv1/Conv#_kernel_time", layers, producers) == "conv1"
    assert _layer_of_node("conv1/dw/Conv#_2_kernel_time", layers, producers) == "conv1/dw"
    assert _layer_of_node("conv1@conv1_nchwc_kernel_time", layers, producers) == "conv1"
    assert _layer_of_node("relu1_nchwc_kernel_time", layers, producers) == "relu1"
    assert _layer_of_node("ReorderInput_token_6_kernel_time", layers, producers) is None


@needs_real
@pytest.mark.parametrize("folder, prototxt, weights", REAL)
def test_onnxruntime_times_every_weighted_layer_of_a_real_model(folder, prototxt, weights, capsys):
    document = profile(capsys, REAL_MODELS / folder / prototxt, "-w", REAL_MODELS / folder / weights, "--runs", "3")
    layers = document["layers"]
    assert document["backend"] == "onnxruntime" and document["batch"] == 1 and len(layers) > 10
    assert all(l["ms"] is not None and l["ms"] > 0 for l in layers if l["type"] in WEIGHTED)
    assert all(l["ms"] is None for l in layers if l["type"] == "Input")
    assert document["other_ms"] < 0.5 * document["total_ms"], "most of the time maps back to Caffe layers"
    check_totals(document)


@needs_real
def test_opencv_times_come_from_its_per_layer_profile(capsys):
    folder = REAL_MODELS / "mtcnn_det2"
    document = profile(capsys, folder / "det2.prototxt", "-w", folder / "det2.caffemodel", "--backend", "opencv",
                       "--runs", "3")
    names = [l["name"] for l in document["layers"]]
    assert names[:3] == ["input", "conv1", "prelu1"] and "prob1" in names
    assert all(l["ms"] is not None and l["ms"] > 0 for l in document["layers"] if l["type"] in WEIGHTED)
    check_totals(document)


def test_profile_table_and_prune_latency(tmp_path, capsys):
    assert main(["profile", str(SAMPLE), "-w", str(SAMPLE_WEIGHTS), "--runs", "2", "--input", "images=4,1,28,28"]) == 0
    out, _ = capsys.readouterr()
    assert "MACs/image" in out and "batch 4" in out and "288,000" in out
    code = main(["prune", str(SAMPLE), "-w", str(SAMPLE_WEIGHTS), "--criterion", "weight-l1", "--ratio", "0.5",
                 "--profile", "-o", str(tmp_path / "small")])
    out, _ = capsys.readouterr()
    latency = json.loads((tmp_path / "small.report.json").read_text())["latency_ms"]
    assert code == 0 and latency["before"] > 0 and latency["after"] > 0 and latency["batch"] == 1
    assert f"latency {latency['before']:.3f} -> {latency['after']:.3f} ms" in out
