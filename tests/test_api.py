"""The Python API: the README's example runs, reprs say what objects are, the API and the CLI agree."""
import configparser
import os
import re
import subprocess
import sys

import cv2
import numpy as np

import caffe_surgery as cs
from caffe_surgery.cli import main
from caffe_surgery.io import read_weights
from conftest import REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
SUBSET = REPO / "samples" / "fashion_mnist_t10k_1000.npz"


def readme_example() -> str:
    """The python block of the README's "Python API" section."""
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_prunes_within_a_stated_accuracy_loss(tmp_path, monkeypatch, capsys):
    (tmp_path / "samples").symlink_to(REPO / "samples")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    model, small, before, after = (namespace[n] for n in ("model", "small", "before", "after"))
    assert "Model('lenet_maxout': 11 layers, input images 1x1x28x28, 240,470 parameters" in printed
    assert "Groups(6 groups, prunable: conv1, conv2, fc_3)" in printed
    assert before.samples == after.samples == 1000
    assert before.accuracy(1) > 0.85 and after.accuracy(1) < before.accuracy(1)
    assert small.params < model.params / 2 and small.macs < model.macs / 2
    for path in ("out/lenet_maxout.onnx", "out/lenet_maxout_small.prototxt", "out/lenet_maxout_small.caffemodel"):
        assert (tmp_path / path).stat().st_size > 0
    # the fp16 pair loads in OpenCV and predicts what the in-memory pruned model predicts on the subset
    net = cv2.dnn.readNetFromCaffe("out/lenet_maxout_small.prototxt", "out/lenet_maxout_small.caffemodel")
    with np.load(SUBSET) as arrays:
        images, labels = arrays["images"][:200, None].astype(np.float32) / 255, arrays["labels"][:200]
    net.setInput(images)
    theirs = net.forward()
    ours = cs.run(small, images)["class_proba"]
    assert np.abs(theirs.reshape(ours.shape) - ours).max() < 1e-3
    assert (theirs.reshape(len(labels), -1).argmax(1) == ours.reshape(len(labels), -1).argmax(1)).mean() >= 0.99


def test_import_is_light_and_the_version_has_one_source():
    code = "import sys, caffe_surgery; print(caffe_surgery.__version__, 'torch' in sys.modules, 'onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.split() == [cs.__version__, "False", "False"]
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    assert config["metadata"]["version"] == "attr: caffe_surgery.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", cs.__version__)


def test_version_option(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"caffe-surgery {cs.__version__}"


def test_reprs_say_what_the_objects_are():
    model = cs.load(SAMPLE, SAMPLE_WEIGHTS)
    groups = cs.channel_groups(model)
    plan = cs.make_plan(model, "weight-l1", ratio=0.5)
    assert repr(model) == ("Model('lenet_maxout': 11 layers, input images 1x1x28x28, 240,470 parameters, "
                           "2,165,632 MACs, with weights)")
    assert repr(model.net) == "Net('lenet_maxout': 11 layers, inputs images, outputs class_proba)"
    assert repr(model.layers[1]) == "Layer('conv1', 'Convolution')"
    assert repr(groups.of_layer("conv2")) == "Group(2, 'conv2': 52 channels, 3 members, prunable)"
    assert "maxout 64x4" in repr(groups.of_layer("fc_3"))
    assert repr(plan) == "Plan(conv1 keeps 10, conv2 keeps 26, fc_3 keeps 128; criterion='weight-l1', ratio=0.5)"
    data = cs.open_data(model, f"npy:{SUBSET}", scale=1 / 255, limit=64)
    assert repr(cs.gather_statistics(model, "apoz", data)) == "Statistics(64 samples: channel sum+zeros of conv1, conv2, fc_3@relu3)"
    assert re.fullmatch(r"Evaluation\(64 samples: top-1 0\.\d{4}\)", repr(cs.accuracy(model, data)))


def test_api_prune_writes_the_same_pair_as_the_command_line(tmp_path, capsys):
    model = cs.load(SAMPLE, SAMPLE_WEIGHTS)
    plan = cs.make_plan(model, "weight-l2", ratio=0.3)
    plan.save(tmp_path / "plan.json")
    cs.save_pair(cs.prune(model, plan), tmp_path / "api")
    assert main(["prune", str(SAMPLE), "-w", str(SAMPLE_WEIGHTS), "--plan", str(tmp_path / "plan.json"),
                 "-o", str(tmp_path / "cli")]) == 0
    for suffix in (".prototxt", ".caffemodel"):
        assert (tmp_path / f"api{suffix}").read_bytes() == (tmp_path / f"cli{suffix}").read_bytes()
    assert read_weights(tmp_path / "api.caffemodel") == read_weights(tmp_path / "cli.caffemodel")
