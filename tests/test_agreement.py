"""Agreement with the original net for nets without labels (caffe_surgery.agreement), and where it is used:
compare's tolerances and JSON, prune's --metric and report."""
import json

import cv2
import numpy as np
import pytest

from caffe_surgery.agreement import AgreementTracker, agreement, choose_metric, detection_matches, sorted_detections
from caffe_surgery.cli import main
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.model import load_model, load_net
from caffe_surgery.runtime import Runtime
from conftest import REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
LANDMARK = REAL_MODELS / "landmark106_dq"
YUNET = REAL_MODELS / "yufacedetectnet_v1"
needs_real = pytest.mark.skipif(not REAL_MODELS.is_dir(), reason="../shared/real-models is absent")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(*detections):
    return np.asarray(detections, np.float32).reshape(1, 1, -1, 7)


# ------------------------------------------------------------------------------ the measures

def test_detections_are_matched_one_to_one_by_label_and_iou():
    reference = rows([0, 1, 0.9, 0.1, 0.1, 0.3, 0.3],   # reproduced exactly
                     [0, 1, 0.8, 0.12, 0.1, 0.32, 0.3],  # overlaps the same candidate: only one may take it
                     [0, 2, 0.7, 0.5, 0.5, 0.7, 0.7],    # the candidate has label 1 here
                     [1, 1, 0.6, 0.0, 0.0, 0.2, 0.2],    # image 1: shifted, IoU 0.6^2/(2-0.36) = 0.22
                     [1, 1, 0.4, 0.5, 0.5, 0.9, 0.9])    # below the score threshold: not asked for
    candidate = rows([0, 1, 0.85, 0.1, 0.1, 0.3, 0.3],
                     [0, 1, 0.8, 0.5, 0.5, 0.7, 0.7],
                     [1, 1, 0.9, 0.08, 0.08, 0.28, 0.28],
                     [1, 1, 0.3, 0.0, 0.0, 0.2, 0.2])    # right box, but under the threshold
    assert detection_matches(reference, candidate) == (1, 4)
    assert agreement(reference, candidate, "detections") == 0.25
    # At 0.25 image 1's low-score candidate counts and reproduces its first row; its second row is new.
    assert agreement(reference, candidate, "detections", score_threshold=0.25) == 2 / 5
    assert agreement(reference, reference, "detections") == 1.0


def test_caffe_empty_rows_and_opencv_padding_are_not_detections():
    empty = rows([0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1])
    padded = rows([0, 1, 0.9, 0.1, 0.1, 0.3, 0.3], [0, 0, 0, 0, 0, 0, 0])
    assert sorted_detections(empty).shape == (0, 7)
    assert sorted_detections(padded).shape == (1, 7)
    assert agreement(empty, padded, "detections") == 1.0  # nothing to reproduce
    assert agreement(padded, empty, "detections") == 0.0


def test_relative_error_and_cosine_over_all_outputs_and_batches():
    rng = np.random.default_rng(0)
    a = {"x": rng.standard_normal((4, 3)), "y": rng.standard_normal((4, 5))}
    b = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in a.items()}
    flat_a, flat_b = (np.concatenate([d["x"].ravel(), d["y"].ravel()]) for d in (a, b))
    expected_error = np.linalg.norm(flat_a - flat_b) / np.linalg.norm(flat_a)
    expected_cosine = flat_a @ flat_b / np.linalg.norm(flat_a) / np.linalg.norm(flat_b)
    assert agreement(a, b, "rel-error") == pytest.approx(expected_error, rel=1e-12)
    assert agreement(a, b, "cosine") == pytest.approx(expected_cosine, rel=1e-12)
    tracker = AgreementTracker("rel-error")
    for half in (slice(0, 2), slice(2, 4)):  # the same figure from two batches
        tracker.update([a["x"][half], a["y"][half]], [b["x"][half], b["y"][half]])
    assert tracker.value() == pytest.approx(expected_error, rel=1e-12)
    assert agreement(np.zeros(3), np.zeros(3), "rel-error") == 0.0
    assert agreement(np.zeros(3), np.ones(3), "rel-error") == float("inf")
    with pytest.raises(CaffeSurgeryError, match="unknown agreement kind"):
        agreement(a, b, "top5")


@needs_real
def test_metric_choice_follows_the_net_and_the_labels():
    landmark = load_net(LANDMARK / "landmark106.prototxt")
    detector = load_net(YUNET / "yufacedetectnet-open-v1.prototxt")
    classifier = load_net(SAMPLE)
    assert choose_metric(landmark, has_labels=True) == "rel-error"  # a regression output is no classifier
    assert choose_metric(detector, has_labels=False) == "agreement"
    assert choose_metric(classifier, has_labels=True) == "top1"
    assert choose_metric(classifier, has_labels=False) == "rel-error"
    with pytest.raises(CaffeSurgeryError, match="the data has no labels"):
        choose_metric(landmark, has_labels=False, requested="top1")
    with pytest.raises(CaffeSurgeryError, match="needs a DetectionOutput output"):
        choose_metric(landmark, has_labels=True, requested="agreement")


# ---------------------------------------------------------------------------------- compare

def test_compare_json_and_tolerances(tmp_path, capsys):
    assert run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
               "--layers", "fc_3", "-o", tmp_path / "small")[0] == 0
    pair = (SAMPLE, SAMPLE_WEIGHTS, tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    code, out, _ = run(capsys, "compare", *pair, "--limit", "2", "--json")
    document = json.loads(out)
    assert code == 1 and not document["passed"]
    assert document["first_failing_output"] == "class_proba" and document["first_divergence"] == "fc_3"
    (output,) = document["outputs"]
    blob = next(b for b in document["blobs"] if b["name"] == "class_proba")
    assert output["max_abs"] == pytest.approx(blob["max_abs"]) and output["max_abs"] > 1e-3
    values_a, values_b = (Runtime(m.net, m.shapes).run(np.random.default_rng(0).standard_normal((2, 1, 28, 28))
                                                       .astype(np.float32))["class_proba"]
                          for m in (load_model(*pair[:2]), load_model(*pair[2:])))
    gap = np.abs(values_a - values_b)
    assert output["max_rel"] == pytest.approx((gap / np.abs(values_b)).max(), rel=1e-5)
    assert output["agreement"]["rel-error"] == pytest.approx(
        np.linalg.norm(values_a - values_b) / np.linalg.norm(values_a), rel=1e-5)
    # Loose enough tolerances pass: atol alone, or rtol alone.
    assert run(capsys, "compare", *pair, "--limit", "2", "--atol", str(gap.max() * 1.01), "--rtol", "0")[0] == 0
    assert run(capsys, "compare", *pair, "--limit", "2", "--atol", "0",
               "--rtol", str((gap / np.abs(values_b)).max() * 1.01))[0] == 0


@needs_real
def test_compare_detector_with_opencv_reports_agreement(capsys):
    pair = (YUNET / "yufacedetectnet-open-v1.prototxt", YUNET / "yufacedetectnet-open-v1.caffemodel")
    code, out, _ = run(capsys, "compare", *pair, *pair, "--backend", "opencv", "--json", "--score-threshold", "0.1")
    document = json.loads(out)
    (output,) = document["outputs"]
    assert code == 0 and output["passed"] and output["agreement"] == {"detections": 1.0}


# ------------------------------------------------------------------------------------ prune

@needs_real
def test_prune_tolerance_on_unlabelled_data_uses_the_relative_error(tmp_path, capsys):
    images = (np.random.default_rng(0).random((8, 3, 112, 112)) * 255).astype(np.float32)
    np.save(tmp_path / "faces.npy", images)
    net = (LANDMARK / "landmark106.prototxt", "-w", LANDMARK / "landmark106.caffemodel")
    common = ("--criterion", "activation-l2", "--data", f"npy:{tmp_path / 'faces.npy'}", "-o", tmp_path / "small")
    code, _, err = run(capsys, "prune", *net, *common, "--tolerance", "1", "--metric", "top1")
    assert code == 1 and "the data has no labels" in err
    code, out, _ = run(capsys, "prune", *net, *common, "--tolerance", "10")
    assert code == 0 and "top-1" not in out
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["agreement"]["metric"] == "rel-error"
    assert report["totals"]["params"][1] < report["totals"]["params"][0]  # something was removed
    original = load_model(LANDMARK / "landmark106.prototxt", LANDMARK / "landmark106.caffemodel")
    pruned = load_model(tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    a, b = (Runtime(m.net, m.shapes).run(images)[m.net.outputs()[0].key] for m in (original, pruned))
    error = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert report["agreement"]["rel-error"] == pytest.approx(error, rel=1e-4) and error <= 0.10


GRACE_HOPPER = next(iter(sorted(REPO.parent.glob("main/.venv/lib/python3*/site-packages/matplotlib/mpl-data/"
                                                 "sample_data/grace_hopper.jpg"))), None)


@needs_real
@pytest.mark.skipif(GRACE_HOPPER is None, reason="matplotlib's sample photo is absent")
def test_prune_detector_within_an_agreement_tolerance(tmp_path, capsys):
    """Real photos of a face (matplotlib's sample portrait, cropped): the pruned detector keeps its faces."""
    photo = cv2.imread(str(GRACE_HOPPER))
    crops = [cv2.resize(photo[top:top + 450, left:left + 480], (320, 240)) for top, left in ((0, 0), (150, 32))]
    images = np.stack([c.transpose(2, 0, 1) for c in crops + [c[:, ::-1] for c in crops]]).astype(np.float32)
    np.save(tmp_path / "faces.npy", images)
    code, out, _ = run(capsys, "prune", YUNET / "yufacedetectnet-open-v1.prototxt", "-w",
                       YUNET / "yufacedetectnet-open-v1.caffemodel", "--criterion", "activation-l2", "--tolerance", "5",
                       "--data", f"npy:{tmp_path / 'faces.npy'}", "--mean", "103.94,116.78,123.68",
                       "-o", tmp_path / "small")
    assert code == 0
    report = json.loads((tmp_path / "small.report.json").read_text())
    plan = json.loads((tmp_path / "small.plan.json").read_text())
    assert report["agreement"]["metric"] == "agreement" and plan["metric"] == "agreement"
    assert report["agreement"]["detections"] >= 0.95 and "of its detections" in out
    original = load_model(YUNET / "yufacedetectnet-open-v1.prototxt", YUNET / "yufacedetectnet-open-v1.caffemodel")
    pruned = load_model(tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    centered = images - np.array([103.94, 116.78, 123.68], np.float32).reshape(1, 3, 1, 1)
    for model in (original, pruned):  # a face in every photo, before and after
        found = sorted_detections(Runtime(model.net, model.shapes).run(centered)["detection_out"])
        assert set(found[found[:, 2] >= 0.5, 0]) == {0, 1, 2, 3}
    assert plan["curve"][-1]["accuracy"] < 0.95 or plan["curve"][-1]["ratio"] >= 0.95  # stopped by the tolerance


@needs_real
def test_eval_refuses_a_detector(tmp_path, capsys):
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 240, 320), np.float32))
    code, _, err = run(capsys, "eval", YUNET / "yufacedetectnet-open-v1.prototxt", "-w",
                       YUNET / "yufacedetectnet-open-v1.caffemodel", "--data", f"npy:{tmp_path / 'images.npy'}")
    assert code == 1 and "detection_out: a detector's output holds detections, not class scores" in err
