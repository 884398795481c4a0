"""Charts with matplotlib: PNGs that decode, axes with ticks, labels and legends; a clear error without matplotlib."""
import json
import sys

import cv2
import pytest

from caffe_surgery.cli import main
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.plot import curves_figure, plot_curves, reproduction_figure, tolerance_figure
from conftest import FASHION_MNIST, REPO

pytest.importorskip("matplotlib")

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
SENSITIVITY = {"conv1": [(0.0, 0.91), (0.25, 0.9), (0.5, 0.85)], "conv2": [(0.0, 0.91), (0.25, 0.91), (0.5, 0.88)]}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def drawn_texts(figure):
    """Axis labels, title, tick labels (after a draw) and legend entries of the figure's one axes."""
    figure.canvas.draw()
    axes = figure.axes[0]
    return {"x": axes.get_xlabel(), "y": axes.get_ylabel(), "title": axes.get_title(),
            "xticks": [t.get_text() for t in axes.get_xticklabels() if t.get_text()],
            "yticks": [t.get_text() for t in axes.get_yticklabels() if t.get_text()],
            "legend": [t.get_text() for t in axes.get_legend().get_texts()]}


def test_plot_curves_writes_a_png_with_one_line_per_series(tmp_path):
    figure = curves_figure(SENSITIVITY, "ratio removed", "top-1 accuracy", "sensitivity")
    texts = drawn_texts(figure)
    assert texts["x"] == "ratio removed" and texts["y"] == "top-1 accuracy" and texts["title"] == "sensitivity"
    assert len(texts["xticks"]) >= 3 and len(texts["yticks"]) >= 3 and texts["legend"] == ["conv1", "conv2"]
    assert [list(line.get_xydata()[:, 1]) for line in figure.axes[0].get_lines()] == \
        [[y for _, y in points] for points in SENSITIVITY.values()]
    plot_curves(SENSITIVITY, "ratio removed", "top-1 accuracy", tmp_path / "s.png", "sensitivity")
    image = cv2.imread(str(tmp_path / "s.png"))
    assert image is not None and image.shape == (560, 900, 3) and image.std() > 10


def test_reproduction_figure_marks_every_stage():
    results = {"stages": [{"name": n, "nonzero": p, "accuracy": a} for n, p, a in
                          [("k4", 240_470, 0.90), ("k3", 187_158, 0.90), ("k1", 80_534, 0.89), ("k1_conv", 60_000, 0.89)]]}
    figure = reproduction_figure(results)
    texts = drawn_texts(figure)
    assert texts["x"] == "non-zero parameters" and len(texts["xticks"]) >= 3
    annotations = sorted(child.get_text() for child in figure.axes[0].texts)
    assert annotations == sorted(["k4", "k3", "k1", "k1", "k1_conv"])


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"Fashion-MNIST not at {FASHION_MNIST}")
def test_the_tolerance_curve_of_a_plan_is_plotted(tmp_path, capsys):
    data = f"idx:{FASHION_MNIST}/t10k-images-idx3-ubyte.gz:{FASHION_MNIST}/t10k-labels-idx1-ubyte.gz"
    code, _, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--tolerance", "3",
                       "--data", data, "--limit", "200", "--scale", "0.00392156862745", "-o", tmp_path / "small")
    assert code == 0, err
    plan = json.loads((tmp_path / "small.plan.json").read_text())
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["batch"] == 64 and report["totals"]["macs"][0] == 2_165_632, "MACs per image at the data's batch"
    texts = drawn_texts(tolerance_figure(plan))
    assert texts["x"] == "parameters" and texts["y"] == "top-1 accuracy" and texts["legend"][1] == "tolerance 3.0 points"
    floor = tolerance_figure(plan).axes[0].get_lines()[1].get_ydata()[0]
    assert floor == pytest.approx(plan["curve"][0]["accuracy"] - 0.03)
    code, out, _ = run(capsys, "plot", tmp_path / "small.plan.json", "-o", tmp_path / "curve.png")
    assert code == 0 and "tolerance curve" in out
    image = cv2.imread(str(tmp_path / "curve.png"))
    assert image is not None and image.shape == (560, 900, 3)


def test_plot_names_what_it_cannot_draw_and_how_to_get_matplotlib(tmp_path, capsys, monkeypatch):
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "keep": {"conv1": [0]}}')
    code, _, err = run(capsys, "plot", plan, "-o", tmp_path / "x.png")
    assert code == 1 and "plan.json: the plan has no tolerance curve" in err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(CaffeSurgeryError, match=r"pip install 'caffe-surgery\[plot\]'"):
        plot_curves(SENSITIVITY, "x", "y", tmp_path / "y.png", "t")
    code, _, err = run(capsys, "info", SAMPLE)
    assert code == 0 and not list(tmp_path.glob("*.png"))
