"""BatchNorm/Scale folding is exact: OpenCV and onnxruntime give the same outputs before and after.

Tolerance: 1e-4 relative to max(1, max |reference|). OpenCV runs the original
nets with its layer fusion off: OpenCV 4.x fuses a BatchNorm into a grouped
Deconvolution wrongly (off by ~0.4 on the generated net), while the folded
nets run with OpenCV's defaults (no such pair is left to fuse). OpenCV ignores InnerProduct's ``transpose``,
so that case is checked with onnxruntime only.
"""
import numpy as np
import pytest

from caffe_surgery.fold import fold, fold_batchnorm, fold_command, fold_scale
from caffe_surgery.model import load_model
from caffe_surgery.runtime import Runtime
from caffe_surgery.save import save_caffemodel, save_prototxt
from caffe_surgery.shapes import infer_shapes
from conftest import REAL_MODELS
from netgen import Feed, write_net

cv2 = pytest.importorskip("cv2")
TOLERANCE = 1e-4
LANDMARK = REAL_MODELS / "landmark106_dq" / "landmark106"

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
  convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "dw_bn" type: "BatchNorm" bottom: "dw" top: "dw_bn" }
layer { name: "dw_sc" type: "Scale" bottom: "dw_bn" top: "dw_bn" scale_param { bias_term: true } }
layer { name: "pw" type: "Convolution" bottom: "dw_bn" top: "pw"
  convolution_param { num_output: 4 kernel_size: 1 bias_term: false } }
layer { name: "pw_bn" type: "BatchNorm" bottom: "pw" top: "pw_bn" batch_norm_param { use_global_stats: true } }
layer { name: "pw_sc" type: "Scale" bottom: "pw_bn" top: "pw_sc" scale_param { bias_term: true } }
layer { name: "imp" type: "Convolution" bottom: "pw_sc" top: "imp" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "imp_w" type: "Scale" bottom: "imp" top: "imp" }
layer { name: "shared" type: "Convolution" bottom: "imp" top: "shared"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "shared_bn" type: "BatchNorm" bottom: "shared" top: "shared_bn" }
layer { name: "sum" type: "Eltwise" bottom: "shared" bottom: "shared_bn" top: "sum" }
layer { name: "up" type: "Deconvolution" bottom: "sum" top: "up"
  convolution_param { num_output: 4 group: 2 kernel_size: 2 stride: 2 } }
layer { name: "up_bn" type: "BatchNorm" bottom: "up" top: "up" }
layer { name: "up_sc" type: "Scale" bottom: "up" top: "up" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "fc_bn" type: "BatchNorm" bottom: "fc" top: "fc_bn" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc_bn" top: "fc2"
  inner_product_param { num_output: 3 bias_term: false } }
layer { name: "fc2_bn" type: "BatchNorm" bottom: "fc2" top: "fc2" }
"""
BATCHNORM_CHAINS = ["bn1", "sc1", "dw_bn", "dw_sc", "pw_bn", "pw_sc", "up_bn", "up_sc", "fc_bn", "fc2_bn"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    written = write_net(NET, tmp_path_factory.mktemp("fold"), feeds={"data": Feed((2, 3, 9, 8))}, seed=3)
    return written, load_model(written.prototxt, written.caffemodel)


def _inputs(shapes, net, seed=0):
    top = net.layers[0].tops[0]
    return np.random.default_rng(seed).standard_normal(shapes.blob(top)).astype(np.float32)


def _opencv(net, prototxt, caffemodel, names, inputs, fusion=True):
    """The named blobs (final versions) as OpenCV's Caffe importer computes them."""
    loaded = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    loaded.enableFusion(fusion)
    loaded.setInput(inputs)
    return dict(zip(names, loaded.forward([net.final(name).producer for name in names])))


def _onnxruntime(net, shapes, inputs):
    results = Runtime(net, shapes).run(inputs)
    return {v.name: results[v.key] for v in net.outputs()}


def _assert_close(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE * max(1.0, float(np.abs(want).max()))


def _assert_same_outputs(original, original_files, folded, directory, inputs, fusion=True):
    """The folded net keeps the output names and computes the same values, in OpenCV and onnxruntime.

    ``fusion`` is OpenCV's setting for the folded net (the original always runs without)."""
    names = [v.name for v in original.net.outputs()]
    assert [v.name for v in folded.outputs()] == names
    save_prototxt(folded, directory / "folded.prototxt")
    save_caffemodel(folded, directory / "folded.caffemodel")
    want = _opencv(original.net, *original_files, names, inputs, fusion=False)
    got = _opencv(folded, directory / "folded.prototxt", directory / "folded.caffemodel", names, inputs, fusion)
    folded_shapes = infer_shapes(folded, {"data": tuple(inputs.shape)})
    want_ort = _onnxruntime(original.net, original.shapes, inputs)
    got_ort = _onnxruntime(folded, folded_shapes, inputs)
    for name in names:
        _assert_close(got[name], want[name])
        _assert_close(got_ort[name], want_ort[name])
        _assert_close(want_ort[name], want[name])


def test_landmark106_folds_completely(tmp_path):
    files = (f"{LANDMARK}.prototxt", f"{LANDMARK}.caffemodel")
    model = load_model(*files)
    folded, removed = fold_batchnorm(model.net, model.shapes)
    assert not {layer.type for layer in folded.layers} & {"BatchNorm", "Scale"}
    assert len(removed) == 76 and len(folded.layers) == len(model.net.layers) - 76
    assert all(len(folded.layer(l.name).blobs) == 2 for l in model.net.layers if l.type == "Convolution")
    inputs = np.random.default_rng(1).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
    _assert_same_outputs(model, files, folded, tmp_path, inputs)


@pytest.mark.parametrize("folder, expected", [
    (fold_batchnorm, BATCHNORM_CHAINS),
    (fold_scale, ["imp_w"]),
    (fold, BATCHNORM_CHAINS[:6] + ["imp_w"] + BATCHNORM_CHAINS[6:]),
])
def test_generated_net_folds_exactly(generated, tmp_path, folder, expected):
    written, model = generated
    folded, removed = folder(model.net, model.shapes)
    assert removed == expected
    assert [l.name for l in folded.layers] == [l.name for l in model.net.layers if l.name not in expected]
    # fold_scale leaves the grouped Deconvolution + BatchNorm that OpenCV's fusion gets wrong
    _assert_same_outputs(model, (written.prototxt, written.caffemodel), folded, tmp_path,
                         _inputs(model.shapes, model.net), fusion=folder is not fold_scale)


def test_folding_wires_names_and_biases(generated):
    _, model = generated
    before = {layer.name: [b.copy() for b in layer.blobs] for layer in model.net.layers}
    folded, _ = fold(model.net, model.shapes)
    for layer in model.net.layers:
        for old, now in zip(before[layer.name], layer.blobs):
            np.testing.assert_array_equal(old, now)
    assert model.net.has_layer("bn1")
    tops = {layer.name: [t.name for t in layer.tops] for layer in folded.layers}
    assert tops["conv1"] == ["conv1"] and tops["dw"] == ["dw_bn"] and tops["pw"] == ["pw_sc"]
    assert tops["fc"] == ["fc_bn"] and tops["fc2"] == ["fc2"]
    for name in ("dw", "pw", "fc2"):
        layer = folded.layer(name)
        params = layer.param.inner_product_param if layer.type == "InnerProduct" else layer.param.convolution_param
        assert params.bias_term and len(layer.blobs) == 2 and layer.blobs[1].shape == (layer.blobs[0].shape[0],)
    assert folded.layer("shared_bn").type == "BatchNorm"
    assert [t.name for t in folded.layer("shared").tops] == ["shared"]


def test_zero_moving_average_factor_reads_as_zero_statistics(generated):
    _, model = generated
    bn = model.net.layer("fc_bn")
    saved = bn.blobs[2].copy()
    bn.blobs[2][...] = 0
    try:
        folded, removed = fold_batchnorm(model.net, model.shapes)
        inputs = _inputs(model.shapes, model.net, seed=2)
        want = _onnxruntime(model.net, model.shapes, inputs)
        got = _onnxruntime(folded, infer_shapes(folded, {"data": inputs.shape}), inputs)
    finally:
        bn.blobs[2][...] = saved
    assert "fc_bn" in removed
    for name, value in want.items():
        _assert_close(got[name], value)


def test_transposed_inner_product_folds(tmp_path):
    text = NET.replace("num_output: 5 }", "num_output: 5 transpose: true }")
    written = write_net(text, tmp_path, feeds={"data": Feed((2, 3, 9, 8))}, seed=5)
    model = load_model(written.prototxt, written.caffemodel)
    folded, removed = fold_batchnorm(model.net, model.shapes)
    assert "fc_bn" in removed and folded.layer("fc").param.inner_product_param.transpose
    inputs = _inputs(model.shapes, model.net, seed=6)
    want = _onnxruntime(model.net, model.shapes, inputs)
    got = _onnxruntime(folded, infer_shapes(folded, {"data": inputs.shape}), inputs)
    for name, value in want.items():
        _assert_close(got[name], value)


def test_batch_statistics_are_not_folded(tmp_path):
    text = NET.replace("batch_norm_param { use_global_stats: true }", "batch_norm_param { use_global_stats: false }")
    written = write_net(text, tmp_path, feeds={"data": Feed((2, 3, 9, 8))})
    model = load_model(written.prototxt, written.caffemodel)
    _, removed = fold_batchnorm(model.net, model.shapes)
    assert "pw_bn" not in removed and "pw_sc" not in removed and "dw_bn" in removed


def test_fold_command_writes_a_pair_opencv_loads(generated, tmp_path, capsys):
    written, model = generated
    prefix = tmp_path / "out" / "folded"
    assert fold_command(written.prototxt, written.caffemodel, prefix) == 0
    assert "folded 11 layers" in capsys.readouterr().out
    reloaded = load_model(f"{prefix}.prototxt", f"{prefix}.caffemodel")
    assert len(reloaded.net.layers) == len(model.net.layers) - 11
    inputs = _inputs(model.shapes, model.net, seed=4)
    names = [v.name for v in model.net.outputs()]
    want = _opencv(model.net, written.prototxt, written.caffemodel, names, inputs, fusion=False)
    got = _opencv(reloaded.net, f"{prefix}.prototxt", f"{prefix}.caffemodel", names, inputs)
    for name in names:
        _assert_close(got[name], want[name])
