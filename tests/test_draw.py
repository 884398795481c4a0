"""draw: Graphviz renderings of nets (SVG parsed, PNG decoded, DOT read back) with pruned channels marked."""
import json
import shutil
import xml.etree.ElementTree as ElementTree

import cv2
import pytest

from caffe_surgery.cli import main
from caffe_surgery.model import load_model
from conftest import REAL_MODELS, REPO

pydot = pytest.importorskip("pydot")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed (apt-get install graphviz)")

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
MTCNN = REAL_MODELS / "mtcnn_det2"
SVG = "{http://www.w3.org/2000/svg}"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def svg_texts(path) -> list[str]:
    root = ElementTree.parse(path).getroot()
    return [element.text for element in root.iter(f"{SVG}text") if element.text]


def svg_node_count(path) -> int:
    root = ElementTree.parse(path).getroot()
    return sum(1 for g in root.iter(f"{SVG}g") if g.get("class") == "node")


@needs_dot
def test_svg_of_a_pruned_plan_names_every_layer_and_marks_kept_channels(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "keep": {"conv1": list(range(0, 20, 2)), "conv2": list(range(40))}}))
    code, _, err = run(capsys, "draw", SAMPLE, "-w", SAMPLE_WEIGHTS, "--plan", plan, "-o", tmp_path / "net.svg")
    assert code == 0, err
    texts = svg_texts(tmp_path / "net.svg")
    model = load_model(SAMPLE, SAMPLE_WEIGHTS)
    assert {layer.name for layer in model.net.layers} <= set(texts)
    assert "conv1 20→10" in texts and "pool1 20→10" in texts and "conv2 52→40" in texts
    assert not any(t.startswith("fc_3 ") and "→" in t for t in texts)
    assert "1x20x24x24" in texts and "520 params, 288k MACs" in texts
    assert svg_node_count(tmp_path / "net.svg") == len(model.net.layers) + len(model.net.outputs())


@needs_dot
def test_png_and_report_marks(tmp_path, capsys):
    code, _, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.25",
                     "-o", tmp_path / "small")
    assert code == 0
    code, _, _ = run(capsys, "draw", SAMPLE, "--report", tmp_path / "small.report.json", "-o", tmp_path / "net.png")
    image = cv2.imread(str(tmp_path / "net.png"))
    assert code == 0 and image is not None and image.shape[0] > 800 and 200 < image.shape[1] < image.shape[0]
    code, _, _ = run(capsys, "draw", SAMPLE, "--report", tmp_path / "small.report.json", "-o", tmp_path / "net.svg")
    report = json.loads((tmp_path / "small.report.json").read_text())
    conv1 = next(e for e in report["layers"] if e["name"] == "conv1")
    assert f"conv1 20→{conv1['top_shapes'][1][0][1]}" in svg_texts(tmp_path / "net.svg")


@pytest.mark.filterwarnings("ignore:.*deprecated")  # pyparsing's notes on pydot's parser
def test_dot_text_reads_back_with_every_layer_and_blob_edge(tmp_path, capsys):
    code, _, _ = run(capsys, "draw", SAMPLE, "-o", tmp_path / "net.dot")
    assert code == 0
    graph = pydot.graph_from_dot_data((tmp_path / "net.dot").read_text())[0]
    model = load_model(SAMPLE)
    labels = [node.get_label() for node in graph.get_nodes() if node.get_label()]
    assert len(labels) == len(model.net.layers) + len(model.net.outputs())
    assert len(graph.get_edges()) == sum(len(l.bottoms) for l in model.net.layers) + len(model.net.outputs())
    assert any(label.startswith('"conv2\nConvolution\n') for label in labels)


@needs_dot
@pytest.mark.skipif(not MTCNN.is_dir(), reason=f"real models not at {REAL_MODELS}")
def test_a_real_model_is_drawn_whole(tmp_path, capsys):
    code, _, err = run(capsys, "draw", MTCNN / "det2.prototxt", "-o", tmp_path / "det2.svg")
    assert code == 0, err
    model = load_model(MTCNN / "det2.prototxt")
    assert {layer.name for layer in model.net.layers} <= set(svg_texts(tmp_path / "det2.svg"))


def test_draw_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "draw", SAMPLE, "-o", tmp_path / "net.jpg")
    assert code == 1 and "name it .svg, .png or .dot" in err
    code, _, err = run(capsys, "draw", SAMPLE, "--plan", tmp_path / "p.json", "-o", tmp_path / "net.svg")
    assert code == 1 and "--plan needs the weights" in err
    (tmp_path / "r.json").write_text("{}")
    code, _, err = run(capsys, "draw", SAMPLE, "--report", tmp_path / "r.json", "-o", tmp_path / "net.svg")
    assert code == 1 and "r.json: not a prune report" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("net.*"))
