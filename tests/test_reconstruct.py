"""Least-squares reconstruction and bias compensation of the layers that read pruned channels."""
import json

import numpy as np
import pytest

from caffe_surgery.cli import main
from caffe_surgery.criteria import weight_l1
from caffe_surgery.data.arrays import ArraySource
from caffe_surgery.groups import build_groups
from caffe_surgery.reconstruct import (LeastSquares, accumulate, compensate, consumers, local_sums, reconstruct,
                                       weight_matrix)
from caffe_surgery.runtime import Runtime
from caffe_surgery.statistics import merge_files, save_arrays
from caffe_surgery.surgery import apply_plan
from caffe_surgery.thinet import greedy_order, thinet_scores
from conftest import REPO
from pruning_nets import INPUT, conv, ip, random_weights, simple

CPU = {"device": "cpu"}

# conv1 -> ReLU -> MAX pooling -> conv2 (stride 2, dilation 2) -> Flatten -> ip -> ReLU -> out
DEEP = (INPUT.format(n=4, c=3, h=12, w=12) + conv("conv1", "data", 6) + simple("ReLU", "relu1", "conv1")
        + simple("Pooling", "pool1", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        + 'layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" '
          'convolution_param { num_output: 5 kernel_size: 3 pad: 2 stride: 2 dilation: 2 } }\n'
        + simple("Flatten", "flat", "conv2", "flat") + ip("ip", "flat", 7) + simple("ReLU", "relu2", "ip")
        + ip("out", "ip", 3))

# linear: conv1 -> AVE pooling -> conv2 (pad 1) -> Flatten -> out
LINEAR = (INPUT.format(n=4, c=3, h=6, w=6) + conv("conv1", "data", 6)
          + simple("Pooling", "pool1", "conv1", "pool1", "pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
          + conv("conv2", "pool1", 4) + simple("Flatten", "flat", "conv2", "flat") + ip("out", "flat", 3))


def images(count, shape, seed=0):
    return np.random.default_rng(seed).standard_normal((count,) + shape).astype(np.float32)


def batches_of(x, size=16):
    return [(x[i:i + size], None) for i in range(0, len(x), size)]


def test_refit_with_nothing_removed_reproduces_the_weights():
    net, shapes = random_weights(DEEP, 0)
    layers = ["conv2", "ip", "out"]
    sums = accumulate(net, shapes, net, shapes, layers, batches_of(images(48, (3, 12, 12))), CPU)
    for name in layers:
        start = weight_matrix(net.layer(name))
        assert sums[name].relative_error(start) < 1e-10, f"{name}: rows reproduce the layer's outputs"
        np.testing.assert_allclose(sums[name].solve(start), start, rtol=1e-4, atol=1e-5, err_msg=name)


def test_removed_channels_that_are_combinations_of_kept_ones_are_recovered_exactly():
    net, shapes = random_weights(LINEAR, 1)
    conv1 = net.layer("conv1")
    for removed, (a, b, wa, wb) in {4: (0, 1, 1.0, 2.0), 5: (2, 3, -0.5, 1.5)}.items():
        for blob in conv1.blobs:
            blob[removed] = wa * blob[a] + wb * blob[b]
    groups = build_groups(net, shapes)
    keep = {groups.of_layer("conv1").id: np.arange(4)}
    x = images(64, (3, 6, 6), seed=2)
    pruned, pruned_shapes, refits, notes = reconstruct(net, shapes, groups, keep, local_sums(lambda: batches_of(x), CPU))
    assert [r.layer for r in refits] == ["conv2"] and not notes
    assert refits[0].error_before > 1e-2 and refits[0].error_after < 1e-9
    want = Runtime(net, shapes, **CPU).run(x)["out"]
    got = Runtime(pruned, pruned_shapes, **CPU).run(x)["out"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    plain, plain_shapes = apply_plan(net, shapes, groups, keep)
    assert np.abs(Runtime(plain, plain_shapes, **CPU).run(x)["out"] - want).max() > 1e-2 * np.abs(want).max()


def test_statistics_merged_from_shards_equal_one_pass(tmp_path):
    net, shapes = random_weights(DEEP, 3)
    x = images(40, (3, 12, 12), seed=4)
    layers = ["conv2", "ip"]
    whole = accumulate(net, shapes, net, shapes, layers, batches_of(x), CPU)
    parts = []
    for index, (lo, hi) in enumerate([(0, 16), (16, 40)]):
        part = accumulate(net, shapes, net, shapes, layers, batches_of(x[lo:hi], 8), CPU, first_index=lo)
        path = tmp_path / f"part_{index}.npz"
        save_arrays(path, {k: v for name in layers for k, v in part[name].to_arrays(name).items()})
        parts.append(path)
    merged = merge_files(parts)
    for name in layers:
        joined = LeastSquares.from_arrays(merged, name)
        assert joined.rows == whole[name].rows
        np.testing.assert_allclose(joined.gram, whole[name].gram, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(joined.cross, whole[name].cross, rtol=1e-9, atol=1e-9)
        assert joined.squares == pytest.approx(whole[name].squares, rel=1e-12)


def test_reconstruction_reduces_every_error_and_sequential_sees_the_refit_upstream():
    net, shapes = random_weights(DEEP, 5)
    groups = build_groups(net, shapes)
    keep = {groups.of_layer("conv1").id: np.array([0, 2, 5]), groups.of_layer("conv2").id: np.array([1, 2, 4]),
            groups.of_layer("ip").id: np.array([0, 1, 3, 6])}
    assert consumers(net, shapes, groups, keep) == (["conv2", "ip", "out"], [])
    x = images(64, (3, 12, 12), seed=6)
    results = {}
    for sequential in (True, False):
        *_, refits, _ = reconstruct(net, shapes, groups, keep, local_sums(lambda: batches_of(x), CPU),
                                    sequential=sequential)
        assert all(r.error_after < r.error_before for r in refits)
        results[sequential] = refits
    assert results[True][0].error_before == pytest.approx(results[False][0].error_before)
    assert results[True][1].error_before != pytest.approx(results[False][1].error_before)


# conv1 -> ReLU -> MAX pooling -> Flatten -> fc
FLATTENED = (INPUT.format(n=4, c=3, h=8, w=8) + conv("conv1", "data", 6) + simple("ReLU", "relu1", "conv1")
             + simple("Pooling", "pool1", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
             + simple("Flatten", "flat", "pool1", "flat") + ip("fc", "flat", 5))


def test_compensation_reaches_through_pooling_and_flatten():
    net, shapes = random_weights(FLATTENED, 7)
    conv1 = net.layer("conv1")
    conv1.blobs[0][3] = 0.0
    conv1.blobs[1][3] = 0.7  # a constant 0.7 after the ReLU and the pooling
    groups = build_groups(net, shapes)
    keep = {groups.of_layer("conv1").id: np.array([0, 1, 2, 4, 5])}
    x = images(8, (3, 8, 8), seed=8)
    adjusted, refits, notes = compensate(net, shapes, groups, keep, lambda: batches_of(x), runtime_options=CPU)
    assert [r.layer for r in refits] == ["fc"] and not notes
    assert refits[0].error_before > 1e-3 and refits[0].error_after < 1e-10
    pruned, pruned_shapes = apply_plan(adjusted, shapes, groups, keep)
    want = Runtime(net, shapes, **CPU).run(x)["fc"]
    np.testing.assert_allclose(Runtime(pruned, pruned_shapes, **CPU).run(x)["fc"], want, rtol=1e-4, atol=1e-4)


def test_prune_reconstruct_reports_the_refits(tmp_path):
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(9).random((96, 1, 28, 28)).astype(np.float32))
    prefix = tmp_path / "small"
    code = main(["prune", str(REPO / "samples" / "lenet_maxout.prototxt"), "-w",
                 str(REPO / "samples" / "lenet_maxout.caffemodel"), "--criterion", "weight-l1", "--ratio", "0.5",
                 "--data", f"npy:{data}", "--skip", "16", "--calib-limit", "64", "--reconstruct", "--device", "cpu",
                 "-o", str(prefix)])
    assert code == 0
    report = json.loads(prefix.with_suffix(".report.json").read_text())
    refits = {r["layer"]: r for r in report["refits"]}
    assert set(refits) == {"conv2", "fc_3", "fc_classes"}
    assert all(r["relative_error"][1] < r["relative_error"][0] for r in refits.values())
    assert refits["conv2"]["rows"] == 640 and refits["fc_3"]["rows"] == 64


def test_compensate_and_reconstruct_exclude_each_other(tmp_path, capsys):
    code = main(["prune", str(REPO / "samples" / "lenet_maxout.prototxt"), "-w",
                 str(REPO / "samples" / "lenet_maxout.caffemodel"), "--criterion", "weight-l1", "--ratio", "0.5",
                 "--reconstruct", "--compensate", "-o", str(tmp_path / "x")])
    assert code == 1 and "alternatives" in capsys.readouterr().err


def test_thinet_removes_the_channel_the_next_layer_barely_reads():
    net, shapes = random_weights(INPUT.format(n=4, c=6, h=1, w=1) + ip("ip1", "data", 4) + ip("ip2", "ip1", 3), 10)
    net.layer("ip1").blobs[0][2] *= 10.0   # the largest filter and activation ...
    net.layer("ip2").blobs[0][:, 2] *= 1e-3  # ... which the next layer hardly reads
    groups = build_groups(net, shapes)
    group = groups.of_layer("ip1")
    scores = thinet_scores(net, shapes, groups, [group], lambda: batches_of(images(32, (6, 1, 1), seed=11)), CPU)
    assert scores[group.id][2] == 0 and sorted(scores[group.id]) == [0, 1, 2, 3]
    assert np.argmax(weight_l1(net, groups, group, None)) == 2


def test_thinet_removes_cancelling_channels_together():
    contributions = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    np.testing.assert_array_equal(greedy_order(contributions), [1, 2, 0])


def test_skip_and_limit_take_a_range_of_samples():
    source = ArraySource(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10), "numbers")
    window = source.skip(3).head(4)
    _, labels = next(iter(window.iter_batches(10)))
    assert labels.tolist() == [3, 4, 5, 6] and len(source.skip(20)) == 0
