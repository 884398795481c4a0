"""The verbs' pipelines as library calls: usable without argparse, writing what the command line writes."""
import json
from dataclasses import fields

import pytest

from caffe_surgery.cli import build_parser, main
from caffe_surgery.compare import compare_files
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.pipeline import NetRequest, RelevanceRequest, SensitivityRequest, evaluate_data
from caffe_surgery.prune_command import PruneRequest, prune_files
from conftest import REPO
from netgen import generate

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
SUBSET = REPO / "samples" / "fashion_mnist_t10k_1000.npz"
KINDS = ("prototxt", "caffemodel", "plan.json", "report.json")


def _verb_dests(verb: str) -> set[str]:
    """The argument names (dests) a verb's parser fills."""
    verbs = next(a for a in build_parser()._actions if a.dest == "verb")
    return {action.dest for action in verbs.choices[verb]._actions}


@pytest.mark.parametrize("verb, request_type", [("prune", PruneRequest), ("relevance", RelevanceRequest),
                                                ("sensitivity", SensitivityRequest), ("eval", NetRequest)])
def test_every_request_field_is_an_option_of_its_verb(verb, request_type):
    names = {f.name for f in fields(request_type)}
    if verb == "sensitivity":  # sensitivity runs locally: no --engine/--address/--shards
        names -= {"engine", "address", "shards"}
    assert names <= _verb_dests(verb), names - _verb_dests(verb)


def _same_files(prefix_a, prefix_b, kinds=KINDS):
    for kind in kinds:
        a, b = f"{prefix_a}.{kind}", f"{prefix_b}.{kind}"
        assert open(a, "rb").read() == open(b, "rb").read(), kind


def test_prune_files_without_argparse_writes_the_clis_files_byte_for_byte(tmp_path, capsys):
    net = generate("conv_pool", tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "cli").mkdir()
    result = prune_files(PruneRequest(str(net.prototxt), str(net.caffemodel), criterion="weight-l1", ratio=0.5,
                                      output=str(tmp_path / "lib" / "small")))
    assert main(["prune", str(net.prototxt), "-w", str(net.caffemodel), "--criterion", "weight-l1",
                 "--ratio", "0.5", "-o", str(tmp_path / "cli" / "small")]) == 0
    _same_files(tmp_path / "lib" / "small", tmp_path / "cli" / "small")
    assert list(result.outputs) == list(KINDS)
    assert result.report == json.loads(result.outputs["report.json"].read_text())
    assert result.report["totals"]["params"][1] < result.report["totals"]["params"][0]


def test_prune_files_with_data_measures_and_writes_as_the_cli_does(tmp_path):
    options = dict(data=f"npy:{SUBSET}", scale=1 / 255, limit=64, criterion="apoz", ratio=0.3)
    result = prune_files(PruneRequest(str(SAMPLE), str(SAMPLE_WEIGHTS), output=str(tmp_path / "lib"), **options))
    assert main(["prune", str(SAMPLE), "-w", str(SAMPLE_WEIGHTS), "--data", options["data"], "--scale",
                 repr(options["scale"]), "--limit", "64", "--criterion", "apoz", "--ratio", "0.3",
                 "-o", str(tmp_path / "cli")]) == 0
    _same_files(tmp_path / "lib", tmp_path / "cli", ("prototxt", "caffemodel", "plan.json"))
    written = json.loads((tmp_path / "cli.report.json").read_text())
    assert result.report["accuracy"] == written["accuracy"]
    assert result.report["accuracy"]["samples"] == 64
    assert 0.5 < result.report["accuracy"]["before"] <= 1


def test_a_dry_run_writes_nothing_and_a_request_needs_a_plan_or_a_criterion(tmp_path):
    net = generate("conv_pool", tmp_path)
    result = prune_files(PruneRequest(str(net.prototxt), str(net.caffemodel), criterion="weight-l1", ratio=0.5,
                                      dry_run=True, output=str(tmp_path / "small")))
    assert result.outputs == {} and not list(tmp_path.glob("small*"))
    assert result.plan.keep
    with pytest.raises(CaffeSurgeryError, match="a plan or a criterion"):
        prune_files(PruneRequest(str(net.prototxt), str(net.caffemodel), output=str(tmp_path / "small")))


def test_evaluate_data_and_compare_files_without_argparse(tmp_path, capsys):
    request = NetRequest(str(SAMPLE), str(SAMPLE_WEIGHTS), data=f"npy:{SUBSET}", scale=1 / 255, limit=100)
    evaluation = evaluate_data(request, (1, 5))
    assert main(["eval", str(SAMPLE), "-w", str(SAMPLE_WEIGHTS), "--data", f"npy:{SUBSET}", "--scale",
                 repr(1 / 255), "--limit", "100", "--top-k", "1,5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert evaluation.samples == printed["samples"] == 100
    assert evaluation.as_dict()["accuracy"] == printed["accuracy"]
    assert evaluation.accuracy(1) <= evaluation.accuracy(5)
    differences, checks = compare_files(str(SAMPLE), str(SAMPLE_WEIGHTS), str(SAMPLE), str(SAMPLE_WEIGHTS), limit=3)
    assert differences and all(d.max_abs == 0 for d in differences)
    assert checks and all(check.passed for check in checks)
