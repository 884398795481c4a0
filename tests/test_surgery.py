"""Exactness of surgery: the pruned net equals the original with the removed channels switched off.

Both nets are written to prototxt/caffemodel files and run by OpenCV's own
Caffe importer, an independent consumer, and both run in onnxruntime.
Tolerance: 1e-5 relative to max(1, max |reference|).
"""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.errors import PlanError
from caffe_surgery.graph import build_net
from caffe_surgery.groups import build_groups
from caffe_surgery.model import load_model
from caffe_surgery.plan import Plan, resolve_plan
from caffe_surgery.runtime import Runtime
from caffe_surgery.save import save_caffemodel, save_prototxt
from caffe_surgery.shapes import infer_shapes
from caffe_surgery.surgery import apply_plan
from conftest import REAL_MODELS, REFERENCE
from opencv_layers import fork_layers
from oracle import masked_copy, random_keep, switch_off
from pruning_nets import NETS, random_weights

cv2 = pytest.importorskip("cv2")
TOLERANCE = 1e-5

REAL_PAIRS = [
    ("lenet_v1_everpeace/lenet.prototxt", "lenet_v1_everpeace/lenet_iter_10000.caffemodel"),
    ("cifar10_quick_v1_everpeace/cifar10_quick.prototxt", "cifar10_quick_v1_everpeace/cifar10_quick_iter_5000.caffemodel"),
    ("cifar10_full_v1_everpeace/cifar10_full.prototxt", "cifar10_full_v1_everpeace/cifar10_full_iter_70000.caffemodel"),
    ("mtcnn_det1/det1.prototxt", "mtcnn_det1/det1.caffemodel"),
    ("mtcnn_det2/det2.prototxt", "mtcnn_det2/det2.caffemodel"),
    ("ultraface_slim320/slim-320.prototxt", "ultraface_slim320/slim-320.caffemodel"),
    ("landmark106_dq/landmark106.prototxt", "landmark106_dq/landmark106.caffemodel"),
    ("yoloface500k_v2/yoloface-500k-v2.prototxt", "yoloface500k_v2/yoloface-500k-v2.caffemodel"),
]


def _opencv_forward(net, directory, name, inputs, outputs):
    save_prototxt(net, directory / f"{name}.prototxt")
    save_caffemodel(net, directory / f"{name}.caffemodel")
    with fork_layers():
        loaded = cv2.dnn.readNetFromCaffe(str(directory / f"{name}.prototxt"), str(directory / f"{name}.caffemodel"))
        for blob, value in inputs.items():
            loaded.setInput(value, blob)
        return loaded.forward(outputs)


def _assert_exact(net, shapes, keep, directory, seed=0):
    groups = build_groups(net, shapes)
    pruned, pruned_shapes = apply_plan(net, shapes, groups, keep)
    masked = masked_copy(net, switch_off(net, shapes, groups, keep))
    rng = np.random.default_rng(seed)
    inputs = {top.name: rng.standard_normal(shapes.blob(top)).astype(np.float32)
              for layer in net.layers if not layer.bottoms for top in layer.tops}
    outputs = [o.name for o in net.outputs()]
    got = _opencv_forward(pruned, directory, "pruned", inputs, outputs)
    want = _opencv_forward(masked, directory, "masked", inputs, outputs)
    for name, a, b in zip(outputs, got, want):
        assert a.shape == b.shape, name
        assert np.abs(a - b).max() <= TOLERANCE * max(1.0, np.abs(b).max()), name
    got = Runtime(pruned, pruned_shapes, device="cpu").run(inputs)
    want = Runtime(masked, shapes, device="cpu").run(inputs)
    for key in (o.key for o in net.outputs()):
        assert np.abs(got[key] - want[key]).max() <= TOLERANCE * max(1.0, np.abs(want[key]).max()), key
    assert pruned_shapes.totals()[0] < shapes.totals()[0]
    return pruned, pruned_shapes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(NETS))
def test_random_plans_on_generated_nets_are_exact(name, seed, tmp_path):
    net, shapes = random_weights(NETS[name], seed)
    groups = build_groups(net, shapes)
    assert groups.prunable(), "every corpus net has something to prune"
    _assert_exact(net, shapes, random_keep(groups, np.random.default_rng(seed)), tmp_path, seed)


@pytest.mark.parametrize("prototxt, weights", REAL_PAIRS, ids=lambda p: p.split("/")[0] if "/" in p else p)
def test_random_plans_on_real_models_are_exact(prototxt, weights, tmp_path):
    model = load_model(REAL_MODELS / prototxt, REAL_MODELS / weights)
    groups = build_groups(model.net, model.shapes)
    _assert_exact(model.net, model.shapes, random_keep(groups, np.random.default_rng(7), 0.6), tmp_path)


def test_switching_off_changes_the_output(tmp_path):
    """The oracle is not vacuous: the masked net differs from the original."""
    net, shapes = random_weights(NETS["residual_concat_slice"], 0)
    groups = build_groups(net, shapes)
    keep = random_keep(groups, np.random.default_rng(0))
    x = {"data": np.random.default_rng(0).standard_normal(shapes.blob(net.layers[0].tops[0])).astype(np.float32)}
    original = _opencv_forward(net, tmp_path, "original", x, ["out"])[0]
    masked = _opencv_forward(masked_copy(net, switch_off(net, shapes, groups, keep)), tmp_path, "masked", x, ["out"])[0]
    assert np.abs(original - masked).max() > 1e-3


def _reference_lenet():
    """The reference maxout LeNet test net with an Input layer instead of its LMDB Data layer."""
    text = (REFERENCE / "mnist_test_0.prototxt").read_text()
    message = text_format.Parse(text, caffe_pb2.NetParameter())
    data = message.layer[0]
    data.Clear()
    data.name, data.type = "images", "Input"
    data.top.extend(["images", "label"])
    data.input_param.shape.add().dim.extend([1, 1, 28, 28])
    data.input_param.shape.add().dim.extend([1])
    return build_net(message)


def test_reference_lenet_maxout_rows_follow_units():
    net = _reference_lenet()
    shapes = infer_shapes(net)
    rng = np.random.default_rng(3)
    for layer in net.layers:
        layer.blobs = [rng.standard_normal(s).astype(np.float32) for s in shapes.layer(layer.name).param_shapes or []]
    groups = build_groups(net, shapes)
    group = groups.of_layer("fc_3")
    assert group.maxout.form == "reshape-pool" and (group.maxout.units, group.maxout.k) == (64, 4)
    dropped = rng.integers(0, 4, size=64)  # the neuron each unit loses
    kept = [u * 4 + p for u in range(64) for p in range(4) if p != dropped[u]]
    resolved = resolve_plan(Plan({"fc_3": kept}), net, groups)
    pruned, pruned_shapes = apply_plan(net, shapes, groups, resolved)
    new_weights = pruned.layer("fc_3").blobs[0]
    old_weights = net.layer("fc_3").blobs[0]
    for unit in range(64):
        survivors = [p for p in range(4) if p != dropped[unit]]
        for j, p in enumerate(survivors):
            np.testing.assert_array_equal(new_weights[unit * 3 + j], old_weights[unit * 4 + p])
    assert list(pruned.layer("premax").param.reshape_param.shape.dim) == [1, 64, 3, 1]
    assert pruned.layer("fc_3").param.inner_product_param.num_output == 192
    assert pruned_shapes.totals()[0] == 187_158
    np.testing.assert_array_equal(pruned.layer("fc_classes").blobs[0], net.layer("fc_classes").blobs[0])


@pytest.mark.parametrize("keep, message", [
    ({"nope": [0]}, "plan names a layer that is not in the net"),
    ({"relu1": [0]}, "does not open a channel group"),
    ({"conv1": []}, "keeps no channel"),
    ({"conv1": [0, 8]}, "index 8 is out of range for 8 channels"),
    ({"conv1": [1, 1]}, "lists an index twice"),
    ({"out": [0]}, "cannot be pruned: feeds net output 'out'"),
    ({"branch0": [0, 1, 3, 4, 5]}, "maxout units would keep different numbers of neurons"),
    ({"branch0": [0, 1], "branch1": [0, 2]}, "different indices for 'branch0' and 'branch1'"),
])
def test_bad_plans_are_clear_errors(keep, message):
    net, shapes = random_weights(NETS["maxout_eltwise_branches"], 0)
    with pytest.raises(PlanError, match=message):
        resolve_plan(Plan(keep), net, build_groups(net, shapes))


def test_grouped_convolution_keeps_groups_even():
    net, shapes = random_weights(NETS["grouped_depthwise_bn"], 0)
    with pytest.raises(PlanError, match=r"same number of channels kept in each of its 2 groups, the plan keeps \[3, 1\]"):
        resolve_plan(Plan({"conv2": [0, 1, 2, 7]}), net, build_groups(net, shapes))


def test_plan_round_trip(tmp_path):
    plan = Plan({"conv1": [0, 3], "fc": [1]}, about={"criterion": "weight-l1", "ratio": 0.5})
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan
    (tmp_path / "bad.json").write_text('{"version": 2, "keep": {}}')
    with pytest.raises(PlanError, match="bad.json: not a plan of version 1"):
        Plan.load(tmp_path / "bad.json")
