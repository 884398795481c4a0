"""DetectionOutput exported to ONNX: against a numpy reference of Caffe's semantics on random bottoms
(every code_type, share_location, variance encoding, thresholds, keep_top_k, batch > 1), against OpenCV
dnn on the real SSD face detector and on generated SSD nets, and its refusals."""
import itertools

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.layers.detection_output import code_type
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx
from caffe_surgery.runtime import Runtime
from conftest import REAL_MODELS
from netgen import CORPUS, Feed, generate, write_net
import ssd_reference

PRIORS, CLASSES, BATCH = 40, 4, 3
TOLERANCE = 1e-4
CODE_NAMES = {ssd_reference.CORNER: "CORNER", ssd_reference.CENTER_SIZE: "CENTER_SIZE"}


def head_prototxt(share_location: bool, params: str, batch: int = BATCH, classes: int = CLASSES,
                  priors: int = PRIORS) -> str:
    loc = priors * 4 * (1 if share_location else classes)
    return f"""
layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: {batch} dim: {loc} }} }} }}
layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: {batch} dim: {priors * classes} }} }} }}
layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 dim: 2 dim: {priors * 4} }} }} }}
layer {{ name: "detection" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "detection"
  detection_output_param {{ num_classes: {classes} share_location: {str(share_location).lower()} {params} }} }}
"""


def random_bottoms(rng, share_location: bool, batch: int = BATCH, classes: int = CLASSES, loc_scale: float = 0.5):
    """Overlapping priors inside the unit square, softmaxed confidences, moderate offsets."""
    corner = rng.uniform(0.0, 0.7, (PRIORS, 2))
    size = rng.uniform(0.1, 0.3, (PRIORS, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).reshape(-1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], PRIORS)
    prior = np.stack([boxes, variances])[None].astype(np.float32)
    logits = rng.standard_normal((batch, PRIORS, classes)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    loc = rng.standard_normal((batch, PRIORS * 4 * (1 if share_location else classes))) * loc_scale
    return {"loc": loc.astype(np.float32), "conf": conf.reshape(batch, -1).astype(np.float32), "prior": prior}


def run_exported(model, feeds, dynamic_batch=False, opset=17):
    exported = export_onnx(model.net, model.shapes, dynamic_batch=dynamic_batch, opset=opset)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    return exported, session.run(None, feeds)[0]


def assert_same_detections(actual: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Same rows in the same order (image, label exactly; score and box within TOLERANCE)."""
    assert actual.shape == reference.shape, f"{what}: {actual.shape} vs {reference.shape}"
    np.testing.assert_array_equal(actual[..., :2], reference[..., :2], err_msg=what)
    np.testing.assert_allclose(actual[..., 2:], reference[..., 2:], rtol=0, atol=TOLERANCE, err_msg=what)


def assert_same_set(actual: np.ndarray, reference: np.ndarray, what: str) -> None:
    """The same detections after sorting rows (OpenCV orders and pads differently)."""
    assert_same_detections(ssd_reference.comparable(actual), ssd_reference.comparable(reference), what)


CASES = [(code, share, in_target) for code, share, in_target in
         itertools.product((ssd_reference.CORNER, ssd_reference.CENTER_SIZE), (True, False), (False, True))]


@pytest.mark.parametrize("code, share, in_target", CASES)
def test_matches_reference_for_every_decoding(code, share, in_target, tmp_path):
    params = (f"code_type: {CODE_NAMES[code]} variance_encoded_in_target: {str(in_target).lower()} "
              "confidence_threshold: 0.05 keep_top_k: 25 nms_param { nms_threshold: 0.4 top_k: 12 }")
    generated = write_net(head_prototxt(share, params), tmp_path)
    model = load_model(generated.prototxt)
    # Offsets encoded in the target are not scaled down by the variances: keep them as small.
    feeds = random_bottoms(np.random.default_rng(code * 4 + share * 2 + in_target), share,
                           loc_scale=0.05 if in_target else 0.5)
    _, actual = run_exported(model, feeds)
    reference = ssd_reference.detection_output(
        feeds["loc"], feeds["conf"], feeds["prior"], num_classes=CLASSES, share_location=share, code_type=code,
        variance_encoded_in_target=in_target, confidence_threshold=0.05, nms_threshold=0.4, top_k=12, keep_top_k=25)
    assert reference.shape[2] > BATCH  # detections in several images and classes
    assert set(reference[0, 0, :, 0]) == set(range(BATCH))
    assert_same_detections(actual, reference, f"{CODE_NAMES[code]} share={share} in_target={in_target}")


@pytest.mark.parametrize("share", (True, False))
def test_corner_size_from_a_caffemodel_value(share, tmp_path):
    """CORNER_SIZE (3) is not in this schema's CodeType: it arrives as an unknown field and still decodes."""
    generated = write_net(head_prototxt(share, "keep_top_k: 30 nms_param { nms_threshold: 0.45 }"), tmp_path)
    model = load_model(generated.prototxt)
    param = model.net.layer("detection").param.detection_output_param
    param.MergeFromString(bytes([6 << 3, ssd_reference.CORNER_SIZE]))  # field 6 (code_type), varint 3
    assert code_type(param) == ssd_reference.CORNER_SIZE and not param.HasField("code_type")
    feeds = random_bottoms(np.random.default_rng(11), share)
    _, actual = run_exported(model, feeds)
    reference = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], num_classes=CLASSES,
                                               share_location=share, code_type=ssd_reference.CORNER_SIZE,
                                               nms_threshold=0.45, keep_top_k=30)
    assert_same_detections(actual, reference, "CORNER_SIZE")


def test_no_threshold_no_top_k_and_other_background(tmp_path):
    """Without confidence_threshold every score competes; background 2 is skipped, label 0 is not; dynamic batch."""
    params = "background_label_id: 2 code_type: CENTER_SIZE nms_param { nms_threshold: 0.3 }"
    generated = write_net(head_prototxt(True, params), tmp_path)
    model = load_model(generated.prototxt)
    feeds = random_bottoms(np.random.default_rng(5), True)
    _, actual = run_exported(model, feeds, dynamic_batch=True)
    reference = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], num_classes=CLASSES,
                                               background_label_id=2, code_type=ssd_reference.CENTER_SIZE)
    assert 2 not in reference[0, 0, :, 1] and 0 in reference[0, 0, :, 1]
    assert_same_detections(actual, reference, "no threshold")


def test_inverted_boxes_count_as_empty(tmp_path):
    """CORNER decoding with large offsets gives boxes with xmax < xmin: area 0 in Caffe, never suppressing
    (two such boxes that touch: Caffe's IoU is 0 / 0, which suppresses; the export keeps both)."""
    generated = write_net(head_prototxt(True, "nms_param { nms_threshold: 0.2 }"), tmp_path)
    model = load_model(generated.prototxt)
    feeds = random_bottoms(np.random.default_rng(9), True, loc_scale=0.5)
    _, actual = run_exported(model, feeds)
    reference = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], num_classes=CLASSES,
                                               nms_threshold=0.2)
    boxes = reference[0, 0, :, 3:]
    assert ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()
    assert_same_detections(actual, reference, "inverted boxes")


def test_no_detection_gives_one_row_per_image(tmp_path):
    generated = write_net(head_prototxt(True, "confidence_threshold: 0.999"), tmp_path)
    model = load_model(generated.prototxt)
    feeds = random_bottoms(np.random.default_rng(1), True)
    exported, actual = run_exported(model, feeds)
    expected = np.full((1, 1, BATCH, 7), -1, np.float32)
    expected[0, 0, :, 0] = np.arange(BATCH)
    np.testing.assert_array_equal(actual, expected)
    dims = exported.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 1, "detection_detections", 7]


@pytest.mark.parametrize("code, share, opset", [(ssd_reference.CENTER_SIZE, True, 13),
                                                (ssd_reference.CORNER, False, 21)])
def test_adaptive_nms_matches_reference(code, share, opset, tmp_path):
    """eta < 1 with nms_threshold > 0.5: the threshold shrinks after each kept box (a Loop in the graph, with
    Caffe's own IoU: here also for inverted CORNER boxes, where two touching empty boxes suppress)."""
    params = (f"code_type: {CODE_NAMES[code]} confidence_threshold: 0.02 keep_top_k: 60 "
              "nms_param { nms_threshold: 0.9 eta: 0.8 top_k: 20 }")
    generated = write_net(head_prototxt(share, params), tmp_path)
    model = load_model(generated.prototxt)
    feeds = random_bottoms(np.random.default_rng(8), share, loc_scale=1.0)
    exported, actual = run_exported(model, feeds, dynamic_batch=share, opset=opset)
    onnx.checker.check_model(exported, full_check=True)
    options = dict(num_classes=CLASSES, share_location=share, code_type=code, confidence_threshold=0.02,
                   nms_threshold=0.9, top_k=20, keep_top_k=60)
    reference = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], eta=0.8, **options)
    plain = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], **options)
    assert reference.shape[2] < plain.shape[2]  # the shrinking threshold suppresses more
    assert_same_detections(actual, reference, f"adaptive {CODE_NAMES[code]}")


def test_adaptive_nms_over_too_many_candidates_is_refused(tmp_path):
    generated = write_net(head_prototxt(True, "nms_param { nms_threshold: 0.7 eta: 0.9 }", priors=2100), tmp_path)
    model = load_model(generated.prototxt)
    with pytest.raises(CaffeSurgeryError, match="adaptive NMS over 2100 candidates per class") as info:
        export_onnx(model.net, model.shapes)
    assert info.value.layer == "detection"


def test_eta_without_effect_is_exported(tmp_path):
    """eta only acts while the threshold is above 0.5: below it the result is plain NMS."""
    generated = write_net(head_prototxt(True, "code_type: CENTER_SIZE nms_param { nms_threshold: 0.5 eta: 0.7 }"), tmp_path)
    model = load_model(generated.prototxt)
    feeds = random_bottoms(np.random.default_rng(2), True)
    _, actual = run_exported(model, feeds)
    reference = ssd_reference.detection_output(feeds["loc"], feeds["conf"], feeds["prior"], num_classes=CLASSES,
                                               code_type=ssd_reference.CENTER_SIZE, nms_threshold=0.5, eta=0.7)
    assert_same_detections(actual, reference, "eta 0.7")


def test_runtime_refuses_to_chunk_detections(tmp_path):
    generated = write_net(head_prototxt(True, "keep_top_k: 5"), tmp_path)
    model = load_model(generated.prototxt)
    runtime = Runtime(model.net, model.shapes, batch_size=1)
    with pytest.raises(CaffeSurgeryError, match="mix the samples"):
        runtime.run(random_bottoms(np.random.default_rng(0), True))


# ----------------------------------------------------------------------------- OpenCV dnn

def opencv_detections(prototxt, caffemodel, feeds):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for name, value in feeds.items():
        net.setInput(value, name)
    return net.forward()


YUNET = REAL_MODELS / "yufacedetectnet_v1"


@pytest.mark.skipif(not YUNET.is_dir(), reason="../shared/real-models is absent")
@pytest.mark.parametrize("batch", (1, 2))
def test_real_ssd_face_detector_matches_opencv(batch):
    prototxt, caffemodel = YUNET / "yufacedetectnet-open-v1.prototxt", YUNET / "yufacedetectnet-open-v1.caffemodel"
    model = load_model(prototxt, caffemodel, input_shapes={"data": (batch, 3, 240, 320)})
    feeds = {"data": (np.random.default_rng(3).standard_normal((batch, 3, 240, 320)) * 60).astype(np.float32)}
    exported, actual = run_exported(model, feeds)
    onnx.checker.check_model(exported, full_check=True)
    reference = opencv_detections(prototxt, caffemodel, feeds)
    assert reference.shape[2] == 50 * batch  # keep_top_k per image
    assert_same_set(actual, reference, f"yufacedetectnet batch {batch}")




def test_generated_ssd_net_matches_opencv(tmp_path):
    """(OpenCV departs from Caffe with variance_encoded_in_target: it wants a prior bottom without variances,
    where Caffe takes PriorBox's (1, 2, ...) and ignores them; the numpy reference covers that option.)"""
    generated = generate("ssd_detection", tmp_path)
    model = load_model(generated.prototxt, generated.caffemodel)
    feeds = {"data": np.random.default_rng(4).standard_normal((2, 3, 24, 30)).astype(np.float32)}
    exported = export_onnx(model.net, model.shapes)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    net = cv2.dnn.readNetFromCaffe(str(generated.prototxt), str(generated.caffemodel))
    net.setInput(feeds["data"])
    names = ["detection_center", "detection_corner"]
    for name, reference in zip(names, net.forward(names)):
        assert ssd_reference.comparable(reference).shape[0] > 2 and set(reference[0, 0, :, 0]) == {0, 1}
        assert_same_set(results[name], reference, name)


INPUT_LAYER = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 300 dim: 300 } } }\n'
MOBILENET_SSD = REAL_MODELS / "proto_mobilenet_ssd" / "MobileNetSSD_deploy.prototxt"


@pytest.mark.skipif(not MOBILENET_SSD.is_file(), reason="../shared/real-models is absent")
def test_mobilenet_ssd_with_random_weights_matches_opencv(tmp_path):
    """The prototxt-only MobileNet-SSD (no caffemodel published with it), with random weights."""
    text = MOBILENET_SSD.read_text()
    text = INPUT_LAYER + text[text.index("layer {"):]  # the legacy input fields as an Input layer
    # Random weights give near-uniform class scores (about 1/21): lower the threshold so detections remain.
    text = text.replace("confidence_threshold: 0.25", "confidence_threshold: 0.2")
    generated = write_net(text, tmp_path, "mobilenet_ssd", seed=1, feeds={"data": Feed((1, 3, 300, 300))})
    model = load_model(generated.prototxt, generated.caffemodel)
    feeds = {"data": np.random.default_rng(6).standard_normal((1, 3, 300, 300)).astype(np.float32)}
    _, actual = run_exported(model, feeds)
    reference = opencv_detections(generated.prototxt, generated.caffemodel, feeds)
    assert 1 < ssd_reference.comparable(reference).shape[0] < 100  # some detections, fewer than keep_top_k
    assert_same_set(actual, reference, "MobileNet-SSD")


def test_without_detections_caffe_rows_where_opencv_gives_zeros(tmp_path):
    """Caffe (and the export) write one [image, -1 x 6] row per image; OpenCV keeps its keep_top_k rows of zeros."""
    text = CORPUS["ssd_detection"].text.replace("confidence_threshold: 0.3", "confidence_threshold: 0.99")
    generated = write_net(text, tmp_path, "ssd")
    model = load_model(generated.prototxt, generated.caffemodel)
    feeds = {"data": np.random.default_rng(4).standard_normal((2, 3, 24, 30)).astype(np.float32)}
    exported = export_onnx(model.net, model.shapes, outputs=["detection_center"])
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = session.run(None, feeds)[0]
    np.testing.assert_array_equal(actual[0, 0], [[0] + [-1] * 6, [1] + [-1] * 6])
    net = cv2.dnn.readNetFromCaffe(str(generated.prototxt), str(generated.caffemodel))
    net.setInput(feeds["data"])
    np.testing.assert_array_equal(net.forward("detection_center"), np.zeros((1, 1, 7 * 2, 7)))
