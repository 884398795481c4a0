"""The layer types of OpenCV's factory that a Caffe file can configure (Resize, Reduce, Shift, GRU, MaxUnpool,
CropAndResize): each on a generated net, exported and run in onnxruntime against OpenCV's Caffe importer
(numpy where OpenCV departs), through info/check, pruning and torch; and Padding, which no Caffe file can
configure in OpenCV."""
import dataclasses
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffe_surgery import layers
from caffe_surgery.cli import main
from caffe_surgery.graph import TEST
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx, graph_outputs
from netgen import Feed, write_net
from test_layer_types import info_error


def _input(name: str, *shape: int) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _layer(name: str, kind: str, bottoms: str, params: str = "") -> str:
    """A layer whose top is its name; ``bottoms`` space-separated."""
    wired = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "{name}" type: "{kind}" {wired} top: "{name}" {params} }}\n'


RESIZE = _input("data", 1, 3, 7, 6) + _input("like", 1, 1, 4, 9) + "".join(
    _layer(name, "Resize", bottoms, f"resize_param {{ {params} }}") for name, bottoms, params in [
        ("nearest", "data", "interpolation: nearest height: 5 width: 11"),
        ("nearest_corners", "data", "interpolation: nearest height: 5 width: 11 align_corners: 1"),
        ("nearest_half", "data", "interpolation: nearest height: 9 width: 4 half_pixel_centers: 1"),
        ("bilinear", "data", "interpolation: bilinear height: 5 width: 11"),
        ("corners", "data", "interpolation: bilinear height: 13 width: 4 align_corners: 1"),
        ("half", "data", "interpolation: bilinear height: 1 width: 11 half_pixel_centers: 1"),
        ("cv_linear", "data", "interpolation: opencv_linear height: 5 width: 8"),
        ("zoom", "data", "interpolation: bilinear zoom_factor: 1.5"),
        ("zoom_xy", "data", "interpolation: nearest zoom_factor_x: 2 zoom_factor_y: 3"),
        ("like_other", "data like", "interpolation: bilinear"),
    ])

REDUCE = _input("data", 2, 3, 4, 5) + "".join(
    f'layer {{ name: "{kind.lower()}" type: "Reduce" bottom: "data" top: "{kind.lower()}" '
    f'reduce_param {{ reduce: {kind} axes: {axis} keepdims: {keep} }} }}\n'
    for kind, axis, keep in [("MAX", 1, 1), ("MIN", 2, 0), ("MEAN", 3, 1), ("SUM", 3, 0), ("L1", 1, 0), ("L2", 2, 1),
                             ("PROD", 3, 0), ("SUM_SQUARE", 1, 1), ("LOG_SUM", 2, 0), ("LOG_SUM_EXP", 0, 0)]
) + 'layer { name: "everything" type: "Reduce" bottom: "data" top: "everything" reduce_param { reduce: sum } }\n'

SHIFT = _input("data", 1, 3, 5, 4) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "shift" type: "Shift" bottom: "conv" top: "shift" }
"""

GRU = _input("data", 6, 2, 4) + """
layer { name: "gru" type: "GRU" bottom: "data" top: "gru" recurrent_param { num_output: 5 } }
layer { name: "both_ways" type: "GRU" bottom: "gru" top: "both_ways" recurrent_param { num_output: 3 } gru_param { bidirectional: 1 } }
"""

MAX_UNPOOL = _input("data", 1, 3, 7, 9) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "unpool" type: "MaxUnpool" bottom: "pool" bottom: "mask" top: "unpool"
        unpool_param { pool_k_h: 3 pool_k_w: 3 pool_stride_h: 2 pool_stride_w: 2 pool_pad_h: 1 pool_pad_w: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv" top: "pool2" top: "mask2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool2" type: "MaxUnpool" bottom: "pool2" bottom: "mask2" top: "unpool2"
        unpool_param { pool_k_h: 2 pool_k_w: 2 pool_stride_h: 2 pool_stride_w: 2 pool_pad_h: 0 pool_pad_w: 0 } }
"""

CROP_AND_RESIZE = _input("data", 1, 3, 7, 9) + _input("boxes", 1, 1, 4, 7) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "crop" type: "CropAndResize" bottom: "conv" bottom: "boxes" top: "crop" crop_and_resize_param { height: 5 width: 3 } }
"""

NETS = {
    "resize": (RESIZE, {"data": Feed((1, 3, 7, 6)), "like": Feed((1, 1, 4, 9))}),
    "reduce": (REDUCE, {"data": Feed((2, 3, 4, 5), 0.2, 1.5)}),
    "shift": (SHIFT, {"data": Feed((1, 3, 5, 4))}),
    "gru": (GRU, {"data": Feed((6, 2, 4))}),
    "max_unpool": (MAX_UNPOOL, {"data": Feed((1, 3, 7, 9))}),
    # Box corners inside [0, 1] (OpenCV reads outside its image otherwise), in either order.
    "crop_and_resize": (CROP_AND_RESIZE, {"data": Feed((1, 3, 7, 9)), "boxes": Feed((1, 1, 4, 7), 0.0, 1.0)}),
}
"""A generated net per type: prototxt text and feeds."""


def generated(name: str, directory, seed: int = 0):
    text, feeds = NETS[name]
    return write_net(text, directory, name, feeds=feeds, seed=seed)


def draw(name: str, net, seed: int = 1) -> dict:
    return net.inputs(np.random.default_rng(seed))


def tapped_layers(model) -> list:
    """Every non-data layer of the net (its first top is tapped)."""
    return [layer for layer in model.net.layers if not layers.is_data(layer.type)]


def export_and_run(model, taps, feeds) -> dict:
    """The fixed-batch export (full checker and strict shape inference), run in onnxruntime; by blob key."""
    exported = export_onnx(model.net, model.shapes, taps=taps)
    onnx.checker.check_model(exported, full_check=True)
    onnx.shape_inference.infer_shapes(exported, check_type=True, strict_mode=True)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    versions = graph_outputs(model.net, taps)
    values = session.run([v.name for v in versions], feeds)
    return {v.key: value for v, value in zip(versions, values)}


def opencv_forward(net, feeds: dict, layer_names: list[str]) -> dict:
    """OpenCV's Caffe importer on the written pair: each named layer's first top."""
    cv_net = cv2.dnn.readNetFromCaffe(str(net.prototxt), str(net.caffemodel))
    for name, value in feeds.items():
        cv_net.setInput(value, name)
    return dict(zip(layer_names, cv_net.forward(layer_names)))


def assert_close(actual, reference, what: str) -> None:
    """max |difference| <= 1e-4 * max(1, max |reference|), same number of values."""
    reference = np.asarray(reference, dtype=np.float32)
    assert actual.size == reference.size, f"{what}: {actual.shape} vs {reference.shape}"
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(actual.ravel() - reference.ravel()).max())
    assert error <= tolerance, f"{what}: max difference {error:.3g} exceeds {tolerance:.3g}"


# ------------------------------------------------------------------ export against OpenCV

@pytest.mark.parametrize("name", sorted(NETS))
def test_export_matches_opencv(name, tmp_path):
    net = generated(name, tmp_path)
    model = load_model(net.prototxt, net.caffemodel)
    feeds = draw(name, net)
    chosen = tapped_layers(model)
    got = export_and_run(model, [layer.tops[0] for layer in chosen], feeds)
    references = opencv_forward(net, feeds, [layer.name for layer in chosen])
    for layer in chosen:
        assert_close(got[layer.tops[0].key], references[layer.name], f"{name}: {layer.name}")


def test_reduce_over_a_size_one_axis_departs_in_opencv_and_follows_numpy(tmp_path):
    """OpenCV's Reduce returns its input unchanged when the reduced axis has size 1 (the declared departure);
    the export computes the reduction (numpy reference)."""
    text = _input("data", 1, 3, 4, 5) + "".join(
        f'layer {{ name: "{kind.lower()}" type: "Reduce" bottom: "data" top: "{kind.lower()}" '
        f'reduce_param {{ reduce: {kind} axes: 0 }} }}\n' for kind in ("L2", "SUM_SQUARE", "LOG_SUM_EXP"))
    net = write_net(text, tmp_path, feeds={"data": Feed((1, 3, 4, 5))})
    model = load_model(net.prototxt, net.caffemodel)
    assert all(layers.lookup("Reduce").departures_for(layer) for layer in tapped_layers(model))
    feeds = net.inputs(np.random.default_rng(2))
    x = feeds["data"].astype(np.float64)
    references = {"l2": np.abs(x), "sum_square": x ** 2, "log_sum_exp": x}
    got = export_and_run(model, [layer.tops[0] for layer in tapped_layers(model)], feeds)
    opencv = opencv_forward(net, feeds, list(references))
    for name, reference in references.items():
        assert_close(got[name], reference, name)
        assert np.array_equal(opencv[name], feeds["data"]), f"OpenCV now reduces {name} over a size-1 axis"


def test_max_unpool_at_batch_two_matches_opencv_image_by_image(tmp_path):
    """OpenCV's MaxUnpool runs one image: a batch of two exported at once equals OpenCV's forward of each
    image alone."""
    text = MAX_UNPOOL.replace("dim: 1 dim: 3 dim: 7 dim: 9", "dim: 2 dim: 3 dim: 7 dim: 9")
    net = write_net(text, tmp_path, feeds={"data": Feed((2, 3, 7, 9))})
    model = load_model(net.prototxt, net.caffemodel)
    x = net.inputs(np.random.default_rng(3))["data"]
    got = export_and_run(model, [model.net.final("unpool"), model.net.final("unpool2")], {"data": x})
    for name in ("unpool", "unpool2"):
        for image in range(2):
            reference = opencv_forward(net, {"data": x[image:image + 1]}, [name])[name]
            assert_close(got[name][image:image + 1], reference, f"{name} image {image}")


# ------------------------------------------------------------------ info, check, pruning

def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(NETS))
def test_info_and_check_read_the_net(name, tmp_path, capsys):
    net = generated(name, tmp_path)
    code, out, err = run(capsys, "info", net.prototxt, "-w", net.caffemodel)
    assert code == 0, err
    model = load_model(net.prototxt, net.caffemodel)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for layer in tapped_layers(model):
        shape = "x".join(map(str, model.shapes.blob(layer.tops[0]))) or "scalar"
        assert rows[layer.name][1] == layer.type and shape in rows[layer.name], rows[layer.name]
    code, out, err = run(capsys, "check", net.prototxt, "-w", net.caffemodel)
    assert code == 0 and out.startswith("ok:"), out + err


FORK_BLOCKS = {"resize": "resize_param", "reduce": "reduce_param", "max_unpool": "unpool_param",
               "crop_and_resize": "crop_and_resize_param", "gru": "gru_param"}


@pytest.mark.parametrize("name", sorted(NETS))
def test_upgrade_keeps_the_fork_blocks_and_opencv_reads_the_result_alike(name, tmp_path, capsys):
    net = generated(name, tmp_path)
    code, _, err = run(capsys, "upgrade", net.prototxt, tmp_path / "up.prototxt", "-w", net.caffemodel,
                       "-o", tmp_path / "up.caffemodel")
    assert code == 0, err
    written = (tmp_path / "up.prototxt").read_text()
    assert written.count(FORK_BLOCKS.get(name, "type:")) == net.prototxt.read_text().count(FORK_BLOCKS.get(name, "type:"))
    feeds = draw(name, net)
    names = [layer.name for layer in tapped_layers(load_model(net.prototxt))]
    before = opencv_forward(net, feeds, names)
    after = opencv_forward(dataclasses.replace(net, prototxt=tmp_path / "up.prototxt",
                                               caffemodel=tmp_path / "up.caffemodel"), feeds, names)
    for layer in names:
        assert np.array_equal(before[layer], after[layer]), layer


@pytest.mark.parametrize("name", ["max_unpool", "reduce", "shift"])
@pytest.mark.parametrize("backend", ["onnxruntime", "opencv"])
def test_compare_runs_the_net_against_its_upgrade_on_both_backends(name, backend, tmp_path, capsys, caplog):
    net = generated(name, tmp_path)
    np.save(tmp_path / "data.npy", np.concatenate([draw(name, net, seed)["data"] for seed in range(3)]))
    assert run(capsys, "upgrade", net.prototxt, tmp_path / "up.prototxt", "-w", net.caffemodel,
               "-o", tmp_path / "up.caffemodel")[0] == 0
    code, out, err = run(capsys, "compare", "--backend", backend, net.prototxt, net.caffemodel,
                         tmp_path / "up.prototxt", tmp_path / "up.caffemodel", "--data", f"npy:{tmp_path / 'data.npy'}",
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    blobs = report["blobs"]
    assert report["passed"] and blobs and all(b["max_abs"] <= 1e-5 for b in blobs)
    compared = {b["name"] for b in blobs}
    if name == "max_unpool":  # a Pooling's mask, its second top: compared in onnxruntime, named as left out on OpenCV
        assert {"mask", "mask2"} <= compared if backend == "onnxruntime" else not compared & {"mask", "mask2"}
        assert backend == "onnxruntime" or "not compared on OpenCV: mask, mask2 (not the first top" in caplog.text


UNPOOL_2X2 = "unpool_param { pool_k_h: 2 pool_k_w: 2 pool_stride_h: 2 pool_stride_w: 2 pool_pad_h: 0 pool_pad_w: 0 }"

PRUNE_NETS = {
    "resize": _layer("x", "Resize", "conv1", "resize_param { interpolation: bilinear height: 9 width: 7 }"),
    "shift": _layer("x", "Shift", "conv1"),
    "reduce": _layer("x", "Reduce", "conv1", "reduce_param { reduce: MAX axes: 3 keepdims: 1 }"),
    "max_unpool": ('layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" top: "m" '
                   'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n' + _layer("x", "MaxUnpool", "p m", UNPOOL_2X2)),
    "crop_and_resize": _layer("x", "CropAndResize", "conv1 boxes", "crop_and_resize_param { height: 4 width: 5 }"),
}
"""conv1 (5 channels) -> the type -> conv2: the type carries conv1's channels, so conv1 prunes through it."""


def _prune_net(name: str) -> str:
    boxes = _input("boxes", 1, 1, 3, 7) if name == "crop_and_resize" else ""
    return (_input("data", 1, 3, 6, 6) + boxes
            + _layer("conv1", "Convolution", "data", "convolution_param { num_output: 5 kernel_size: 3 pad: 1 }")
            + PRUNE_NETS[name]
            + _layer("conv2", "Convolution", "x", "convolution_param { num_output: 2 kernel_size: 1 }"))


@pytest.mark.parametrize("name", sorted(PRUNE_NETS))
def test_pruning_through_the_type_is_exact_against_the_masked_original(name, tmp_path, capsys):
    """Keep conv1's channels 0, 2, 3: the pruned pair equals the original whose conv2 ignores channels 1 and 4."""
    feeds_spec = {"data": Feed((1, 3, 6, 6))}
    if name == "crop_and_resize":
        feeds_spec["boxes"] = Feed((1, 1, 3, 7), 0.0, 1.0)
    net = write_net(_prune_net(name), tmp_path, "net", feeds=feeds_spec)
    code, out, err = run(capsys, "info", net.prototxt, "--groups", "--json")
    assert code == 0, err
    group = next(g for g in json.loads(out)["groups"] if "conv1" in g["producers"])
    assert group["prunable"] and {"layer": "x", "role": "structure" if name != "shift" else "channel"} in group["members"]
    keep = [0, 2, 3]
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "keep": {"conv1": keep}}))
    code, _, err = run(capsys, "prune", net.prototxt, "-w", net.caffemodel, "--plan", tmp_path / "plan.json",
                       "-o", tmp_path / "small")
    assert code == 0, err

    original = load_model(net.prototxt, net.caffemodel)
    off = [c for c in range(5) if c not in keep]
    original.net.layer("conv2").blobs[0][:, off] = 0
    pruned = load_model(tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    assert pruned.shapes.blob(pruned.net.final("conv1"))[1] == 3
    feeds = net.inputs(np.random.default_rng(4))
    expected = export_and_run(original, [original.net.final("conv2")], feeds)["conv2"]
    got = export_and_run(pruned, [pruned.net.final("conv2")], feeds)["conv2"]
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("layer, reason", [
    ('layer { name: "x" type: "Reduce" bottom: "conv1" top: "x" reduce_param { reduce: SUM axes: 1 } }',
     "Reduce 'x' reduces the channel axis"),
    ('layer { name: "x" type: "Reduce" bottom: "conv1" top: "x" reduce_param { reduce: SUM axes: 0 keepdims: 0 } }',
     "Reduce 'x' reduces the batch axis, moving the channels"),
])
def test_types_that_cannot_lose_channels_pin_them_with_the_reason_info_shows(layer, reason, tmp_path, capsys):
    text = (_input("data", 1, 3, 6, 6) + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
            'convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }\n' + layer + '\n')
    net = write_net(text, tmp_path, feeds={"data": Feed((1, 3, 6, 6))})
    code, out, err = run(capsys, "info", net.prototxt, "--groups", "--json")
    assert code == 0, err
    group = next(g for g in json.loads(out)["groups"] if "conv1" in g["producers"])
    assert not group["prunable"] and reason in group["pinned"], group["pinned"]


def test_gru_pins_the_axis_it_reads_as_channels(tmp_path, capsys):
    """A (T, N, I) GRU input from a convolution's output flattened from axis 2: the conv's channels are the
    GRU's axis 1, which it mixes over time, so they stay."""
    text = _input("data", 6, 2, 3, 3) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "seq" type: "Flatten" bottom: "conv" top: "seq" flatten_param { axis: 2 } }
layer { name: "gru" type: "GRU" bottom: "seq" top: "gru" recurrent_param { num_output: 5 } }
"""
    net = write_net(text, tmp_path, feeds={"data": Feed((6, 2, 3, 3))})
    code, out, err = run(capsys, "info", net.prototxt, "--groups", "--json")
    assert code == 0, err
    group = next(g for g in json.loads(out)["groups"] if "conv" in g["producers"])
    assert not group["prunable"] and group["pinned"] == ["read by GRU 'gru', which mixes channels"]


# ------------------------------------------------------------------ torch

TRAINABLE = ["resize", "reduce", "shift", "gru", "crop_and_resize", "max_unpool_fed"]


def _torch_net(name: str, tmp_path):
    if name != "max_unpool_fed":
        net = generated(name, tmp_path)
        return net, draw(name, net)
    # The mask comes in as an input (a Pooling's mask top has no torch op): distinct indices per plane.
    text = _input("values", 2, 3, 3, 4) + _input("mask", 2, 3, 3, 4) + """
layer { name: "unpool" type: "MaxUnpool" bottom: "values" bottom: "mask" top: "unpool"
        unpool_param { pool_k_h: 2 pool_k_w: 2 pool_stride_h: 2 pool_stride_w: 2 pool_pad_h: 0 pool_pad_w: 0 } }
"""
    net = write_net(text, tmp_path, feeds={"values": Feed((2, 3, 3, 4)), "mask": Feed((2, 3, 3, 4))})
    rng = np.random.default_rng(5)
    mask = np.stack([rng.permutation(6 * 8)[:12] for _ in range(6)]).reshape(2, 3, 3, 4).astype(np.float32)
    return net, {"values": rng.standard_normal((2, 3, 3, 4)).astype(np.float32), "mask": mask}


@pytest.mark.parametrize("name", TRAINABLE)
def test_torch_op_matches_the_export(name, tmp_path):
    torch = pytest.importorskip("torch")
    from caffe_surgery.train import TorchNet
    net, feeds = _torch_net(name, tmp_path)
    model = load_model(net.prototxt, net.caffemodel)
    taps = [layer.tops[0] for layer in tapped_layers(model)]
    expected = export_and_run(model, taps, feeds)
    got = TorchNet(model.net, model.shapes, TEST)({k: torch.from_numpy(v) for k, v in feeds.items()})
    for top in taps:
        assert_close(got[top.key].detach().numpy(), expected[top.key], f"{name}: {top.key}")


@pytest.mark.parametrize("name, layer", [("shift", "shift"), ("gru", "gru"), ("gru", "both_ways")])
def test_learned_blobs_get_gradients(name, layer, tmp_path):
    torch = pytest.importorskip("torch")
    from caffe_surgery.graph import TRAIN
    from caffe_surgery.train import TorchNet
    net = generated(name, tmp_path)
    model = load_model(net.prototxt, net.caffemodel)
    torch_net = TorchNet(model.net, model.shapes, TRAIN)
    values = torch_net({k: torch.from_numpy(v) for k, v in draw(name, net).items()})
    values[model.net.final(layer).key].square().sum().backward()
    for blob in torch_net.layer_blobs[layer]:
        assert blob.grad is not None and torch.isfinite(blob.grad).all() and blob.grad.abs().sum() > 0


# ------------------------------------------------------------------ bad params, one line each

@pytest.mark.parametrize("layer, problem", [
    ('type: "Resize" bottom: "data" top: "out" resize_param { interpolation: cubic height: 4 width: 4 }',
     "resize_param.interpolation must be nearest, bilinear or opencv_linear, got 'cubic'"),
    ('type: "Resize" bottom: "data" top: "out" resize_param { interpolation: bilinear align_corners: true height: 2 width: 2 }',
     "fork parameter align_corners: cannot read 'true' as int"),
    ('type: "Reduce" bottom: "data" top: "out" reduce_param { reduce: SUM axes: 1 axes: 2 }',
     "reduce_param gives several axes; OpenCV keeps only the last (give one, or none for every axis)"),
    ('type: "Reduce" bottom: "data" top: "out" reduce_param { reduce: SUM axes: -1 }',
     "reduce_param.axes -1 must not be negative (OpenCV drops the minus sign of a fork value)"),
    ('type: "GRU" bottom: "data" top: "out"',
     "GRU needs a (T, N, I) bottom, got (1, 6, 3, 4)"),
    ('type: "CropAndResize" bottom: "data" bottom: "data" top: "out" crop_and_resize_param { height: 1 width: 4 }',
     "crop_and_resize_param needs height and width of at least 2 (OpenCV divides by size - 1), got 1x4"),
    ('type: "MaxUnpool" bottom: "data" bottom: "data" top: "out" unpool_param { pool_k_h: 2 pool_k_w: 2 }',
     "unpool_param needs pool_stride_h, pool_stride_w, pool_pad_h, pool_pad_w (OpenCV requires every one)"),
])
def test_bad_params_stop_with_one_line(layer, problem, tmp_path, capsys):
    prototxt, error = info_error(_input("data", 1, 6, 3, 4) + f'layer {{ name: "out" {layer} }}\n', tmp_path, capsys)
    assert error == f"error: {prototxt}: out: {problem}"


# ------------------------------------------------------------------ Padding: no Caffe file configures it

PADDING_FORMS = [
    "padding_param { paddings: 1 }",
    "padding_param { paddings: 0 paddings: 0 paddings: 1 paddings: 1 }",
    "padding_param { paddings: [0, 0, 0, 0, 1, 1, 2, 2] }",
    'padding_param { paddings: "0 0 0 0 1 1 2 2" }',
    "padding_param { }",
]
"""Every way a Caffe prototxt can spell OpenCV Padding's ``paddings`` (one value per axis end): OpenCV keeps one
value of a repeated fork field (and refuses quoted ones), and Padding needs an even count."""


@pytest.mark.parametrize("form", PADDING_FORMS)
def test_opencv_cannot_create_padding_from_a_caffe_file(form, tmp_path):
    prototxt = tmp_path / "padding.prototxt"
    prototxt.write_text(_input("data", 1, 2, 4, 4) + f'layer {{ name: "pad" type: "Padding" bottom: "data" top: "pad" {form} }}\n')
    with pytest.raises(cv2.error, match=r"paddings|UnknownField"):
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt))
        cv_net.setInput(np.zeros((1, 2, 4, 4), np.float32), "data")
        cv_net.forward()


def test_padding_is_not_declared():
    assert layers.lookup("Padding") is None

