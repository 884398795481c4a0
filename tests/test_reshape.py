"""reshape: new input shapes written into prototxts and checked layer by layer; MACs per image whatever the batch."""
import json

import cv2
import numpy as np
import pytest

from caffe_surgery.cli import main
from caffe_surgery.io import read_net_text
from caffe_surgery.model import load_model
from caffe_surgery.runtime import Runtime
from conftest import REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
LENET = REAL_MODELS / "lenet_v1_everpeace"
needs_lenet = pytest.mark.skipif(not LENET.is_dir(), reason=f"real models not at {REAL_MODELS}")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def input_dims(prototxt) -> list[list[int]]:
    return [list(s.dim) for l in read_net_text(prototxt).layer if l.type == "Input" for s in l.input_param.shape]


def test_reshape_writes_the_batch_and_opencv_runs_the_batch_as_onnxruntime_runs_single_images(tmp_path, capsys):
    code, out, _ = run(capsys, "reshape", SAMPLE, "-w", SAMPLE_WEIGHTS, "--input", "images=8,1,28,28",
                       "-o", tmp_path / "b8")
    assert code == 0 and "b8.prototxt" in out and "b8.caffemodel" in out
    assert input_dims(tmp_path / "b8.prototxt") == [[8, 1, 28, 28]]
    assert (tmp_path / "b8.caffemodel").read_bytes() == SAMPLE_WEIGHTS.read_bytes()
    images = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "b8.prototxt"), str(tmp_path / "b8.caffemodel"))
    net.setInput(images)
    batch = net.forward()
    single = load_model(SAMPLE, SAMPLE_WEIGHTS)
    runtime = Runtime(single.net, single.shapes)
    expected = np.concatenate([runtime.run(image[None])["class_proba"] for image in images])
    np.testing.assert_allclose(batch.reshape(expected.shape), expected, atol=1e-5)


@needs_lenet
def test_a_legacy_input_header_gets_the_new_shape_and_macs_stay_per_image(tmp_path, capsys):
    code, _, _ = run(capsys, "reshape", LENET / "lenet.prototxt", "--input", "data=2,1,28,28", "-o", tmp_path / "b2")
    assert code == 0 and input_dims(tmp_path / "b2.prototxt") == [[2, 1, 28, 28]]
    summaries = []
    for prototxt in (LENET / "lenet.prototxt", tmp_path / "b2.prototxt"):
        code, out, _ = run(capsys, "info", prototxt, "--json")
        summaries.append(json.loads(out))
    assert [s["batch"] for s in summaries] == [64, 2]
    # conv1 20*24*24*25 + conv2 50*8*8*500 + ip1 800*500 + ip2 500*10, per image at both batches
    assert [s["totals"]["macs"] for s in summaries] == [288_000 + 1_600_000 + 400_000 + 5_000] * 2
    code, out, _ = run(capsys, "info", tmp_path / "b2.prototxt")
    assert "2,293,000 MACs per image (shapes at batch 2)" in out


def test_a_shape_that_does_not_fit_names_the_layer_and_writes_nothing(tmp_path, capsys):
    code, _, err = run(capsys, "reshape", SAMPLE, "--input", "images=1,1,8,8", "-o", tmp_path / "small")
    assert code == 1 and err.count("\n") == 1 and "conv2: kernel does not fit the bottom (1, 20, 2, 2)" in err
    code, _, err = run(capsys, "reshape", SAMPLE, "-w", SAMPLE_WEIGHTS, "--input", "images=1,1,32,32",
                       "-o", tmp_path / "big")
    assert code == 1 and "fc_3: blob 0 has shape (256, 832), the layer expects (256, 1300)" in err
    code, _, err = run(capsys, "reshape", SAMPLE, "--input", "pixels=1,1,28,28", "-o", tmp_path / "other")
    assert code == 1 and "no data or input layer makes pixels" in err
    assert not any(tmp_path.iterdir())


def test_dummy_memory_and_data_layers_take_the_new_shape(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text("""
layer { name: "dummy" type: "DummyData" top: "a" dummy_data_param { num: 4 channels: 3 height: 8 width: 8 } }
layer { name: "memory" type: "MemoryData" top: "b" top: "b_label"
        memory_data_param { batch_size: 4 channels: 3 height: 8 width: 8 } }
layer { name: "data" type: "Data" top: "c" top: "c_label" include { phase: TRAIN }
        data_param { source: "missing_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "data" type: "Data" top: "c" top: "c_label" include { phase: TEST }
        data_param { source: "missing_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "conv" type: "Convolution" bottom: "c" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
""")
    code, _, err = run(capsys, "reshape", net, "--input", "a=2,3,16,16", "--input", "b=2,3,16,16",
                       "--input", "c=16,1,28,28", "-o", tmp_path / "out")
    assert code == 0, err
    layers = read_net_text(tmp_path / "out.prototxt").layer
    assert list(layers[0].dummy_data_param.shape[0].dim) == [2, 3, 16, 16] and not layers[0].dummy_data_param.num
    p = layers[1].memory_data_param
    assert (p.batch_size, p.channels, p.height, p.width) == (2, 3, 16, 16)
    assert [layers[2].data_param.batch_size, layers[3].data_param.batch_size] == [16, 16]
    assert [r.phase for r in layers[2].include] == [0] and layers[3].data_param.source == "missing_lmdb"


def test_prune_with_input_writes_that_shape_and_reports_macs_per_image(tmp_path, capsys):
    code, out, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
                       "--input", "images=4,1,28,28", "-o", tmp_path / "small")
    assert code == 0 and "MACs per image 2,165,632 ->" in out and "shapes at batch 4" in out
    assert input_dims(tmp_path / "small.prototxt") == [[4, 1, 28, 28]]
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["batch"] == 4 and report["totals"]["macs"][0] == 2_165_632
