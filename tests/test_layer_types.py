"""Fork and OpenCV layer types: the real darknet2caffe YOLO pair end to end through the CLI, the pinned
groups of every real pair explained by a layer, and fork params read from their text."""
import json
import re

import numpy as np
import pytest

from caffe_surgery import caffe_pb2, layers, textproto
from caffe_surgery.cli import main
from caffe_surgery.errors import ShapeError
from caffe_surgery.graph import TEST, TRAIN, build_net
from caffe_surgery.groups import build_groups
from caffe_surgery.layers.fork_params import fork_param
from caffe_surgery.layers.resize import INTERP_DEFAULTS, interp_param
from caffe_surgery.model import load_model
from caffe_surgery.runtime import Runtime
from caffe_surgery.shapes import infer_shapes
from conftest import REAL_MODELS, REAL_PAIRS
from netgen import Feed, generate, write_net
from pruning_nets import NETS
from pruning_nets import random_weights as pruning_net

YOLO = REAL_MODELS / "yoloface500k_v2"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def net_of(text: str):
    param = caffe_pb2.NetParameter()
    textproto.parse(text, param)
    return build_net(param)


@pytest.mark.parametrize("directory, prototxt, caffemodel", REAL_PAIRS, ids=[p[0] for p in REAL_PAIRS])
def test_every_pinned_group_of_a_real_pair_names_its_reason(directory, prototxt, caffemodel, capsys):
    code, out, _ = run(capsys, "info", REAL_MODELS / directory / prototxt, "--groups", "--json")
    assert code == 0
    model = load_model(REAL_MODELS / directory / prototxt)
    names = {layer.name for layer in model.net.layers} | {blob.name for blob in model.net.blob_versions()}
    groups = json.loads(out)["groups"]
    assert groups
    for group in groups:
        if group["prunable"]:
            continue
        assert group["pinned"], f"group {group['name']} is pinned without a reason"
        for reason in group["pinned"]:
            quoted = re.findall(r"'([^']+)'", reason)
            assert quoted and all(name in names for name in quoted), (group["name"], reason)


def test_yolo_se_blocks_couple_their_gates_and_nothing_is_pinned_but_the_heads(capsys):
    code, out, _ = run(capsys, "info", YOLO / "yoloface-500k-v2.prototxt", "--groups", "--json")
    assert code == 0
    groups = json.loads(out)["groups"]
    pinned = {g["name"]: g["pinned"] for g in groups if not g["prunable"] and g["producers"]}
    assert pinned == {head: [f"feeds net output '{head}'"] for head in ("layer71-conv", "layer83-conv", "layer95-conv")}
    gated = next(g for g in groups if "layer64-conv" in g["producers"])
    assert "layer67-conv" in gated["producers"]  # the SE gate's expanding conv prunes with the block it scales
    assert {"layer": "layer68-scale_channels", "role": "structure"} in gated["members"]


def test_yolo_upgrade_writes_a_pair_that_checks_and_keeps_upsample(tmp_path, capsys):
    out_prototxt, out_weights = tmp_path / "yolo.prototxt", tmp_path / "yolo.caffemodel"
    code, _, err = run(capsys, "upgrade", YOLO / "yoloface-500k-v2.prototxt", out_prototxt,
                       "-w", YOLO / "yoloface-500k-v2.caffemodel", "-o", out_weights)
    assert code == 0, err
    assert out_prototxt.read_text().count("upsample_param {\n    scale: 2\n  }") == 2
    code, out, _ = run(capsys, "check", out_prototxt, "-w", out_weights)
    assert code == 0 and out.startswith("ok:")
    before = load_model(YOLO / "yoloface-500k-v2.prototxt", YOLO / "yoloface-500k-v2.caffemodel")
    after = load_model(out_prototxt, out_weights)
    assert after.shapes.totals() == before.shapes.totals()
    for old, new in zip(before.net.layers, after.net.layers):
        assert (old.name, old.type) == (new.name, new.type)
        assert all(np.array_equal(a, b) for a, b in zip(old.blobs, new.blobs))


def test_fork_params_are_read_from_their_text_with_the_forks_defaults():
    net = net_of("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "a" type: "Interp" bottom: "data" top: "a" interp_param { zoom_factor: 2 pad_end: -1 } }
layer { name: "b" type: "Interp" bottom: "data" top: "b" interp_param { shrink_factor: 4 zoom_factor: 3 } }
""")
    a = interp_param(net.layer("a"))
    assert a.settings() == {**INTERP_DEFAULTS, "zoom_factor": 2, "pad_end": -1} and a.given == {"zoom_factor", "pad_end"}
    shapes = infer_shapes(net)
    assert shapes.blob(net.final("a")) == (1, 2, 8 + 7, 8 + 7)  # effective 8: 8 + 7 * (2 - 1)
    assert shapes.blob(net.final("b")) == (1, 2, 7, 7)  # (9 - 1) // 4 + 1 = 3, then 3 + 2 * (3 - 1)


@pytest.mark.parametrize("param, problem", [
    ("interp_param { height: 4 width: 4 depth: 2 }", "interp_param has no field 'depth'"),
    ("interp_param { zoom_factor: 2 pad_beg: 1 }", "must not be positive"),
    ("interp_param { pad_beg: -1 }", "needs height and width, zoom_factor or shrink_factor"),
    ("interp_param { pad_beg: -5 pad_end: -4 zoom_factor: 2 }", "leave nothing of the 9x9 input"),
])
def test_bad_interp_params_are_named(param, problem):
    net = net_of(f"""
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 2 dim: 9 dim: 9 }} }} }}
layer {{ name: "resize" type: "Interp" bottom: "data" top: "resize" {param} }}
""")
    with pytest.raises(ShapeError, match=re.escape(problem)) as caught:
        infer_shapes(net)
    assert "resize" in str(caught.value)


def test_a_fork_param_given_only_in_binary_form_reads_as_its_defaults():
    layer = caffe_pb2.LayerParameter(name="x", type="Interp")
    assert fork_param(layer, "interp_param", INTERP_DEFAULTS).settings() == INTERP_DEFAULTS


# ------------------------------------------------------------------ the torch ops of the new types

NEW_TYPE_NETS = ["unary", "unary_unit", "unary_positive", "clip", "swish_beta", "softmax_spelling", "mobile_forks",
                 "depthwise_fork", "interp", "interp_caffe", "upsample", "activations", "power_exp"]
"""Corpus nets of the types added for forks and OpenCV, and of the element-wise BVLC types given torch ops
with them (their exports are checked against OpenCV or numpy)."""


LOG_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "log" type: "Log" bottom: "data" top: "log" log_param { base: 3 scale: 2 shift: 0.5 } }
layer { name: "log_e" type: "Log" bottom: "log" top: "log_e" log_param { shift: 2 } }
"""


@pytest.mark.parametrize("name", NEW_TYPE_NETS + ["log"])
def test_torch_ops_of_the_new_types_match_their_export(name, tmp_path):
    pytest.importorskip("torch")
    generated = (write_net(LOG_NET, tmp_path, feeds={"data": Feed((2, 3, 4, 5), 0.2, 2.0)}) if name == "log"
                 else generate(name, tmp_path))
    assert_torch_matches_export(generated)


def assert_torch_matches_export(generated) -> None:
    """Every top of a generated net in torch (TEST phase) equals onnxruntime's to 1e-4 * max(1, |ref|)."""
    import torch

    from caffe_surgery.train import TorchNet
    model = load_model(generated.prototxt, generated.caffemodel)
    taps = [top for layer in model.net.layers if not layers.is_data(layer.type) for top in layer.tops]
    feeds = generated.inputs(np.random.default_rng(3))
    expected = Runtime(model.net, model.shapes, taps=taps, device="cpu").run(feeds)
    got = TorchNet(model.net, model.shapes, TEST)({k: torch.from_numpy(v) for k, v in feeds.items()})
    for top in taps:
        reference = expected[top.key]
        tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
        assert np.abs(got[top.key].detach().numpy() - reference).max() <= tolerance, top.key


def test_yolo_trains_through_upsample_and_the_se_gate():
    """The real YOLO net in torch: its forward matches onnxruntime, and a loss on its heads reaches the
    first convolution through the Upsample and the SE blocks' 2-bottom Scale."""
    torch = pytest.importorskip("torch")
    from caffe_surgery.train import TorchNet
    model = load_model(YOLO / "yoloface-500k-v2.prototxt", YOLO / "yoloface-500k-v2.caffemodel")
    x = np.random.default_rng(0).random(model.shapes.blob(model.net.layers[0].tops[0])).astype(np.float32)
    heads = [o.key for o in model.net.outputs()]
    expected = Runtime(model.net, model.shapes, device="cpu").run({"data": x})
    torch_net = TorchNet(model.net, model.shapes, TRAIN)
    got = TorchNet(model.net, model.shapes, TEST)({"data": torch.from_numpy(x)})
    for key in heads:
        tolerance = 1e-4 * max(1.0, float(np.abs(expected[key]).max()))
        assert np.abs(got[key].detach().numpy() - expected[key]).max() <= tolerance, key
    values = torch_net({"data": torch.from_numpy(x)})
    sum(values[key].square().mean() for key in heads).backward()
    first = torch_net.layer_blobs["layer1-conv"][0]
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


# ------------------------------------------------------------------ bad input, one line each

@pytest.mark.parametrize("layer, problem", [
    ('type: "Upsample" bottom: "data" bottom: "mask" top: "out" upsample_param { scale: 2 }',
     "out: Upsample takes 1 bottoms, got 2"),
    ('type: "Upsample" bottom: "data" top: "out" upsample_param { scale: 0 }',
     "out: upsample_param.scale must be at least 1, got 0"),
    ('type: "ShuffleChannel" bottom: "data" top: "out" shuffle_channel_param { group: 4 }',
     "out: the 6 channels of (1, 6, 3, 4) do not split into 4 groups"),
])
def test_bad_fork_layers_stop_with_one_line(layer, problem, tmp_path, capsys):
    inputs = ('layer { name: "data" type: "Input" top: "data" top: "mask" input_param { '
              'shape { dim: 1 dim: 6 dim: 3 dim: 4 } shape { dim: 1 dim: 6 dim: 3 dim: 4 } } }\n')
    prototxt, error = info_error(inputs + f'layer {{ name: "out" {layer} }}\n', tmp_path, capsys)
    assert error == f"error: {prototxt}: {problem}"


def info_error(text: str, tmp_path, capsys) -> tuple:
    """``info`` on a prototxt of ``text``: (its path, the one line it printed); it must exit 1 with one line."""
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(text)
    code, _, err = run(capsys, "info", prototxt)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    return prototxt, err.strip()


def test_compare_on_opencv_says_when_opencv_cannot_run_the_net(capsys):
    net, weights = YOLO / "yoloface-500k-v2.prototxt", YOLO / "yoloface-500k-v2.caffemodel"
    code, _, err = run(capsys, "compare", "--backend", "opencv", net, weights, net, weights)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {net}: OpenCV cannot run this net: ") and '"Upsample"' in line


def test_shuffle_channel_pins_what_it_interleaves_and_group_one_carries():
    net, shapes = pruning_net(NETS["mobile_forks"], 0)
    groups = build_groups(net, shapes)
    assert groups.of_layer("pw2").pinned == ["ShuffleChannel 'shuffle' interleaves its 2 channel groups"]
    assert groups.of_layer("conv1").prunable and groups.of_layer("pw").prunable  # through ReLU6, depthwise aliases
    net, shapes = pruning_net(NETS["mobile_forks"].replace("group: 2 }", "group: 1 }"), 0)
    assert build_groups(net, shapes).of_layer("pw2").prunable
