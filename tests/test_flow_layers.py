"""FlowNet's fork layers (caffe_surgery/layers/flow.py): each form's shape rule and ONNX export against OpenCV,
or against a numpy reference written from the fork's semantics where OpenCV departs from them; torch ops
against the export; info, check and prune through a net holding them; bad params as one-line errors."""
import json
import math

import cv2
import numpy as np
import pytest

from caffe_surgery import layers
from caffe_surgery.cli import main
from caffe_surgery.errors import UnsupportedLayerError
from caffe_surgery.graph import TRAIN
from caffe_surgery.layers.flow import crop_matrix
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx
from netgen import CORPUS, Feed, generate, write_net
from test_detection_types import _assert_prune_is_exact
from test_export import assert_close, run_onnx
from test_layer_types import assert_torch_matches_export, info_error


def _inputs(feeds: dict[str, Feed]) -> str:
    return "".join(f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in feed.shape)} }} }} }}\n' for name, feed in feeds.items())


def _two(shape, low=None, high=None):
    return {"a": Feed(shape, low, high), "b": Feed(shape, low, high)}


def _image_flow(shape, spread):
    return {"a": Feed(shape), "b": Feed((shape[0], 2) + shape[2:], -spread, spread)}


def _one(shape):
    return {"a": Feed(shape)}


FORMS = {
    "correlation": (_two((1, 2, 8, 8)), 'type: "Correlation" bottom: "a" bottom: "b" '
                    'correlation_param { pad: 2 kernel_size: 1 max_displacement: 2 stride_1: 1 stride_2: 1 }'),
    "correlation_strided": (_two((2, 3, 11, 9)), 'type: "Correlation" bottom: "a" bottom: "b" '
                            'correlation_param { pad: 4 kernel_size: 3 max_displacement: 6 stride_1: 2 stride_2: 3 }'),
    "accum_size": ({"a": Feed((1, 2, 4, 5)), "b": Feed((1, 3, 7, 6))},
                   'type: "Accum" bottom: "a" bottom: "b" accum_param { top_height: 11 top_width: 9 }'),
    "accum_largest": ({"a": Feed((1, 2, 4, 9)), "b": Feed((1, 3, 7, 6))},
                      'type: "Accum" bottom: "a" bottom: "b" accum_param { top_height: 11 top_width: 8 }'),
    "accum_reference": ({"a": Feed((1, 2, 4, 5)), "b": Feed((1, 1, 3, 3)), "c": Feed((1, 3, 7, 6))},
                        'type: "Accum" bottom: "a" bottom: "b" bottom: "c" accum_param { have_reference: true }'),
    "accum_plain": ({"a": Feed((1, 2, 4, 4)), "b": Feed((1, 3, 8, 8))},
                    'type: "Accum" bottom: "a" bottom: "b" accum_param { have_reference: false }'),
    "flow_warp": (_image_flow((2, 3, 6, 7), 3.0), 'type: "FlowWarp" bottom: "a" bottom: "b"'),
    "flow_warp_zero": (_image_flow((1, 2, 5, 5), 6.0), 'type: "FlowWarp" bottom: "a" bottom: "b" '
                       'flow_warp_param { fill_value: ZERO }'),
    "augmentation_channel_mean": (_one((1, 3, 6, 7)), 'type: "DataAugmentation" bottom: "a" '
                                  'augmentation_param { recompute_mean: 1000 mean_per_pixel: false }'),
    "augmentation_pixel_mean": (_one((1, 3, 5, 4)), 'type: "DataAugmentation" bottom: "a" '
                                'augmentation_param { recompute_mean: 10 mean_per_pixel: 1 }'),
}
"""One layer "x" per form, computed by OpenCV as the fork computes it (no departure applies)."""


def _write(name, feeds, layer, directory, blobs=None):
    """The one-layer net written with random weights, ``blobs`` (if given) replacing layer x's; its model."""
    generated = write_net(_inputs(feeds) + f'layer {{ name: "x" {layer} top: "x" }}\n', directory, name, feeds=feeds)
    if blobs is not None:
        model = load_model(generated.prototxt, generated.caffemodel)
        model.net.layer("x").blobs = [np.asarray(b, np.float32) for b in blobs]
        from caffe_surgery.save import save_caffemodel
        save_caffemodel(model.net, generated.caffemodel)
    return generated, load_model(generated.prototxt, generated.caffemodel)


def _opencv(generated, feeds):
    net = cv2.dnn.readNetFromCaffe(str(generated.prototxt), str(generated.caffemodel))
    net.enableFusion(False)
    for name, value in feeds.items():
        net.setInput(value, name)
    return net.forward("x")


def _exported(model, feeds):
    top = model.net.layer("x").tops[0]
    return run_onnx(export_onnx(model.net, model.shapes, taps=[top]), feeds)[top.name]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_export_and_shape_rule_match_opencv(form, tmp_path):
    feeds_spec, layer = FORMS[form]
    generated, model = _write(form, feeds_spec, layer, tmp_path)
    if "DataAugmentation" in layer:  # one that has not run yet: its mean is the batch's
        blobs = model.net.layer("x").blobs
        generated, model = _write(form, feeds_spec, layer, tmp_path, [np.zeros((1, 1, 1, 1))] + blobs[1:])
    x = model.net.layer("x")
    assert not layers.lookup(x.type).departures_for(x)
    feeds = generated.inputs(np.random.default_rng(7))
    reference = _opencv(generated, feeds)
    assert tuple(model.shapes.blob(x.tops[0])) == reference.shape
    assert_close(_exported(model, feeds), reference, form)


def test_correlation_gives_opencvs_shape_for_the_briefs_example(tmp_path):
    _, model = _write("c", *FORMS["correlation"], tmp_path)
    assert tuple(model.shapes.blob(model.net.layer("x").tops[0])) == (1, 25, 8, 8)
    rule = model.shapes.layer("x")
    assert rule.macs == 25 * 8 * 8 * 1 * 2


# ------------------------------------------------------------------ where OpenCV departs: the fork's semantics

def fork_correlation(p, a, b):
    """FlowNet's Correlation kernel, loop by loop."""
    pad, k, md, s1, s2 = p["pad"], p["kernel_size"], p["max_displacement"], p["stride_1"], p["stride_2"]
    a, b = (np.pad(v, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64) for v in (a, b))
    n, c, hp, wp = a.shape
    radius, border = md // s2, md + (k - 1) // 2
    th, tw = math.ceil((hp - 2 * border) / s1), math.ceil((wp - 2 * border) / s1)
    width = 2 * radius + 1
    top = np.zeros((n, width * width, th, tw))
    for ch in range(width * width):
        dx, dy = (ch % width - radius) * s2, (ch // width - radius) * s2
        for y in range(th):
            for x in range(tw):
                y1, x1 = y * s1 + md, x * s1 + md
                first = a[:, :, y1:y1 + k, x1:x1 + k]
                second = b[:, :, y1 + dy:y1 + dy + k, x1 + dx:x1 + dx + k]
                paired = first * second if p["type"] == "MULTIPLY" else np.abs(first - second)
                top[:, ch, y, x] = paired.sum((1, 2, 3)) / (k * k * c)
    return top


def bilinear(x, top, left, bottom, right, fy, fx):
    """The fork's bilinear sample from the four neighbours (x's last two axes are rows and columns)."""
    return ((1 - fx) * (1 - fy) * x[..., top, left] + fx * (1 - fy) * x[..., top, right]
            + (1 - fx) * fy * x[..., bottom, left] + fx * fy * x[..., bottom, right])


def fork_accum_resize(x, height, width):
    """The fork's Accum sampling of one bottom: aligned corners, bilinear."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, height, width))
    for yo in range(height):
        for xo in range(width):
            ypos, xpos = yo / (height - 1) * (h - 1), xo / (width - 1) * (w - 1)
            ty, tx = int(math.floor(ypos)), int(math.floor(xpos))
            out[:, :, yo, xo] = bilinear(x, ty, tx, min(ty + 1, h - 1), min(tx + 1, w - 1), ypos - ty, xpos - tx)
    return out


def fork_flow_warp(image, flow, fill):
    n, c, h, w = image.shape
    out = np.full(image.shape, fill, np.float64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                x2, y2 = x + flow[i, 0, y, x], y + flow[i, 1, y, x]
                if 0 <= x2 < w and 0 <= y2 < h:
                    left, top = int(x2), int(y2)
                    out[i, :, y, x] = bilinear(image[i], top, left, min(top + 1, h - 1), min(left + 1, w - 1),
                                               y2 - top, x2 - left)
    return out


def fork_crop(image, height, width):
    """The fork's test-time crop: centred, bilinear, positions clamped to [0, size - 1.05]."""
    n, c, h, w = image.shape
    out = np.zeros((n, c, height, width))
    for y in range(height):
        for x in range(width):
            xpos = min(max(np.float32(x - 0.5 * width + 0.5 * w), 0.0), w - 1.05)
            ypos = min(max(np.float32(y - 0.5 * height + 0.5 * h), 0.0), h - 1.05)
            tx, ty = int(math.floor(xpos)), int(math.floor(ypos))
            out[:, :, y, x] = bilinear(image, ty, tx, ty + 1, tx + 1, ypos - ty, xpos - tx)
    return out


STORED = [np.full((1, 1, 1, 1), 5000.0)]  # an iteration count past recompute_mean: the stored mean is used

DEPARTING = {
    "correlation_subtract": (_two((1, 3, 7, 7)), 'type: "Correlation" bottom: "a" bottom: "b" correlation_param { '
                             'pad: 1 kernel_size: 3 max_displacement: 2 correlation_type: SUBTRACT }', None,
                             lambda f, blobs: fork_correlation({"pad": 1, "kernel_size": 3, "max_displacement": 2,
                                                                "stride_1": 1, "stride_2": 1, "type": "SUBTRACT"},
                                                               f["a"], f["b"])),
    "accum_round_up": ({"a": Feed((1, 2, 4, 5)), "b": Feed((1, 3, 7, 6))},
                       'type: "Accum" bottom: "a" bottom: "b" accum_param { size_divisible_by: 4 }', None,
                       lambda f, blobs: np.concatenate([fork_accum_resize(f["a"], 8, 8),
                                                        fork_accum_resize(f["b"], 8, 8)], 1)),
    "flow_warp_nan": (_image_flow((1, 2, 5, 6), 4.0), 'type: "FlowWarp" bottom: "a" bottom: "b" '
                      'flow_warp_param { fill_value: NOT_A_NUMBER }', None,
                      lambda f, blobs: fork_flow_warp(f["a"], f["b"], np.nan)),
    "augmentation_stored_channel_mean": (
        _one((2, 3, 5, 6)), 'type: "DataAugmentation" bottom: "a" augmentation_param { recompute_mean: 1000 '
        'mean_per_pixel: false }', STORED, lambda f, blobs: f["a"] - blobs[2]),
    "augmentation_stored_pixel_mean": (
        _one((2, 3, 5, 6)), 'type: "DataAugmentation" bottom: "a" augmentation_param { recompute_mean: 1000 }',
        STORED, lambda f, blobs: f["a"] - blobs[1]),
    "augmentation_crop": (
        _one((1, 3, 9, 8)), 'type: "DataAugmentation" bottom: "a" augmentation_param { crop_width: 5 '
        'crop_height: 6 recompute_mean: 1000 mean_per_pixel: false translate { rand_type: "uniform" spread: 0.4 } }',
        STORED, lambda f, blobs: fork_crop(f["a"], 6, 5) - blobs[2]),
    "augmentation_proto_mean": (
        _one((1, 3, 4, 4)), 'type: "DataAugmentation" bottom: "a" augmentation_param { mean: 0.5 mean: -1 mean: 2 '
        'mean_per_pixel: false }', None, lambda f, blobs: f["a"] - np.asarray([0.5, -1, 2]).reshape(1, 3, 1, 1)),
}
"""One layer "x" per form OpenCV departs on: feeds, layer, blob 0 (else random), the fork's result."""


@pytest.mark.parametrize("form", sorted(DEPARTING))
def test_departing_forms_follow_the_fork(form, tmp_path):
    """The export follows the fork's semantics (numpy loops written from its source), where OpenCV departs."""
    feeds_spec, layer, count, fork = DEPARTING[form]
    generated, model = _write(form, feeds_spec, layer, tmp_path)
    if count is not None:
        generated, model = _write(form, feeds_spec, layer, tmp_path, count + model.net.layer("x").blobs[1:])
    x = model.net.layer("x")
    assert layers.lookup(x.type).departures_for(x), form
    feeds = generated.inputs(np.random.default_rng(5))
    reference = fork(feeds, x.blobs)
    assert tuple(model.shapes.blob(x.tops[0])) == reference.shape
    result = _exported(model, feeds)
    assert np.array_equal(np.isnan(result), np.isnan(reference)), form
    assert_close(np.nan_to_num(result), np.nan_to_num(reference), form)


def test_opencv_still_departs_where_declared(tmp_path):
    """Guards the departures: OpenCV's result differs from the fork's (or it cannot load the layer)."""
    for form in ("accum_round_up", "flow_warp_nan", "augmentation_stored_channel_mean", "augmentation_crop"):
        feeds_spec, layer, count, fork = DEPARTING[form]
        generated, model = _write(form, feeds_spec, layer, tmp_path / form)
        if count is not None:
            generated, model = _write(form, feeds_spec, layer, tmp_path / form, count + model.net.layer("x").blobs[1:])
        feeds = {k: v[:1] for k, v in generated.inputs(np.random.default_rng(5)).items()}
        try:
            opencv = _opencv(generated, feeds)
        except cv2.error:
            continue
        fork_result = fork(feeds, model.net.layer("x").blobs)
        assert opencv.shape != fork_result.shape or not np.allclose(opencv, fork_result, atol=1e-3,
                                                                    equal_nan=True), form


def test_crop_weights_are_the_forks_clamped_sampling():
    weights = crop_matrix(8, 8)
    assert np.allclose(weights[:7], np.eye(8)[:7])
    assert np.allclose(weights[7, 6:], [0.05, 0.95], atol=1e-6)  # the clamp to size - 1.05
    assert np.allclose(crop_matrix(1, 1), [[1.0]]) and np.allclose(crop_matrix(9, 5).sum(1), 1.0)


# ------------------------------------------------------------------ refusals and errors

def test_a_mean_part_way_through_its_averaging_is_refused(tmp_path):
    feeds_spec, layer = FORMS["augmentation_channel_mean"]
    _, model = _write("midway", feeds_spec, layer, tmp_path)
    _, model = _write("midway", feeds_spec, layer, tmp_path, [np.full((1, 1, 1, 1), 3.0)] + model.net.layer("x").blobs[1:])
    with pytest.raises(UnsupportedLayerError, match="x: DataAugmentation part way through averaging its mean"):
        export_onnx(model.net, model.shapes)


def test_flow_warp_needs_opset_16(tmp_path):
    _, model = _write("warp", *FORMS["flow_warp"], tmp_path)
    with pytest.raises(UnsupportedLayerError, match="x: FlowWarp below opset 16"):
        export_onnx(model.net, model.shapes, opset=13)


@pytest.mark.parametrize("layer, problem", [
    ('type: "Correlation" bottom: "a" bottom: "b" correlation_param { kernel_size: 2 max_displacement: 1 }',
     "correlation_param.kernel_size must be odd, got 2"),
    ('type: "Correlation" bottom: "a" bottom: "b" correlation_param { kernel_size: 1 }',
     "correlation_param needs kernel_size and max_displacement"),
    ('type: "Correlation" bottom: "a" bottom: "b" correlation_param { kernel_size: 1 max_displacement: 9 }',
     "kernel and displacement do not fit in the 6x6 bottom padded by 0"),
    ('type: "FlowWarp" bottom: "a" bottom: "a"', "FlowWarp needs a flow (N, 2, H, W) matching the image"),
    ('type: "Accum" bottom: "a" accum_param { have_reference: true }',
     "Accum with have_reference needs a bottom to accumulate and the reference"),
    ('type: "DataAugmentation" bottom: "a" augmentation_param { crop_width: 9 crop_height: 2 }',
     "crop 9x2 must fit in the 6x6 bottom"),
])
def test_bad_flow_layers_stop_with_one_line(layer, problem, tmp_path, capsys):
    text = _inputs(_two((1, 3, 6, 6))) + f'layer {{ name: "x" {layer} top: "x" }}\n'
    prototxt, error = info_error(text, tmp_path, capsys)
    assert error.startswith(f"error: {prototxt}: x: {problem}")


# ------------------------------------------------------------------ torch, info, check, prune

def test_torch_ops_match_the_export_and_carry_gradients(tmp_path):
    torch = pytest.importorskip("torch")
    from caffe_surgery.train import TorchNet
    generated = generate("flownet", tmp_path)
    assert_torch_matches_export(generated)
    model = load_model(generated.prototxt, generated.caffemodel)
    feeds = generated.inputs(np.random.default_rng(3))
    inputs = {k: torch.from_numpy(v).requires_grad_() for k, v in feeds.items()}
    values = TorchNet(model.net, model.shapes, TRAIN)(inputs)
    values[model.net.outputs()[0].key].square().sum().backward()
    for name in ("img0", "img1", "flow"):  # through DataAugmentation, Correlation, FlowWarp and Accum
        assert inputs[name].grad is not None and inputs[name].grad.abs().sum() > 0, name


def test_training_folds_each_batch_into_the_forks_running_mean():
    torch = pytest.importorskip("torch")
    _, layer = FORMS["augmentation_pixel_mean"]
    from netgen import parse
    from caffe_surgery.graph import build_net
    net = build_net(parse(_inputs(_one((2, 3, 5, 4))) + f'layer {{ name: "x" {layer} top: "x" }}'))
    op = layers.lookup("DataAugmentation").train.op(net.layer("x"), [(2, 3, 5, 4)], TRAIN)
    blobs = [torch.zeros(1, 1, 1, 1), torch.zeros(1, 3, 5, 4), torch.zeros(1, 3, 1, 1)]
    batches = [torch.randn(2, 3, 5, 4) for _ in range(3)]
    for batch in batches:
        (out,) = op([batch], blobs)
    mean = torch.cat(batches).mean(0, keepdim=True)
    assert blobs[0].item() == 3 and torch.allclose(blobs[1], mean, atol=1e-6)
    assert torch.allclose(blobs[2], mean.mean((2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(out, batches[-1] - mean, atol=1e-6)


def test_info_and_check_read_a_flownet_net(tmp_path, capsys):
    generated = generate("flownet", tmp_path)
    assert main(["info", str(generated.prototxt)]) == 0
    assert "Correlation" in capsys.readouterr().out
    assert main(["check", str(generated.prototxt), "-w", str(generated.caffemodel)]) == 0


PRUNE_NET = """
layer { name: "conv0" type: "Convolution" bottom: "img" top: "conv0" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "warp" type: "FlowWarp" bottom: "conv0" bottom: "flow" top: "warp" }
layer { name: "conv1" type: "Convolution" bottom: "warp" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 stride: 2 } }
layer { name: "pre" type: "Convolution" bottom: "img" top: "pre" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "aug" type: "DataAugmentation" bottom: "pre" top: "aug"
  augmentation_param { recompute_mean: 100 mean_per_pixel: false } }
layer { name: "corr_a" type: "Convolution" bottom: "aug" top: "corr_a" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "corr" type: "Correlation" bottom: "corr_a" bottom: "warp" top: "corr"
  correlation_param { kernel_size: 1 max_displacement: 1 pad: 1 } }
layer { name: "accum" type: "Accum" bottom: "conv1" bottom: "corr" top: "accum" accum_param { top_height: 9 top_width: 9 } }
layer { name: "head" type: "Convolution" bottom: "accum" top: "head" convolution_param { num_output: 3 kernel_size: 1 } }
"""
PRUNE_FEEDS = {"img": Feed((1, 3, 7, 7)), "flow": Feed((1, 2, 7, 7), -2.0, 2.0)}


def test_prune_goes_through_flow_warp_and_accum_and_pins_correlation(tmp_path, capsys):
    """conv1's filters go through Accum's offsets into head; Correlation and DataAugmentation pin what they
    read, with their reasons (info --groups), and so FlowWarp's image; the pruned net equals the masked one in
    OpenCV and onnxruntime."""
    text = _inputs(PRUNE_FEEDS) + PRUNE_NET
    net, pruned = _assert_prune_is_exact(text, PRUNE_FEEDS, "head", tmp_path)
    assert pruned.layer("conv1").blobs[0].shape[0] < 6
    assert pruned.layer("head").blobs[0].shape[1] == pruned.layer("conv1").blobs[0].shape[0] + 9
    assert main(["info", str(tmp_path / "net.prototxt"), "--groups", "--json"]) == 0
    groups = {g["producers"][0]: g for g in json.loads(capsys.readouterr().out)["groups"] if g["producers"]}
    assert groups["conv1"]["prunable"]
    assert "read by Correlation 'corr', which averages over all its channels" in groups["corr_a"]["pinned"]
    assert "read by Correlation 'corr', which averages over all its channels" in groups["conv0"]["pinned"]
    assert "read by FlowWarp 'warp' as the flow's x and y" not in groups["conv0"]["pinned"]
    assert groups["pre"]["pinned"] == ["read by DataAugmentation 'aug', which augments whole images"]


def test_dynamic_batch_export_matches_a_fixed_batch(tmp_path):
    """Every flow type follows the batch: batch 3 through a dynamic-batch export equals a batch-3 export."""
    generated = generate("flownet", tmp_path)
    dynamic = load_model(generated.prototxt, generated.caffemodel)
    shapes = {name: (3,) + feed.shape[1:] for name, feed in generated.feeds.items()}
    fixed = load_model(generated.prototxt, generated.caffemodel, input_shapes=shapes)
    rng = np.random.default_rng(4)
    feeds = {name: Feed(shapes[name], feed.low, feed.high).sample(rng) for name, feed in generated.feeds.items()}
    expected = run_onnx(export_onnx(fixed.net, fixed.shapes), feeds)
    for key, value in run_onnx(export_onnx(dynamic.net, dynamic.shapes, dynamic_batch=True), feeds).items():
        assert_close(value, expected[key], key)


def test_the_corpus_net_holds_every_flow_type():
    used = {line.split('type: "')[1].split('"')[0] for line in CORPUS["flownet"].text.splitlines() if "type:" in line}
    assert {"Correlation", "Accum", "FlowWarp", "DataAugmentation"} <= used
