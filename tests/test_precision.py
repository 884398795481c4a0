"""--precision fp16: the files are what OpenCV's shrinkCaffeModel writes, load in OpenCV and stay close to fp32.

Tolerances: on the bundled 1000 Fashion-MNIST test images the fp16 LeNet sample's
class probabilities (OpenCV) differ from fp32 by at most 1e-3, top-1 predictions agree
on at least 99.5 % of the images and the accuracy moves by at most 0.3 points.
"""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.blobs import blob_to_array
from caffe_surgery.cli import main
from caffe_surgery.io import read_weights, write_text
from caffe_surgery.model import load_model
from caffe_surgery.precision import HALF_LAYER_TYPES
from caffe_surgery.save import save_caffemodel, save_prototxt
from conftest import REAL_MODELS, REPO
from netgen import Feed, write_net

cv2 = pytest.importorskip("cv2")
SAMPLE = (REPO / "samples" / "lenet_maxout.prototxt", REPO / "samples" / "lenet_maxout.caffemodel")
SUBSET = REPO / "samples" / "fashion_mnist_t10k_1000.npz"
LANDMARK = (REAL_MODELS / "landmark106_dq" / "landmark106.prototxt",
            REAL_MODELS / "landmark106_dq" / "landmark106.caffemodel")
LENET_V1 = (REAL_MODELS / "lenet_v1_everpeace" / "lenet.prototxt",
            REAL_MODELS / "lenet_v1_everpeace" / "lenet_iter_10000.caffemodel")
BN_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
"""


def shrunk_by_opencv(fp32_caffemodel, tmp_path):
    out = tmp_path / "opencv_fp16.caffemodel"
    cv2.dnn.shrinkCaffeModel(str(fp32_caffemodel), str(out))
    return out


def assert_opencv_fp16_layout(path):
    """Convolution/InnerProduct blobs hold FLOAT16 raw_data and no float data; the rest stays float32."""
    for layer in read_weights(path).layer:
        for blob in layer.blobs:
            if layer.type in HALF_LAYER_TYPES:
                assert blob.raw_data_type == caffe_pb2.FLOAT16 and not len(blob.data)
                assert len(blob.raw_data) == 2 * blob_to_array(blob).size
            else:
                assert not blob.HasField("raw_data") and len(blob.data)


@pytest.mark.parametrize("pair", [SAMPLE, LANDMARK], ids=["lenet_maxout", "landmark106"])
def test_fp16_caffemodel_is_byte_for_byte_opencvs_shrinkCaffeModel(pair, tmp_path):
    model = load_model(*pair)
    save_caffemodel(model.net, tmp_path / "fp32.caffemodel")
    save_caffemodel(model.net, tmp_path / "fp16.caffemodel", precision="fp16")
    theirs = shrunk_by_opencv(tmp_path / "fp32.caffemodel", tmp_path)
    assert read_weights(tmp_path / "fp16.caffemodel") == read_weights(theirs)  # field by field
    assert (tmp_path / "fp16.caffemodel").read_bytes() == theirs.read_bytes()
    assert_opencv_fp16_layout(tmp_path / "fp16.caffemodel")
    back = load_model(pair[0], tmp_path / "fp16.caffemodel")
    for ours, original in zip(back.net.layers, model.net.layers):
        for array, reference in zip(ours.blobs, original.blobs):
            rounded = reference.astype(np.float16) if ours.type in HALF_LAYER_TYPES else reference
            np.testing.assert_array_equal(array, np.asarray(rounded, np.float32).reshape(array.shape))


def test_fp16_sample_loads_in_opencv_within_the_stated_tolerance(tmp_path):
    model = load_model(*SAMPLE)
    save_prototxt(model.net, tmp_path / "net.prototxt")
    save_caffemodel(model.net, tmp_path / "net.caffemodel", precision="fp16")
    with np.load(SUBSET) as arrays:
        images, labels = arrays["images"][:, None].astype(np.float32) / 255, arrays["labels"]
    outputs = []
    for prototxt, weights in ((SAMPLE[0], SAMPLE[1]), (tmp_path / "net.prototxt", tmp_path / "net.caffemodel")):
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        net.setInput(images)
        outputs.append(net.forward().reshape(len(images), -1))
    fp32, fp16 = outputs
    assert 0 < np.abs(fp32 - fp16).max() <= 1e-3
    assert (fp32.argmax(1) == fp16.argmax(1)).mean() >= 0.995
    accuracy = [(o.argmax(1) == labels).mean() for o in outputs]
    assert accuracy[0] > 0.85 and abs(accuracy[0] - accuracy[1]) <= 0.003


@pytest.mark.parametrize("pair", [SAMPLE, LENET_V1], ids=["current", "v1_legacy_dims"])
def test_upgrade_fp16_is_shrinkCaffeModel_of_the_fp32_upgrade(pair, tmp_path, capsys):
    for precision in ("fp32", "fp16"):
        assert main(["upgrade", str(pair[0]), str(tmp_path / f"{precision}.prototxt"), "-w", str(pair[1]),
                     "-o", str(tmp_path / f"{precision}.caffemodel"), "--precision", precision]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'fp16.caffemodel'} ({(tmp_path / 'fp16.caffemodel').stat().st_size:,} bytes, fp16)" in out
    theirs = shrunk_by_opencv(tmp_path / "fp32.caffemodel", tmp_path)
    assert (tmp_path / "fp16.caffemodel").read_bytes() == theirs.read_bytes()
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "fp16.prototxt"), str(tmp_path / "fp16.caffemodel"))
    assert net.getLayerNames()


def _writer_commands(tmp_path):
    """(verb, argv without --precision, the caffemodel it writes) for the writers that need no training."""
    bn = write_net(BN_NET, tmp_path, "bn", feeds={"data": Feed((1, 3, 8, 8))}, seed=1)
    prototxt, weights = (str(p) for p in SAMPLE)
    return [
        ("prune", ["prune", prototxt, "-w", weights, "--criterion", "weight-l1", "--ratio", "0.5",
                   "-o", str(tmp_path / "pruned")], tmp_path / "pruned.caffemodel"),
        ("sparsify", ["sparsify", prototxt, "-w", weights, "--sparsity", "0.5", "-o", str(tmp_path / "sparse")],
         tmp_path / "sparse.caffemodel"),
        ("fold-bn", ["fold-bn", str(bn.prototxt), "-w", str(bn.caffemodel), "-o", str(tmp_path / "folded")],
         tmp_path / "folded.caffemodel"),
    ]


def test_every_writer_writes_fp16_and_says_how_much_the_outputs_moved(tmp_path, capsys):
    for verb, argv, caffemodel in _writer_commands(tmp_path):
        assert main(argv + ["--precision", "fp16"]) == 0, verb
        out = capsys.readouterr().out
        assert_opencv_fp16_layout(caffemodel)
        note = next(line for line in out.splitlines() if "outputs differ from float32 by at most" in line)
        assert 0 < float(note.rsplit("at most ", 1)[1].split()[0]) < 1e-2, note
        assert f"{caffemodel} ({caffemodel.stat().st_size:,} bytes, fp16)" in out
        fp32 = caffemodel.with_name(f"fp32_{caffemodel.name}")
        caffemodel.rename(fp32)
        assert main(argv) == 0, verb
        capsys.readouterr()
        # the fp16 file is the fp32 one shrunk by OpenCV
        assert fp32.read_bytes() != caffemodel.read_bytes()
        assert shrunk_by_opencv(caffemodel, tmp_path).read_bytes() == fp32.read_bytes(), verb


def test_prune_with_data_reports_the_fp16_accuracy(tmp_path, capsys):
    prototxt, weights = (str(p) for p in SAMPLE)
    assert main(["prune", prototxt, "-w", weights, "--criterion", "weight-l1", "--ratio", "0.3", "--precision", "fp16",
                 "--data", f"npy:{SUBSET}", "--scale", "0.00392156862745", "--limit", "500",
                 "-o", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    import json
    accuracy = json.loads((tmp_path / "small.report.json").read_text())["accuracy"]
    assert abs(accuracy["after_fp16"] - accuracy["after"]) <= 0.004
    assert f"top-1 accuracy {accuracy['after_fp16']:.4f} in fp16" in out


def test_train_writes_fp16_weights_that_are_the_fp32_run_rounded(tmp_path, capsys):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.normal(size=(8, 3, 1, 1)).astype(np.float32),
             labels=np.array([0, 1, 2, 1, 0, 3, 1, 2]))
    solver = text_format.Parse('base_lr: 0.05 lr_policy: "fixed" max_iter: 4 random_seed: 1 solver_mode: CPU',
                               caffe_pb2.SolverParameter())
    solver.net_param.CopyFrom(text_format.Parse(
        'layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "unused" batch_size: 2 } }'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1 '
        'weight_filler { type: "gaussian" std: 0.1 } } }'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }',
        caffe_pb2.NetParameter()))
    write_text(tmp_path / "solver.prototxt", solver)
    for precision in ("fp32", "fp16"):
        assert main(["train", str(tmp_path / "solver.prototxt"), "--data", f"npy:{tmp_path / 'data.npz'}",
                     "--device", "cpu", "--precision", precision, "-o", str(tmp_path / f"{precision}.caffemodel")]) == 0
    assert "bytes, fp16)" in capsys.readouterr().out
    assert_opencv_fp16_layout(tmp_path / "fp16.caffemodel")
    fp32, fp16 = ({layer.name: [blob_to_array(b) for b in layer.blobs] for layer in read_weights(path).layer}
                  for path in (tmp_path / "fp32.caffemodel", tmp_path / "fp16.caffemodel"))
    for a, b in zip(fp32["ip"], fp16["ip"]):
        np.testing.assert_array_equal(a.astype(np.float16).astype(np.float32), b)
