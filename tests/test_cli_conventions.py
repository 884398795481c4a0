"""Command-line conventions: options after the verb, -q/-v, quiet broken pipes, writers say what they wrote, help."""
import configparser
import os
import subprocess
import sys

import pytest

from caffe_surgery.cli import build_parser, main
from caffe_surgery.io import read_weights, write_binary
from conftest import FASHION_MNIST, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*argv, cwd=REPO, **options):
    return subprocess.run([sys.executable, "-m", "caffe_surgery.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, **options)


def test_debug_is_accepted_after_the_verb(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    for argv in (["--debug", "info", bad], ["info", bad, "--debug"]):
        done = cli(*argv)
        assert done.returncode == 1 and "Traceback" in done.stderr and "error: " in done.stderr
    done = cli("info", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.startswith("error: ")


@pytest.fixture
def extra_layer_weights(tmp_path):
    """The sample's weights plus a layer the net lacks: loading warns about it."""
    weights = read_weights(SAMPLE_WEIGHTS)
    ghost = weights.layer.add()
    ghost.CopyFrom(next(layer for layer in weights.layer if len(layer.blobs)))
    ghost.name = "ghost"
    write_binary(tmp_path / "extra.caffemodel", weights)
    return tmp_path / "extra.caffemodel"


def test_quiet_prints_errors_only_and_verbose_prints_progress(extra_layer_weights):
    done = cli("info", SAMPLE, "-w", extra_layer_weights)
    assert done.returncode == 0 and "lenet_maxout" in done.stdout
    assert done.stderr.startswith("warning: ") and "ghost" in done.stderr and "read " not in done.stderr
    for argv in (["-q", "info"], ["info", "--quiet"]):
        done = cli(*argv, SAMPLE, "-w", extra_layer_weights)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = cli("info", SAMPLE, "-w", extra_layer_weights, "-v")
    assert done.returncode == 0
    assert f"INFO: read {SAMPLE}: 11 layers" in done.stderr and "WARNING: " in done.stderr and "ghost" in done.stderr
    done = cli("-q", "info", f"{SAMPLE}.missing")
    assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("error: ")


def test_a_pipe_closed_early_ends_quietly():
    process = subprocess.Popen([sys.executable, "-m", "caffe_surgery.cli", "info", str(SAMPLE), "--groups"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=ENV)
    process.stdout.close()  # the reader is gone before anything is written, as with `| head -0`
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert err == ""


def test_head_takes_the_first_lines_without_a_traceback():
    done = subprocess.run(f"{sys.executable} -m caffe_surgery.cli info {SAMPLE} | head -n 2", shell=True,
                          capture_output=True, text=True, cwd=REPO, env=ENV)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2 and "Traceback" not in done.stderr


def test_upgrade_and_export_say_what_they_wrote(tmp_path, capsys):
    assert main(["upgrade", str(SAMPLE), str(tmp_path / "up.prototxt"), "-w", str(SAMPLE_WEIGHTS),
                 "-o", str(tmp_path / "up.caffemodel")]) == 0
    out = capsys.readouterr().out
    for name in ("up.prototxt", "up.caffemodel"):
        assert f"{tmp_path / name} ({(tmp_path / name).stat().st_size:,} bytes" in out
    assert main(["upgrade", str(SAMPLE), str(tmp_path / "only.prototxt")]) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {tmp_path / 'only.prototxt'} ({(tmp_path / 'only.prototxt').stat().st_size:,} bytes)")


def test_data_help_lists_every_spec_and_convert_data_help_shows_the_key_format():
    parser = build_parser()
    verbs = next(a for a in parser._subparsers._group_actions).choices
    with_data = [name for name, sub in verbs.items() if any("--data" in a.option_strings for a in sub._actions)]
    assert {"eval", "prune", "relevance", "compare", "train", "reproduce"} <= set(with_data)
    for verb in with_data:
        for action in verbs[verb]._actions:
            if {"--data", "--test-data"} & set(action.option_strings):
                for spec in ("lmdb:PATH", "list:FILE[:ROOT]", "idx:IMAGES[:LABELS]", "npy:PATH", "csv:PATH"):
                    assert spec in action.help, (verb, action.option_strings, spec)
    done = cli("convert-data", "--help")
    assert "(keys %08d)" in done.stdout and "%%" not in done.stdout
    assert "(keys %08d)" in cli("--help").stdout


def test_the_train_extra_is_a_range_the_installed_torch_satisfies():
    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirement = Requirement(config["options.extras_require"]["train"].strip())
    assert requirement.name == "torch" and not any(s.operator == "==" for s in requirement.specifier)
    assert {s.operator for s in requirement.specifier} == {">=", "<"}
    torch = pytest.importorskip("torch")
    assert requirement.specifier.contains(torch.__version__.split("+")[0])


def test_sample_paths_fall_back_to_the_bundled_files(tmp_path):
    done = cli("info", "samples/lenet_maxout.prototxt", "-w", "samples/lenet_maxout.caffemodel", cwd=tmp_path)
    assert done.returncode == 0 and "240,470 parameters" in done.stdout
    done = cli("info", "samples/missing.prototxt", cwd=tmp_path)
    assert done.returncode == 1 and "samples/missing.prototxt" in done.stderr


@pytest.mark.needs_fashion_mnist
def test_the_bundled_test_subset_is_the_first_thousand_fashion_mnist_test_images():
    import numpy as np

    from caffe_surgery.data.arrays import read_idx

    with np.load(REPO / "samples" / "fashion_mnist_t10k_1000.npz") as subset:
        np.testing.assert_array_equal(subset["images"], read_idx(str(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"))[:1000])
        np.testing.assert_array_equal(subset["labels"], read_idx(str(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"))[:1000])
