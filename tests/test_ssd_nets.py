"""The SSD nets of ../shared/real-models end to end: info, check, upgrade, export (detections as OpenCV's,
as sets), a random 50 % prune exact against the masked original in OpenCV and onnxruntime, and every pinned
channel group explained.

yufacedetectnet_v1 has its weights; MobileNet-SSD and FaceBoxes are prototxt-only and get random ones.
FaceBoxes' fork PriorBox densifies its small anchors (21 priors per position where stock PriorBox gives 3), so
its DetectionOutput sees fewer priors than locations: export refuses it with one line (OpenCV refuses it too),
and FaceBoxes is checked on the blobs feeding its DetectionOutput.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import ssd_reference
from caffe_surgery.cli import main
from caffe_surgery.errors import UnsupportedLayerError
from caffe_surgery.groups import build_groups
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx
from caffe_surgery.runtime import Runtime
from caffe_surgery.save import save_caffemodel, save_prototxt
from caffe_surgery.surgery import apply_plan
from conftest import REAL_MODELS
from netgen import write_net
from oracle import masked_copy, random_keep, switch_off

TOLERANCE = 1e-4
PRUNE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class SSDNet:
    folder: str
    prototxt: str
    caffemodel: str | None  # None: prototxt-only, random weights
    input_shape: tuple[int, int, int, int]
    threshold: tuple[str, str] | None = None  # (text, replacement): random weights score near 1/classes
    detections_exported: bool = True


NETS = {
    "yufacedetectnet_v1": SSDNet("yufacedetectnet_v1", "yufacedetectnet-open-v1.prototxt",
                                 "yufacedetectnet-open-v1.caffemodel", (1, 3, 240, 320)),
    "mobilenet_ssd": SSDNet("proto_mobilenet_ssd", "MobileNetSSD_deploy.prototxt", None, (1, 3, 300, 300),
                            ("confidence_threshold: 0.25", "confidence_threshold: 0.2")),
    "faceboxes": SSDNet("proto_faceboxes", "faceboxes_deploy.prototxt", None, (1, 3, 320, 256),
                        detections_exported=False),
}


def _with_input_layer(text: str, shape) -> str:
    """The legacy ``input:``/``input_shape`` header as an Input layer (at the test's input size)."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
            + text[text.index("layer {"):])


def _without_detection_output(text: str) -> str:
    """The text less its DetectionOutput layer (FaceBoxes': neither OpenCV nor the export can run it)."""
    return re.sub(r'layer \{\s*name: "detection_out"\s*type: "DetectionOutput".*', "", text, flags=re.S)


def pair(name: str, directory: Path, keep_detection: bool = True) -> tuple[Path, Path]:
    """(prototxt, caffemodel) of the net: the real pair, or the prototxt with random weights."""
    spec = NETS[name]
    folder = REAL_MODELS / spec.folder
    if spec.caffemodel is not None:
        return folder / spec.prototxt, folder / spec.caffemodel
    text = _with_input_layer((folder / spec.prototxt).read_text(), spec.input_shape)
    if spec.threshold:
        text = text.replace(*spec.threshold)
    if not keep_detection:
        text = _without_detection_output(text)
    generated = write_net(text, directory, name, seed=1)
    return generated.prototxt, generated.caffemodel


def feeds(name: str, seed: int = 3) -> dict[str, np.ndarray]:
    scale = 60.0 if NETS[name].caffemodel else 1.0  # real weights expect pixel-sized inputs
    return {"data": (np.random.default_rng(seed).standard_normal(NETS[name].input_shape) * scale).astype(np.float32)}


def opencv_forward(prototxt, caffemodel, inputs, outputs):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for blob, value in inputs.items():
        net.setInput(value, blob)
    return dict(zip(outputs, net.forward(outputs)))


def assert_close(actual, reference, what, tolerance=TOLERANCE):
    reference = np.asarray(reference, np.float32).reshape(actual.shape)
    error = float(np.abs(actual - reference).max(initial=0))
    assert error <= tolerance * max(1.0, float(np.abs(reference).max(initial=0))), f"{what}: {error:.3g}"


def assert_same_set(actual, reference, what, tolerance=TOLERANCE):
    """The same detections after sorting (OpenCV pads with zero rows and orders differently)."""
    actual, reference = ssd_reference.comparable(actual), ssd_reference.comparable(reference)
    assert actual.shape == reference.shape, f"{what}: {actual.shape} vs {reference.shape}"
    np.testing.assert_array_equal(actual[:, :2], reference[:, :2], err_msg=what)
    np.testing.assert_allclose(actual[:, 2:], reference[:, 2:], rtol=0, atol=tolerance, err_msg=what)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def detection_layer(net):
    (layer,) = [layer for layer in net.layers if layer.type == "DetectionOutput"]
    return layer


# ------------------------------------------------------------------ info, check, upgrade, export

@pytest.mark.parametrize("name", sorted(NETS))
def test_info_check_upgrade_export(name, tmp_path, capsys):
    spec = NETS[name]
    prototxt, caffemodel = pair(name, tmp_path)
    info = json.loads(cli(capsys, "info", prototxt, "-w", caffemodel, "--json"))
    assert {layer["type"] for layer in info["layers"]} >= {"PriorBox", "DetectionOutput"}
    cli(capsys, "check", prototxt, "-w", caffemodel)
    upgraded, upgraded_weights = tmp_path / "upgraded.prototxt", tmp_path / "upgraded.caffemodel"
    cli(capsys, "upgrade", prototxt, upgraded, "-w", caffemodel, "-o", upgraded_weights)
    onnx_path = tmp_path / "net.onnx"
    if not spec.detections_exported:
        with pytest.raises(UnsupportedLayerError, match="detection_out: DetectionOutput with .* priors .* cannot be exported"):
            model = load_model(upgraded, upgraded_weights)
            export_onnx(model.net, model.shapes)
        return
    cli(capsys, "export", upgraded, "-w", upgraded_weights, "-o", onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = feeds(name)
    output = detection_layer(load_model(upgraded).net).tops[0].name
    actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))[output]
    reference = opencv_forward(prototxt, caffemodel, inputs, [output])[output]
    assert ssd_reference.comparable(reference).shape[0] > 1, "some detections to compare"
    assert_same_set(actual, reference, name)


# ------------------------------------------------------------------ a random 50 % prune

def _saved(net, directory: Path, stem: str) -> tuple[Path, Path]:
    save_prototxt(net, directory / f"{stem}.prototxt")
    save_caffemodel(net, directory / f"{stem}.caffemodel")
    return directory / f"{stem}.prototxt", directory / f"{stem}.caffemodel"


@pytest.mark.parametrize("name", sorted(NETS))
def test_random_half_prune_is_exact(name, tmp_path):
    """Pruned vs the original with the removed channels switched off: the blobs feeding DetectionOutput
    (locations, confidences) in OpenCV and onnxruntime, and the detections as sets."""
    spec = NETS[name]
    prototxt, caffemodel = pair(name, tmp_path, keep_detection=spec.detections_exported)
    model = load_model(prototxt, caffemodel)
    net, shapes = model.net, model.shapes
    groups = build_groups(net, shapes)
    keep = random_keep(groups, np.random.default_rng(7), 0.5)
    assert keep, f"{name}: nothing to prune"
    pruned, pruned_shapes = apply_plan(net, shapes, groups, keep)
    masked = masked_copy(net, switch_off(net, shapes, groups, keep))
    if spec.detections_exported:
        detection = detection_layer(net)
        compared = [net.final(b.name) for b in detection.bottoms[:2]]
        detections = detection.tops[0]
    else:
        compared = [v for v in net.outputs() if shapes.blob(v)[1:] != (2, shapes.blob(v)[-1])]  # not the priors
        detections = None
    inputs = feeds(name, seed=5)
    names = [v.name for v in compared] + ([detections.name] if detections else [])
    got = opencv_forward(*_saved(pruned, tmp_path, "pruned"), inputs, names)
    want = opencv_forward(*_saved(masked, tmp_path, "masked"), inputs, names)
    for version in compared:
        assert_close(got[version.name], want[version.name], f"{name} OpenCV {version.name}", PRUNE_TOLERANCE)
    if detections:
        assert ssd_reference.comparable(want[detections.name]).shape[0] > 1, "some detections to compare"
        assert_same_set(got[detections.name], want[detections.name], f"{name} OpenCV detections")
    got = Runtime(pruned, pruned_shapes, device="cpu").run(inputs)
    want = Runtime(masked, shapes, device="cpu").run(inputs)
    for version in net.outputs():
        if detections is not None and version == detections:
            assert_same_set(got[version.key], want[version.key], f"{name} onnxruntime detections")
        elif version in compared:
            assert_close(got[version.key], want[version.key], f"{name} onnxruntime {version.name}", PRUNE_TOLERANCE)
    assert pruned_shapes.totals()[0] < shapes.totals()[0]


# ------------------------------------------------------------------ pinned channels explained

@pytest.mark.parametrize("name", sorted(NETS))
def test_every_pinned_group_names_the_layer_that_pins_it(name, tmp_path, capsys):
    prototxt, caffemodel = pair(name, tmp_path)
    report = json.loads(cli(capsys, "info", prototxt, "-w", caffemodel, "--groups", "--json"))
    layer_names = {layer.name for layer in load_model(prototxt).net.layers}
    pinned = [g for g in report["groups"] if not g["prunable"]]
    assert pinned and any(g["prunable"] for g in report["groups"])
    for group in pinned:
        assert group["pinned"], f"{name}: group {group['name']} is pinned without a reason"
        for reason in group["pinned"]:
            assert any(f"'{layer}'" in reason for layer in layer_names), f"{name}: {reason!r} names no layer"
