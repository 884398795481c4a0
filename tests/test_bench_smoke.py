"""The benchmark runs end to end at smoke sizes and reports every sub-benchmark's figures."""
import json
import subprocess
import sys

import pytest

from conftest import FASHION_MNIST, REPO

BENCH = REPO / "scripts" / "bench.py"
DEFAULT_SUBS = ("surgery", "stats", "latency", "growth")


def _figures(node, path=""):
    """Every figure (a dict with a median) in the results, with where it is."""
    if isinstance(node, dict):
        if "median" in node:
            yield path, node
        for key, value in node.items():
            yield from _figures(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _figures(value, f"{path}[{index}]")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not in {FASHION_MNIST}")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out), "--cache", str(out / "cache")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_json_has_every_sub_benchmark_with_positive_figures(smoke_results):
    out = smoke_results
    results = json.loads((out / "bench.json").read_text())
    for name in DEFAULT_SUBS:
        assert name in results, f"no {name} results"
        figures = list(_figures(results[name]))
        assert figures, f"{name} has no figures"
        for where, figure in figures:
            assert figure["median"] > 0 and figure["min"] > 0, f"{name}{where}: {figure}"
            assert figure["min"] <= figure["median"] <= figure["max"], f"{name}{where}: {figure}"
            assert len(figure["runs"]) >= 2, f"{name}{where}: a figure is a median of several runs"
    surgery = results["surgery"]
    assert {"load", "plan", "apply", "save"} <= set(surgery["phases_s"])
    assert surgery["floor_s"]["median"] > 0 and surgery["peak_rss_mb"]["median"] > 0
    assert {net["net"] for net in results["stats"]["nets"]} == {"lenet", "vgg16"}
    for net in results["stats"]["nets"]:
        assert {"ort", "relevance", "opencv"} <= set(net["figures"])
    latency = results["latency"]
    assert 0 < latency["mac_ratio"] < 1
    assert {(row["backend"], row["batch"]) for row in latency["rows"]} == {
        (backend, batch) for backend in ("onnxruntime", "opencv") for batch in (1, 32)}
    growth = results["growth"]
    for fit in ("surgery_fit_s_per_mb", "relevance_fit_s_per_image", "relevance_fit_s_per_gmac"):
        assert set(growth[fit]) == {"slope", "intercept", "r2"}
    assert growth["relevance_fit_s_per_image"]["slope"] > 0
    assert len(growth["models"]) == 5


def test_markdown_has_a_section_per_sub_benchmark(smoke_results):
    out = smoke_results
    text = (out / "bench.md").read_text()
    for heading in ("## Surgery", "## Statistics gathering", "## What pruning buys", "## Growth", "## Targets"):
        assert heading in text
    assert "total / floor" in text and "relevance / ort" in text and "R²" in text
