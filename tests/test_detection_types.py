"""Reorg, Region, PriorBoxClustered, ROIPooling, PSROIPooling and Proposal beyond the generated corpus
(tests/test_export.py checks each against OpenCV or a numpy reference): fork parameters, refusals,
the Reorg torch op, channel pinning with reasons."""
import re

import cv2
import numpy as np
import pytest
import torch

from caffe_surgery import layers
from caffe_surgery.cli import main
from caffe_surgery.errors import CaffeSurgeryError, UnsupportedLayerError
from caffe_surgery.graph import build_net
from caffe_surgery.groups import build_groups
from caffe_surgery.layers.fork_params import fork_param
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx
from caffe_surgery.runtime import Runtime
from caffe_surgery.save import save_caffemodel, save_prototxt
from caffe_surgery.shapes import infer_shapes
from caffe_surgery.surgery import apply_plan
from netgen import CORPUS, generate, parse, write_net
from oracle import masked_copy, random_keep, switch_off
from test_export import ref_reorg


def _net(text: str):
    net = build_net(parse(text))
    return net, infer_shapes(net)


def _input(name, *dims):
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {shape} }} }} }}\n'


def test_fork_params_are_read_from_the_kept_text():
    layer = parse('layer { name: "r" type: "Region" region_param { classes: 3 anchors: 2 softmax: true '
                      'thresh: 0.25 } prior_box_param { width: 4 width: 6.5 height: 2 height: 3 step: 8 } }').layer[0]
    region = fork_param(layer, "region_param")
    assert (region.get("classes", 0), region.get("softmax", False, bool), region.get("thresh", 0.2)) == (3, True, 0.25)
    assert region.get("nms_threshold", 0.4) == 0.4 and fork_param(layer, "reorg_param").entries == []
    assert fork_param(layer.prior_box_param).values("width") == [4.0, 6.5]
    assert layer.prior_box_param.step == 8  # known fields stay in the schema's fields


def test_a_bad_fork_value_is_one_error_naming_the_layer():
    text = _input("data", 1, 8, 4, 4) + 'layer { name: "reorg" type: "Reorg" bottom: "data" top: "r" reorg_param { stride: two } }'
    with pytest.raises(CaffeSurgeryError, match="reorg.*stride: cannot read 'two'"):
        _net(text)


@pytest.mark.parametrize("stride, shape", [(2, (2, 8, 6, 4)), (3, (1, 18, 6, 9))])
def test_reorg_torch_op_matches_the_reference(stride, shape):
    text = _input("data", *shape) + f'layer {{ name: "reorg" type: "Reorg" bottom: "data" top: "r" reorg_param {{ stride: {stride} }} }}'
    net, shapes = _net(text)
    layer = net.layers[1]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    op = layers.lookup("Reorg").train.op(layer, [shape], "TEST")
    (top,) = op([torch.from_numpy(x)], [])
    np.testing.assert_array_equal(top.numpy(), ref_reorg(layer, x))
    assert tuple(shapes.blob(layer.tops[0])) == top.shape


def test_reorg_needs_channels_divisible_by_the_block():
    with pytest.raises(CaffeSurgeryError, match="C divisible by 4"):
        _net(_input("data", 1, 6, 4, 4) + 'layer { name: "reorg" type: "Reorg" bottom: "data" top: "r" }')


REGION = (_input("data", 1, 3, 4, 16) + 'layer { name: "region" type: "Region" bottom: "data" top: "region" '
          'region_param { classes: 3 coords: 4 anchors: 2 softmax: 1 %s } }')


@pytest.mark.parametrize("extra, problem", [("softmax_tree: 1", "with softmax_tree"),
                                            ("scale_x_y: 1.1", "with scale_x_y")])
def test_region_forms_outside_yolov2_are_refused(extra, problem):
    net, shapes = _net(REGION % extra)
    net.layers[1].blobs = [np.ones(4, np.float32)]
    with pytest.raises(UnsupportedLayerError, match=f"region: Region {problem} cannot be exported"):
        export_onnx(net, shapes)


def test_region_reads_an_nhwc_bottom():
    with pytest.raises(CaffeSurgeryError, match=r"Region reads an \(N, H, W, 2 \* 8\) bottom"):
        _net((REGION % "").replace("dim: 16", "dim: 15"))


def test_prior_box_clustered_needs_width_height_pairs():
    text = (_input("data", 1, 2, 3, 4) + _input("img", 1, 3, 30, 40) +
            'layer { name: "p" type: "PriorBoxClustered" bottom: "data" bottom: "img" top: "p" '
            'prior_box_param { width: 3 width: 4 height: 2 variance: 0.1 } }')
    with pytest.raises(CaffeSurgeryError, match="as many width as height values"):
        _net(text)


def test_proposal_refuses_a_batch_of_two():
    text = CORPUS["proposal"].text.replace("dim: 1 dim: 12", "dim: 2 dim: 12").replace("dim: 1 dim: 24", "dim: 2 dim: 24")
    net, shapes = _net(text)
    with pytest.raises(UnsupportedLayerError, match="proposal: Proposal with a batch of 2"):
        export_onnx(net, shapes)


def test_proposal_with_a_dynamic_batch_is_refused():
    net, shapes = _net(CORPUS["proposal"].text)
    with pytest.raises(CaffeSurgeryError, match="one image per forward"):
        export_onnx(net, shapes, dynamic_batch=True)


def test_roi_pooling_carries_feature_channels_and_the_others_pin_with_reasons():
    net, shapes = _net(CORPUS["roi_pooling"].text)
    groups = build_groups(net, shapes)
    conv = groups.of_layer("conv")
    assert {m.layer for m in conv.members} >= {"roi_pool"}
    assert any("PSROIPooling 'psroi_pool'" in reason for reason in conv.pinned)
    net, shapes = _net(CORPUS["yolo_v2"].text)
    reasons = [r for g in build_groups(net, shapes).groups for r in g.pinned]
    assert any("Reorg 'reorg'" in r for r in reasons) and any("Region 'region'" in r for r in reasons)


def _assert_prune_is_exact(text, feeds, output, directory):
    """A random half of every prunable group goes; the pruned net equals the original with those channels
    switched off, in OpenCV and onnxruntime. Returns the pruned net."""
    generated = write_net(text, directory, "net", feeds=feeds)
    model = load_model(generated.prototxt, generated.caffemodel)
    net, shapes = model.net, model.shapes
    groups = build_groups(net, shapes)
    keep = random_keep(groups, np.random.default_rng(1), 0.5)
    assert keep, "something to prune"
    pruned, pruned_shapes = apply_plan(net, shapes, groups, keep)
    masked = masked_copy(net, switch_off(net, shapes, groups, keep))
    inputs = generated.inputs(np.random.default_rng(2))
    results = []
    for candidate, stem in ((pruned, "pruned"), (masked, "masked")):
        save_prototxt(candidate, directory / f"{stem}.prototxt")
        save_caffemodel(candidate, directory / f"{stem}.caffemodel")
        opencv = cv2.dnn.readNetFromCaffe(str(directory / f"{stem}.prototxt"), str(directory / f"{stem}.caffemodel"))
        for name, value in inputs.items():
            opencv.setInput(value, name)
        results.append(opencv.forward(output))
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-5 * max(1.0, np.abs(results[1]).max()))
    key = next(v.key for v in net.outputs() if v.name == output)
    got = Runtime(pruned, pruned_shapes, device="cpu").run(inputs)[key]
    want = Runtime(masked, shapes, device="cpu").run(inputs)[key]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
    return net, pruned


def test_pruning_through_roi_pooling_is_exact(tmp_path):
    """conv -> ROIPooling -> InnerProduct: conv's channels go through the ROI pooling into fc's inputs."""
    text = CORPUS["roi_pooling"].text
    text = text[:text.index('layer { name: "psroi_pool"')] + text[text.index('layer { name: "fc"'):]
    net, pruned = _assert_prune_is_exact(text, CORPUS["roi_pooling"].feeds, "fc", tmp_path)
    assert pruned.layer("fc").blobs[0].shape[1] < net.layer("fc").blobs[0].shape[1]


def test_pruning_a_yolo_v2_head_is_exact(tmp_path):
    """The strided branch concatenated beside Reorg's output stays prunable; Reorg's input is pinned."""
    net, pruned = _assert_prune_is_exact(CORPUS["yolo_v2"].text, CORPUS["yolo_v2"].feeds, "region_logistic",
                                         tmp_path)
    assert pruned.layer("conv2").blobs[0].shape[0] < 8 and pruned.layer("conv1").blobs[0].shape[0] == 8


@pytest.mark.parametrize("params, departs", [("anchors: 2 softmax: 1", False), ("num: 2 softmax: 1", True),
                                             ("anchors: 2 softmax: true", True)])
def test_region_departure_follows_what_opencv_reads(params, departs, tmp_path):
    text = (_input("data", 1, 3, 4, 16) + 'layer { name: "region" type: "Region" bottom: "data" top: "region" '
            f'region_param {{ classes: 3 coords: 4 {params} }} }}')
    net, _ = _net(text)
    assert bool(layers.lookup("Region").departures_for(net.layers[1])) == departs
    generated = write_net(text, tmp_path, "region")
    opencv = cv2.dnn.readNetFromCaffe(str(generated.prototxt), str(generated.caffemodel))
    opencv.setInput(np.zeros((1, 3, 4, 16), np.float32))
    if departs:
        with pytest.raises(cv2.error):
            opencv.forward()
    else:
        assert opencv.forward().shape == (24, 8)


FORK_KEYS = ["stride:", "anchors:", "thresh:", "width:", "height:", "pooled_h:", "group_size:", "feat_stride:",
             "ratio:", "scale:"]


@pytest.mark.parametrize("name", ["yolo_v2", "roi_pooling", "proposal", "prior_box_clustered"])
def test_cli_verbs_keep_the_fork_parameters(name, tmp_path, capsys):
    """info --groups, check, upgrade, export and a weight-l1 prune through the command line; what upgrade and
    prune write keeps the fork parameters and loads in OpenCV. (Only yolo_v2 has a prunable group: the others'
    convolutions feed pinning layers or net outputs, and prune says so.)"""
    generated = generate(name, tmp_path)
    for argv in (["info", generated.prototxt, "--groups"], ["check", generated.prototxt, "-w", generated.caffemodel],
                 ["upgrade", generated.prototxt, tmp_path / "up.prototxt", "-w", generated.caffemodel,
                  "-o", tmp_path / "up.caffemodel"],
                 ["export", tmp_path / "up.prototxt", "-w", tmp_path / "up.caffemodel", "-o", tmp_path / "net.onnx"]):
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    code = main([str(a) for a in ["prune", tmp_path / "up.prototxt", "-w", tmp_path / "up.caffemodel", "--criterion",
                                  "weight-l1", "--ratio", "0.5", "-o", tmp_path / "small"]])
    written = ["up.prototxt"]
    if name == "yolo_v2":
        assert code == 0
        written.append("small.prototxt")
    else:
        assert code == 1 and "the net has no prunable group" in capsys.readouterr().err
    original = generated.prototxt.read_text()
    for prototxt in written:
        text = (tmp_path / prototxt).read_text()
        for param in re.findall(r"(\w+_param) \{", original) + FORK_KEYS:
            assert text.count(param) == original.count(param), f"{prototxt}: {param}"
        cv2.dnn.readNetFromCaffe(str(tmp_path / prototxt), str(tmp_path / prototxt.replace("prototxt", "caffemodel")))
