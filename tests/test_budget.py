"""Sensitivity curves and MAC/parameter budgets."""
import csv
import json

import numpy as np
import pytest

from caffe_surgery.budget import choose_ratios, parse_budget, plan_for, score_losses, total
from caffe_surgery.cli import main
from caffe_surgery.criteria import weight_l1
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.groups import build_groups
from caffe_surgery.model import Model
from caffe_surgery.pruning import prune
from caffe_surgery.save import save_caffemodel, save_prototxt
from pruning_nets import INPUT, conv, ip, random_weights, simple

NET = (INPUT.format(n=1, c=3, h=12, w=12) + conv("conv1", "data", 8) + simple("ReLU", "relu1", "conv1")
       + conv("conv2", "conv1", 12) + simple("ReLU", "relu2", "conv2")
       + simple("Pooling", "pool", "conv2", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
       + ip("fc", "pool", 16) + simple("ReLU", "relu3", "fc") + ip("out", "fc", 4))


@pytest.mark.parametrize("kind,fraction", [("macs", 0.5), ("macs", 0.3), ("params", 0.4)])
def test_budget_reaches_the_requested_fraction(kind, fraction):
    net, shapes = random_weights(NET, 0)
    model = Model(net, shapes)
    groups = build_groups(net, shapes)
    group_list = groups.prunable()
    scores = {g.id: weight_l1(net, groups, g, None) for g in group_list}
    losses = score_losses(group_list, scores, [0.1 * i for i in range(1, 10)])
    ratios, predicted, reached = choose_ratios(model, groups, group_list, scores, losses, kind, fraction)
    pruned = prune(model, plan_for(scores, groups, group_list, ratios, {}))
    assert total(pruned.shapes, kind) == reached <= fraction * total(shapes, kind)
    assert reached > 0.6 * fraction * total(shapes, kind), "not pruned far past the budget"
    assert predicted == pytest.approx(sum(losses[gid][r] for gid, r in ratios.items()))


def test_budget_text_is_checked():
    assert parse_budget("params=0.3") == ("params", 0.3)
    for text in ("macs", "flops=0.5", "macs=1.5", "macs=x"):
        with pytest.raises(CaffeSurgeryError, match="a budget is"):
            parse_budget(text)


def test_sensitivity_writes_one_curve_per_layer_and_prune_takes_it(tmp_path):
    net, shapes = random_weights(NET, 1)
    save_prototxt(net, tmp_path / "net.prototxt")
    save_caffemodel(net, tmp_path / "net.caffemodel")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((24, 3, 12, 12)).astype(np.float32))
    common = [str(tmp_path / "net.prototxt"), "-w", str(tmp_path / "net.caffemodel"), "--data", f"npy:{tmp_path / 'x.npy'}",
              "--device", "cpu", "--measure", "output-error"]
    assert main(["sensitivity"] + common + ["--ratios", "0.25,0.5", "-o", str(tmp_path / "s")]) == 0
    document = json.loads((tmp_path / "s.json").read_text())
    assert set(document["curves"]) == {"conv1", "conv2", "fc"} and document["baseline"] == 0.0
    for points in document["curves"].values():
        assert [p["ratio"] for p in points] == [0.0, 0.25, 0.5] and points[0]["value"] == 0.0
        assert points[2]["value"] > 0 and points[2]["macs"] < points[0]["macs"]
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 9 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["prune"] + common + ["--criterion", "weight-l1", "--budget", "macs=0.6", "--sensitivity",
                                      str(tmp_path / "s.json"), "--ratios", "0.25,0.5", "-o", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p.report.json").read_text())
    macs = report["totals"]["macs"]
    assert macs[1] <= 0.6 * macs[0] and report["budget"]["reached"] == pytest.approx(macs[1] / macs[0])
