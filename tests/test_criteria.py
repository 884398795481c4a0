"""Relevance criteria on constructed cases with known answers, and mergeable statistics."""
import numpy as np
import pytest

from caffe_surgery.criteria import CRITERIA, get_criterion
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.groups import build_groups
from caffe_surgery.model import Model
from caffe_surgery.pruning import gather, plan_by_similarity, prune, score, statistics_plan
from caffe_surgery.runtime import Runtime
from caffe_surgery.selection import Budget, select
from caffe_surgery.statistics import ChannelStats, WinStats
from pruning_nets import NETS, random_weights


def test_win_counts_and_tie_rule():
    wins = WinStats(units=2, k=3)
    values = np.array([
        [[0.0, 0.0, 0.0], [1.0, 5.0, 2.0]],   # unit 0: all-zero tie credits nobody; unit 1: neuron 1 wins
        [[2.0, 2.0, 1.0], [0.5, 3.0, 3.0]],   # ties of two: half a win each
        [[0.0, 0.0, 4.0], [9.0, 0.0, 0.0]],
    ])
    wins.update(values)
    expected = np.array([[0.5, 0.5, 1.0], [1.0, 1.5, 0.5]]) / 3
    np.testing.assert_allclose(wins.frequency(), expected)
    assert wins.sole[0, 0] == 0, "an all-zero unit must not credit neuron 0"


def test_channel_stats_apoz_of_always_negative_channel_is_one():
    stats = ChannelStats(3)
    rng = np.random.default_rng(0)
    batch = rng.random((4, 3, 5, 5))
    batch[:, 1] = -rng.random((4, 5, 5)) - 0.1
    stats.update(batch)
    assert stats.zero_fraction()[1] == 1.0 and stats.zero_fraction()[0] == 0.0
    np.testing.assert_allclose(stats.mean(), batch.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(stats.mean_square(), (batch ** 2).mean(axis=(0, 2, 3)))


def _model(name, seed=0):
    net, shapes = random_weights(NETS[name], seed)
    return Model(net, shapes)


def test_weight_norms_by_hand():
    model = _model("residual_concat_slice")
    groups = build_groups(model.net, model.shapes)
    group = groups.of_layer("left")
    weight = model.net.layer("left").blobs[0]
    np.testing.assert_allclose(get_criterion("weight-l1").score(model.net, groups, group, None),
                               np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1), rtol=1e-6)
    coupled = groups.of_layer("stem")  # stem and res_b are summed: one group, norms add up per channel
    expected = sum((model.net.layer(n).blobs[0].reshape(8, -1).astype(np.float64) ** 2).sum(axis=1)
                   for n in ("stem", "res_b"))
    np.testing.assert_allclose(get_criterion("weight-l2").score(model.net, groups, coupled, None), np.sqrt(expected))


def test_maxout_wins_a_neuron_that_never_wins_has_relevance_zero():
    model = _model("maxout_eltwise_branches")
    model.net.layer("branch2").blobs[1][:] = -1e6  # branch 2 can never be a unit's maximum
    groups = build_groups(model.net, model.shapes)
    group = groups.of_layer("branch0")
    stats = statistics_plan(model, groups, [group], get_criterion("maxout-wins"))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3, 6, 6)).astype(np.float32), np.zeros(4)) for _ in range(3)]
    gather(model, stats, groups, batches, {"device": "cpu"})
    scores = get_criterion("maxout-wins").score(model.net, groups, group, stats)
    assert np.all(scores[group.maxout.neurons[:, 2]] == 0)
    assert np.all(scores[group.maxout.neurons[:, :2]].sum(axis=1) <= 1.0 + 1e-12)
    kept = select([group], {group.id: scores}, Budget(maxout_k=2))[group.id]
    assert not np.isin(group.maxout.neurons[:, 2], kept).any()


def test_activation_statistics_equal_numpy_on_the_tapped_blob():
    model = _model("grouped_depthwise_bn")
    groups = build_groups(model.net, model.shapes)
    group = groups.of_layer("conv1")
    stats = statistics_plan(model, groups, [group], get_criterion("apoz"))
    assert stats.kinds == ("sum", "zeros"), "only the reductions the criterion (and compensation) read"
    (tap,) = stats.taps.values()
    assert tap.key == "conv1@prelu1", "statistics are taken after the per-channel layers, at the activation"
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((3, 4, 11, 11)).astype(np.float32) for _ in range(2)]
    gather(model, stats, groups, [(x, None) for x in images], {"device": "cpu"})
    runtime = Runtime(model.net, model.shapes, taps=[tap])
    activations = np.concatenate([runtime.run(x)[tap.key] for x in images])
    np.testing.assert_allclose(score(model, groups, [group], get_criterion("mean-activation"), stats)[group.id],
                               activations.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score(model, groups, [group], get_criterion("apoz"), stats)[group.id],
                               1 - (activations <= 0).mean(axis=(0, 2, 3)))
    with pytest.raises(CaffeSurgeryError, match="hold no 'squares' per channel"):
        score(model, groups, [group], get_criterion("activation-l2"), stats)


SIMILAR = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 5 dim: 6 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 6 } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 3 } }
"""


def test_similarity_identical_neurons_merge_without_changing_outputs():
    net, shapes = random_weights(SIMILAR, 0)
    fc1 = net.layer("fc1")
    fc1.blobs[0][4] = fc1.blobs[0][1]
    fc1.blobs[1][4] = fc1.blobs[1][1]
    model = Model(net, shapes)
    groups = build_groups(net, shapes)
    plan, merged, notes = plan_by_similarity(model, groups, [groups.of_layer("fc1")], Budget(keep=5))
    assert plan.keep["fc1"] in ([0, 1, 2, 3, 5], [0, 2, 3, 4, 5]), "one of the twins goes"
    assert "largest saliency 0" in notes[0]
    pruned = prune(model, plan, merged)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    before = Runtime(net, shapes).run(x)["fc2"]
    after = Runtime(pruned.net, pruned.shapes).run(x)["fc2"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_similarity_refuses_where_it_does_not_apply():
    model = _model("maxout_reshape_pool")
    groups = build_groups(model.net, model.shapes)
    with pytest.raises(CaffeSurgeryError, match="conv1: similarity applies to InnerProduct layers, not Convolution"):
        plan_by_similarity(model, groups, [groups.of_layer("conv1")], Budget(ratio=0.5))
    with pytest.raises(CaffeSurgeryError, match="not to a coupled or maxout group"):
        plan_by_similarity(model, groups, [groups.of_layer("fc_3")], Budget(ratio=0.5))


def test_selection_ratio_round_to_min_keep_and_chunks():
    model = _model("grouped_depthwise_bn")
    groups = build_groups(model.net, model.shapes)
    conv1, conv2, pw4 = groups.of_layer("conv1"), groups.of_layer("conv2"), groups.of_layer("pw4")
    assert (conv1.chunks, conv2.chunks, pw4.chunks) == (2, 2, 1), "conv1 feeds and conv2 is a 2-group convolution"
    scores = {conv1.id: np.arange(8.0), conv2.id: np.array([5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4.0]),
              pw4.id: np.array([3, 1, 4, 1.5, 5, 9])}
    kept = select([conv1, conv2, pw4], scores, Budget(ratio=0.5))
    assert kept[conv1.id].tolist() == [2, 3, 6, 7], "the best 2 of each half"
    assert kept[conv2.id].tolist() == [0, 1, 2, 6, 7, 8], "3 per convolution group, the best of each"
    assert kept[pw4.id].tolist() == [2, 4, 5]
    assert select([pw4], scores, Budget(ratio=0.9, min_keep=2))[pw4.id].tolist() == [4, 5]
    assert select([pw4], scores, Budget(ratio=0.9, round_to=4))[pw4.id].tolist() == [0, 2, 4, 5]
    assert select([pw4], scores, Budget(keep=1))[pw4.id].tolist() == [5]
    assert select([pw4], scores, Budget(ratio=0.5, overrides={"pw4": 0.2}))[pw4.id].size == 5


def test_every_criterion_is_listed_with_a_summary():
    assert {"maxout-wins", "mean-activation", "apoz", "activation-l2", "weight-l1", "weight-l2", "similarity",
            "random-masks"} <= set(CRITERIA)
    with pytest.raises(CaffeSurgeryError, match="unknown criterion 'nope'"):
        get_criterion("nope")
