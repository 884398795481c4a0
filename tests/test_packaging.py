"""The wheel carries the licence, the bundled samples and the Caffe schema, and finds them at run time."""
import subprocess
import sys
import zipfile

import pytest

from caffe_surgery.data import parse_data_spec
from caffe_surgery.resources import bundled, input_path
from conftest import REPO


def test_bundled_files_are_the_checkouts_own():
    for relative in ("samples/lenet_maxout.prototxt", "samples/lenet_maxout.caffemodel",
                     "samples/fashion_mnist_t10k_1000.npz", "proto/caffe.proto"):
        assert bundled(relative).read_bytes() == (REPO / relative).read_bytes()


def test_input_paths_fall_back_only_for_missing_bundled_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert input_path("samples/lenet_maxout.prototxt") == str(bundled("samples/lenet_maxout.prototxt"))
    assert input_path("samples/nothing.prototxt") == "samples/nothing.prototxt"
    assert input_path("other/lenet_maxout.prototxt") == "other/lenet_maxout.prototxt"
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "lenet_maxout.prototxt").write_text("mine")
    assert input_path("samples/lenet_maxout.prototxt") == "samples/lenet_maxout.prototxt"


def test_data_specs_find_the_bundled_sample_images_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = parse_data_spec("npy:samples/fashion_mnist_t10k_1000.npz")
    assert len(source) == 1000 and tuple(source.shape) == (1, 28, 28)


def test_the_wheel_holds_the_licence_samples_and_schema(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    wheel, = tmp_path.glob("caffe_surgery-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for relative in ("samples/lenet_maxout.prototxt", "samples/lenet_maxout.caffemodel",
                         "samples/fashion_mnist_t10k_1000.npz", "proto/caffe.proto"):
            assert archive.read(f"caffe_surgery/{relative}") == (REPO / relative).read_bytes()
        licence = next(n for n in names if n.endswith("licenses/LICENSE"))
        assert archive.read(licence) == (REPO / "LICENSE").read_bytes()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "caffe-surgery = caffe_surgery.cli:main" in entry_points
    assert "MIT License" in (REPO / "LICENSE").read_text() and "caffe-surgery contributors" in (REPO / "LICENSE").read_text()
