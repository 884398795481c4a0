"""Behaviour that lives in the layer declarations: Caffe's literal Reshape at any batch, refusals Caffe makes
(Concat/Slice axis with the legacy dim, LRN with an even local_size), Crop's axis on 3-D blobs, and channel
groups that cannot be pruned pinned with their reason instead of failing (grouped Deconvolution, a Slice
feeding a grouped convolution)."""
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.check import check_model
from caffe_surgery.errors import ShapeError
from caffe_surgery.graph import build_net
from caffe_surgery.groups import build_groups
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import BatchDependentError, export_onnx
from caffe_surgery.runtime import Runtime
from caffe_surgery.shapes import infer_shapes
from caffe_surgery.surgery import apply_plan
from oracle import masked_copy, random_keep, switch_off
from pruning_nets import INPUT, conv, random_weights, simple

REPO = Path(__file__).resolve().parent.parent
cv2 = pytest.importorskip("cv2")


def parse(text: str):
    return build_net(text_format.Parse(text, caffe_pb2.NetParameter()))


# ------------------------------------------------------------------ Reshape taken literally

RESHAPE_NET = """name: "literal"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: BATCH dim: 4 dim: 3 dim: 5 } } }
layer { name: "rpn" type: "Reshape" bottom: "data" top: "rpn" reshape_param { shape { dim: 1 dim: 2 dim: -1 dim: 0 } } }
layer { name: "prob" type: "Softmax" bottom: "rpn" top: "prob" }
"""


def caffe_reference(x: np.ndarray) -> np.ndarray:
    """Caffe: the whole batch becomes (1, 2, -1, W), then softmax over axis 1."""
    rows = x.astype(np.float64).reshape(1, 2, -1, x.shape[3])
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _write(tmp_path: Path, batch: int) -> Path:
    path = tmp_path / f"literal_{batch}.prototxt"
    path.write_text(RESHAPE_NET.replace("BATCH", str(batch)))
    weights = caffe_pb2.NetParameter(name="literal")
    weights.layer.add(name="rpn", type="Reshape")
    (tmp_path / "empty.caffemodel").write_bytes(weights.SerializeToString())
    return path


def test_reshape_literal_batch_dim_matches_caffe_at_batch_4(tmp_path):
    prototxt = _write(tmp_path, 4)
    model = load_model(prototxt)
    assert model.shapes.blob(model.net.resolve("prob")) == (1, 2, 24, 5)
    x = np.random.default_rng(0).standard_normal((4, 4, 3, 5)).astype(np.float32)
    session = ort.InferenceSession(export_onnx(model.net, model.shapes).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["prob"], {"data": x})[0]
    expected = caffe_reference(x)
    assert np.abs(got - expected).max() <= 1e-5
    opencv = cv2.dnn.readNetFromCaffe(str(prototxt))
    opencv.setInput(x, "data")
    assert np.abs(opencv.forward("prob") - expected).max() <= 1e-5  # OpenCV agrees with Caffe here


def test_dynamic_batch_export_of_a_batch_dependent_reshape_is_refused(tmp_path):
    prototxt = _write(tmp_path, 4)
    done = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", "export", str(prototxt), "-w",
                           str(tmp_path / "empty.caffemodel"), "-o",
                           str(tmp_path / "net.onnx"), "--dynamic-batch"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and not (tmp_path / "net.onnx").exists()
    assert done.stderr.strip().splitlines() == [
        f"error: {prototxt}: rpn: reshape_param.shape [1, 2, -1, 0] fixes the batch axis (Caffe's result depends "
        "on the batch size); a dynamic batch cannot follow it: export with a fixed batch (leave out "
        "--dynamic-batch; set the batch with --input NAME=N,C,H,W)"]
    model = load_model(prototxt)
    with pytest.raises(BatchDependentError):
        export_onnx(model.net, model.shapes, dynamic_batch=True)


def test_runtime_runs_a_batch_dependent_net_at_its_own_batch(tmp_path, caplog):
    """Declared at batch 4 and fed 8 samples: two Caffe forwards of 4, never one of 8, with a warning."""
    model = load_model(_write(tmp_path, 4))
    with caplog.at_level(logging.WARNING):
        runtime = Runtime(model.net, model.shapes, device="cpu")
    assert runtime.fixed_batch == 4 and "running in batches of exactly 4" in caplog.text
    x = np.random.default_rng(1).standard_normal((8, 4, 3, 5)).astype(np.float32)
    got = runtime.run(x)["prob"]
    expected = np.concatenate([caffe_reference(x[:4]), caffe_reference(x[4:])])
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5
    with pytest.raises(Exception, match="runs only in batches of 4 samples, got 6"):
        runtime.run(x[:6])


def test_reshape_copying_the_batch_stays_dynamic():
    net = parse(RESHAPE_NET.replace("BATCH", "1").replace("dim: 1 dim: 2 dim: -1 dim: 0",
                                                          "dim: 0 dim: 2 dim: -1 dim: 0"))
    shapes = infer_shapes(net)
    runtime = Runtime(net, shapes, device="cpu")
    assert runtime.fixed_batch is None
    x = np.random.default_rng(2).standard_normal((3, 4, 3, 5)).astype(np.float32)
    expected = np.concatenate([caffe_reference(sample[None]).reshape(1, 2, 6, 5) for sample in x])
    assert np.abs(runtime.run(x)["prob"] - expected).max() <= 1e-5


# ------------------------------------------------------------------ refusals Caffe makes

@pytest.mark.parametrize("layer, problem", [
    ('layer { name: "cat" type: "Concat" bottom: "data" bottom: "data" top: "cat" concat_param { axis: 1 concat_dim: 1 } }',
     "cat: give either axis or concat_dim, not both (Caffe refuses both)"),
    ('layer { name: "cut" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 1 slice_dim: 1 } }',
     "cut: give either axis or slice_dim, not both (Caffe refuses both)"),
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 4 } }',
     "lrn: local_size must be odd (Caffe's LRN refuses 4)"),
])
def test_caffe_refusals_in_shapes_and_check(layer, problem):
    net = parse(INPUT.format(n=1, c=4, h=5, w=5) + layer)
    with pytest.raises(ShapeError) as info:
        infer_shapes(net)
    assert info.value.one_line() == problem
    assert check_model(net) == [problem]


# ------------------------------------------------------------------ channel rules

def _prune_everything_prunable(net, shapes, seed=0):
    """Apply a random plan on every prunable group; the result equals the masked original in onnxruntime."""
    groups = build_groups(net, shapes)
    keep = random_keep(groups, np.random.default_rng(seed))
    pruned, pruned_shapes = apply_plan(net, shapes, groups, keep)
    masked = masked_copy(net, switch_off(net, shapes, groups, keep))
    inputs = {"data": np.random.default_rng(seed).standard_normal(shapes.blob(net.resolve("data"))).astype(np.float32)}
    got = Runtime(pruned, pruned_shapes, device="cpu").run(inputs)
    want = Runtime(masked, shapes, device="cpu").run(inputs)
    for key in (o.key for o in net.outputs()):
        assert np.abs(got[key] - want[key]).max() <= 1e-4 * max(1.0, np.abs(want[key]).max()), key
    return groups, pruned_shapes


def test_grouped_deconvolution_inputs_are_pinned_not_fatal():
    text = (INPUT.format(n=1, c=3, h=6, w=6) + conv("conv1", "data", 8) + simple("ReLU", "relu1", "conv1")
            + 'layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up" '
              'convolution_param { num_output: 8 kernel_size: 4 stride: 2 pad: 1 group: 8 } }\n'
            + conv("conv2", "up", 6) + simple("ReLU", "relu2", "conv2") + conv("conv3", "conv2", 4))
    net, shapes = random_weights(text, 0)
    groups, pruned_shapes = _prune_everything_prunable(net, shapes)
    assert groups.of_layer("conv1").pinned == [
        "read by grouped Deconvolution 'up' (pruning its channels is not supported)"]
    assert groups.of_layer("conv2").prunable
    assert pruned_shapes.totals()[0] < shapes.totals()[0]


def test_slice_feeding_a_grouped_convolution_pins_or_prunes_exactly():
    """conv(16) -> Slice 8/8 -> conv(group 4) on one half: the constraint cannot sit on the whole of conv1."""
    text = (INPUT.format(n=1, c=3, h=6, w=6) + conv("conv1", "data", 16)
            + 'layer { name: "cut" type: "Slice" bottom: "conv1" top: "a" top: "b" slice_param { axis: 1 slice_point: 8 } }\n'
            + conv("grouped", "a", 8, group=4) + conv("plain", "b", 8)
            + 'layer { name: "cat" type: "Concat" bottom: "grouped" bottom: "plain" top: "cat" }\n'
            + conv("head", "cat", 4))
    net, shapes = random_weights(text, 1)
    groups, _ = _prune_everything_prunable(net, shapes, seed=1)
    assert groups.of_layer("conv1").pinned == [
        "feeds grouped Convolution 'grouped' from several sources or a part of one"]
    assert groups.of_layer("grouped").prunable and groups.of_layer("grouped").chunks == 4


def test_grouped_convolution_reading_a_whole_group_constrains_it():
    text = INPUT.format(n=1, c=3, h=6, w=6) + conv("conv1", "data", 8) + conv("grouped", "conv1", 8, group=4) + conv(
        "head", "grouped", 4)
    net, shapes = random_weights(text, 2)
    groups, _ = _prune_everything_prunable(net, shapes, seed=2)
    assert groups.of_layer("conv1").prunable and groups.of_layer("conv1").chunks == 4


@pytest.mark.parametrize("axis, pinned", [(-2, True), (-1, False), (2, False), (1, True)])
def test_crop_axis_is_canonical_for_3d_blobs(axis, pinned):
    text = ('layer { name: "data" type: "Input" top: "data" top: "ref" input_param { shape { dim: 2 dim: 3 dim: 12 } '
            'shape { dim: 2 dim: 4 dim: 8 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 } }\n'
            f'layer {{ name: "crop" type: "Crop" bottom: "conv" bottom: "ref" top: "crop" crop_param {{ axis: {axis} offset: 1 }} }}\n'
            'layer { name: "head" type: "Convolution" bottom: "crop" top: "head" convolution_param { num_output: 2 kernel_size: 1 } }\n')
    net = parse(text)
    groups = build_groups(net, infer_shapes(net))
    reason = "cropped along the channels by Crop 'crop'"
    assert (reason in groups.of_layer("conv").pinned) == pinned
