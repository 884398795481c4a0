"""The pruning pipeline's data-driven modes: bias compensation, random masks, the accuracy tolerance."""
import numpy as np
import pytest

from caffe_surgery import caffe_pb2
from caffe_surgery.cli import main
from caffe_surgery.criteria import get_criterion
from caffe_surgery.data import Transformer, idx_source
from caffe_surgery.evaluate import evaluate
from caffe_surgery.groups import build_groups
from caffe_surgery.model import Model, load_model
from caffe_surgery.pruning import gather, prune, random_masks_plan, score, statistics_plan, tolerance_plan
from caffe_surgery.reconstruct import compensate
from caffe_surgery.runtime import Runtime
from caffe_surgery.selection import Budget
from caffe_surgery.surgery import apply_plan
from conftest import FASHION_MNIST, REPO
from pruning_nets import random_weights

DEAD_FILTER = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 7 dim: 7 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_compensation_removes_a_dead_filter_without_shifting_the_next_layer():
    net, shapes = random_weights(DEAD_FILTER, 0)
    conv1 = net.layer("conv1")
    conv1.blobs[0][2] = 0.0
    conv1.blobs[1][2] = 0.7  # a constant 0.7 after the ReLU, everywhere
    model = Model(net, shapes)
    groups = build_groups(net, shapes)
    group = groups.of_layer("conv1")
    stats = statistics_plan(model, groups, [group], get_criterion("mean-activation"))
    x = np.random.default_rng(0).standard_normal((4, 2, 7, 7)).astype(np.float32)
    gather(model, stats, groups, [(x, None)], {"device": "cpu"})
    assert stats.channels["conv1@relu1"].mean()[2] == pytest.approx(0.7)
    keep = {group.id: np.array([0, 1, 3, 4])}
    adjusted, refits, notes = compensate(net, shapes, groups, keep, lambda: [(x, None)],
                                         runtime_options={"device": "cpu"})
    assert notes == [] and [r.layer for r in refits] == ["fc"]
    assert refits[0].error_before > 1e-3 and refits[0].error_after < 1e-10
    pruned, pruned_shapes = apply_plan(adjusted, shapes, groups, keep)
    plain, plain_shapes = apply_plan(net, shapes, groups, keep)
    want = Runtime(net, shapes).run(x)["fc"]
    np.testing.assert_allclose(Runtime(pruned, pruned_shapes).run(x)["fc"], want, rtol=1e-5, atol=1e-5)
    assert np.abs(Runtime(plain, plain_shapes).run(x)["fc"] - want).max() > 1e-2, "without compensation it shifts"


needs_data = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def sample_on_fashion_mnist():
    model = load_model(REPO / "samples" / "lenet_maxout.prototxt", REPO / "samples" / "lenet_maxout.caffemodel")
    transform = caffe_pb2.TransformationParameter(scale=1 / 256)
    source = idx_source(str(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"), str(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"),
                        Transformer(transform)).head(256)
    batches = list(source.iter_batches(64))

    def accuracy(net, shapes):
        return evaluate(net, shapes, batches, (1,), {"device": "cpu"}).accuracy(1)

    return model, accuracy


@needs_data
def test_random_masks_keeps_the_most_accurate_mask(sample_on_fashion_mnist):
    model, accuracy = sample_on_fashion_mnist
    groups = build_groups(model.net, model.shapes)
    group_list = [groups.of_layer("conv1"), groups.of_layer("conv2")]
    plan, accuracies = random_masks_plan(model, groups, group_list, Budget(ratio=0.5), accuracy, 5, seed=1)
    assert len(accuracies) == 5 and len(plan.keep["conv1"]) == 10 and len(plan.keep["conv2"]) == 26
    pruned = prune(model, plan)
    assert accuracy(pruned.net, pruned.shapes) == max(accuracies)


@needs_data
@pytest.mark.parametrize("tolerance", [1.0, 5.0])
def test_tolerance_stops_before_the_drop_exceeds_it(sample_on_fashion_mnist, tolerance):
    model, accuracy = sample_on_fashion_mnist
    groups = build_groups(model.net, model.shapes)
    group_list = groups.prunable()
    scores = score(model, groups, group_list, get_criterion("weight-l1"), None)
    plan, curve = tolerance_plan(model, groups, group_list, scores, Budget(), accuracy, tolerance, step=0.1)
    baseline = curve[0]["accuracy"]
    accepted = [point for point in curve[1:] if 100 * (baseline - point["accuracy"]) <= tolerance]
    assert plan.keep, "the sample prunes at least one step (10 %) within 1 point"
    pruned = prune(model, plan)
    assert 100 * (baseline - accuracy(pruned.net, pruned.shapes)) <= tolerance
    assert pruned.shapes.totals()[0] == accepted[-1]["params"]
    last = curve[-1]
    assert last["ratio"] >= 0.9 or 100 * (baseline - last["accuracy"]) > tolerance
    assert [p["params"] for p in curve] == sorted((p["params"] for p in curve), reverse=True)


@needs_data
def test_prune_cli_reports_accuracy_before_and_after(tmp_path, capsys):
    spec = f"idx:{FASHION_MNIST / 't10k-images-idx3-ubyte.gz'}:{FASHION_MNIST / 't10k-labels-idx1-ubyte.gz'}"
    code = main(["prune", str(REPO / "samples" / "lenet_maxout.prototxt"), "-w",
                 str(REPO / "samples" / "lenet_maxout.caffemodel"), "--criterion", "apoz", "--ratio", "0.3",
                 "--data", spec, "--scale", "0.00390625", "--limit", "128", "--protect", "conv1",
                 "-o", str(tmp_path / "apoz")])
    out = capsys.readouterr().out
    assert code == 0 and "top-1 accuracy" in out and "on 128 samples" in out
    plan = (tmp_path / "apoz.plan.json").read_text()
    assert '"conv1"' not in plan and '"conv2"' in plan
