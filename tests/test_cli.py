"""The command line: info/upgrade/check on real files, bad input, and the prune/relevance workflow."""
import json
import subprocess
import sys

import numpy as np
import pytest

from caffe_surgery.cli import main
from caffe_surgery.io import read_net_text
from caffe_surgery.model import load_model
from caffe_surgery.upgrade import upgrade_net
from conftest import REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
LENET_V1 = REAL_MODELS / "lenet_v1_everpeace"
LANDMARK = REAL_MODELS / "landmark106_dq"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_on_the_sample_matches_hand_counts(capsys):
    code, out, _ = run(capsys, "info", SAMPLE, "-w", SAMPLE_WEIGHTS, "--json")
    assert code == 0
    summary = json.loads(out)
    layers = {entry["name"]: entry for entry in summary["layers"]}
    # conv1: 20 filters 1x5x5 + 20 biases; conv2: 52x20x5x5 + 52; fc_3: 256x(52*4*4) + 256; fc_classes: 10x64 + 10
    assert [layers[n]["params"] for n in ("conv1", "conv2", "fc_3", "fc_classes")] == [520, 26_052, 213_248, 650]
    # MACs: 20*24*24*25, 52*8*8*(20*25), 832*256, 64*10
    assert [layers[n]["macs"] for n in ("conv1", "conv2", "fc_3", "fc_classes")] == [288_000, 1_664_000, 212_992, 640]
    assert layers["premax"]["top_shapes"] == [[1, 64, 4, 1]] and layers["maxout"]["top_shapes"] == [[1, 64, 1, 1]]
    assert summary["totals"] == {"layers": 11, "params": 240_470, "macs": 2_165_632, "weight_bytes": 240_470 * 4}
    assert set(layers["relu3"]) == {"name", "type", "bottoms", "tops", "top_shapes", "params", "macs"}


def test_info_table_on_a_v1_model(capsys):
    code, out, _ = run(capsys, "info", LENET_V1 / "lenet.prototxt", "-w", LENET_V1 / "lenet_iter_10000.caffemodel")
    assert code == 0
    assert "ip1" in out and "InnerProduct" in out and "431,080 parameters" in out


def test_info_groups_lists_pinned_reasons(capsys):
    code, out, _ = run(capsys, "info", LANDMARK / "landmark106.prototxt", "--groups")
    assert code == 0
    assert "pinned: feeds net output 'bn6_3'" in out and "can be pruned" in out


def test_upgrade_v1_pair(tmp_path, capsys):
    out_proto, out_model = tmp_path / "lenet.prototxt", tmp_path / "lenet.caffemodel"
    code, _, _ = run(capsys, "upgrade", LENET_V1 / "lenet.prototxt", out_proto,
                     "-w", LENET_V1 / "lenet_iter_10000.caffemodel", "-o", out_model)
    assert code == 0
    assert read_net_text(out_proto) == upgrade_net(read_net_text(LENET_V1 / "lenet.prototxt"))
    cv2 = pytest.importorskip("cv2")
    ours = cv2.dnn.readNetFromCaffe(str(out_proto), str(out_model))
    theirs = cv2.dnn.readNetFromCaffe(str(LENET_V1 / "lenet.prototxt"), str(LENET_V1 / "lenet_iter_10000.caffemodel"))
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    ours.setInput(x)
    theirs.setInput(x)
    np.testing.assert_array_equal(ours.forward(), theirs.forward())


def test_check_good_and_bad_pairs(tmp_path, capsys):
    code, out, _ = run(capsys, "check", SAMPLE, "-w", SAMPLE_WEIGHTS)
    assert code == 0 and out.startswith("ok:")
    wrong = tmp_path / "wrong.prototxt"
    wrong.write_text(SAMPLE.read_text().replace("num_output: 52", "num_output: 50")
                     .replace("num_output: 10", "num_output: 12"))
    code, out, _ = run(capsys, "check", wrong, "-w", SAMPLE_WEIGHTS)
    assert code == 1
    lines = out.strip().splitlines()
    assert any("conv2" in line and "(52, 20, 5, 5)" in line for line in lines)
    assert any("fc_classes" in line for line in lines), "every problem is listed, not just the first"


def _bad_inputs(tmp_path):
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(SAMPLE_WEIGHTS.read_bytes()[:5000])
    syntax = tmp_path / "syntax.prototxt"
    syntax.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "Input"\n  top "a"\n}\n')
    unknown = tmp_path / "unknown.prototxt"
    unknown.write_text(SAMPLE.read_text().replace('type: "Softmax"', 'type: "FancySoftmax"'))
    mismatch = tmp_path / "mismatch.prototxt"
    mismatch.write_text(SAMPLE.read_text().replace("num_output: 256", "num_output: 200")
                        .replace("dim: 64 dim: 4", "dim: 50 dim: 4"))
    missing = tmp_path / "missing.prototxt"
    missing.write_text(SAMPLE.read_text().replace('bottom: "pool1"', 'bottom: "pool9"'))
    cycle = tmp_path / "cycle.prototxt"
    cycle.write_text(SAMPLE.read_text().replace('bottom: "pool1"', 'bottom: "pool2"'))
    return [
        ((SAMPLE, truncated), "truncated.caffemodel: not a valid caffemodel (truncated or corrupt"),
        ((syntax, SAMPLE_WEIGHTS), "syntax.prototxt: syntax error: 5:"),
        ((unknown, SAMPLE_WEIGHTS), "unknown.prototxt: class_proba: unknown layer type 'FancySoftmax'"),
        ((mismatch, SAMPLE_WEIGHTS), "lenet_maxout.caffemodel: fc_3: blob 0 has shape (256, 832), the layer expects (200, 832)"),
        ((missing, SAMPLE_WEIGHTS), "missing.prototxt: conv2: bottom blob 'pool9' is not produced by any earlier layer"),
        ((cycle, SAMPLE_WEIGHTS), "cycle.prototxt: conv2: bottom blob 'pool2' is produced only later, by layer 'pool2'"),
    ]


def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys):
    for (prototxt, weights), message in _bad_inputs(tmp_path):
        out_dir = tmp_path / "out"
        code, out, err = run(capsys, "prune", prototxt, "-w", weights, "--criterion", "weight-l1", "--ratio", "0.5",
                             "-o", out_dir / "small")
        assert code == 1, message
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert not out_dir.exists() or not any(out_dir.iterdir())


def test_usage_errors_exit_2_and_help_has_examples():
    bad = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", "prune", str(SAMPLE)], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr
    shown = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", "info", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "examples:" in shown.stdout
    failed = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", "info", "nope.prototxt"], capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr and "nope.prototxt: cannot read file" in failed.stderr


def test_prune_writes_a_drop_in_pair_and_a_replayable_plan(tmp_path, capsys):
    code, out, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
                       "--round-to", "4", "-o", tmp_path / "small")
    assert code == 0 and "parameters 240,470 ->" in out
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["totals"]["params"][1] < report["totals"]["params"][0]
    plan = json.loads((tmp_path / "small.plan.json").read_text())
    assert plan["version"] == 1 and len(plan["keep"]["conv1"]) == 12 and len(plan["keep"]["conv2"]) == 28
    assert len(plan["keep"]["fc_3"]) == 128, "maxout: k 4 -> 2 per unit, every unit kept"
    code, _, _ = run(capsys, "check", tmp_path / "small.prototxt", "-w", tmp_path / "small.caffemodel")
    assert code == 0
    code, _, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--plan", tmp_path / "small.plan.json",
                     "-o", tmp_path / "replay")
    assert code == 0
    assert (tmp_path / "replay.caffemodel").read_bytes() == (tmp_path / "small.caffemodel").read_bytes()
    pruned = load_model(tmp_path / "small.prototxt", tmp_path / "small.caffemodel")
    assert pruned.net.layer("relu3").in_place and [l.name for l in pruned.net.layers] == \
        [l.name for l in load_model(SAMPLE).net.layers], "layer names and in-place chains are kept"


def test_dry_run_writes_nothing(tmp_path, capsys):
    code, out, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l2", "--ratio", "0.25",
                       "--dry-run", "-o", tmp_path / "small")
    assert code == 0 and '"keep"' in out and "parameters 240,470 ->" in out
    assert list(tmp_path.iterdir()) == []


def test_bad_plan_is_an_error_naming_the_plan_file(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "keep": {"fc_3": [0, 1, 2, 4]}}))
    code, _, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--plan", plan, "-o", tmp_path / "x")
    assert code == 1 and "plan.json: fc_3: maxout units would keep different numbers of neurons" in err
    assert not (tmp_path / "x.caffemodel").exists()


def test_relevance_shards_merge_to_the_single_pass(tmp_path, capsys):
    data = np.random.default_rng(0).random((50, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "images.npy", data)
    common = ["relevance", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "maxout-wins", "--data",
              f"npy:{tmp_path / 'images.npy'}", "--batch-size", "8"]
    assert run(capsys, *common, "-o", tmp_path / "all.npz")[0] == 0
    for shard in range(3):
        assert run(capsys, *common, "--shard", f"{shard}/3", "-o", tmp_path / f"part_{shard}.npz")[0] == 0
    code, _, _ = run(capsys, "relevance", "merge", *[tmp_path / f"part_{i}.npz" for i in range(3)], "-o",
                     tmp_path / "merged.npz")
    assert code == 0
    with np.load(tmp_path / "all.npz") as single, np.load(tmp_path / "merged.npz") as merged:
        counts = [k for k in single.files if not k.startswith("about/")]
        assert int(merged["samples"]) == 50 and set(counts) <= set(merged.files)
        for key in counts:
            np.testing.assert_array_equal(merged[key], single[key])
    code, out, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "maxout-wins", "--maxout-k", "3",
                       "--stats", tmp_path / "merged.npz", "-o", tmp_path / "k3")
    assert code == 0 and "187,158" in out


def test_unknown_layer_type_runs_with_a_given_top_shape(tmp_path, capsys):
    unknown = tmp_path / "unknown.prototxt"
    unknown.write_text(SAMPLE.read_text().replace('type: "Softmax"', 'type: "FancySoftmax"'))
    code, _, err = run(capsys, "info", unknown)
    assert code == 1 and "class_proba: unknown layer type 'FancySoftmax'" in err
    code, out, _ = run(capsys, "info", unknown, "--top-shape", "class_proba=1,10", "--json")
    assert code == 0 and json.loads(out)["layers"][-1]["top_shapes"] == [[1, 10]]


def test_sparsify_and_fold_bn_verbs(tmp_path, capsys):
    code, out, _ = run(capsys, "sparsify", SAMPLE, "-w", SAMPLE_WEIGHTS, "--sparsity", "0.9", "--global",
                       "-o", tmp_path / "sparse")
    assert code == 0 and "deflated caffemodel" in out
    sparse = load_model(tmp_path / "sparse.prototxt", tmp_path / "sparse.caffemodel")
    weights = np.concatenate([l.blobs[0].ravel() for l in sparse.net.layers if l.blobs])
    assert abs((weights == 0).mean() - 0.9) < 1e-3
    code, out, _ = run(capsys, "fold-bn", LANDMARK / "landmark106.prototxt", "-w", LANDMARK / "landmark106.caffemodel",
                       "-o", tmp_path / "folded")
    assert code == 0
    folded = load_model(tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel")
    assert not {"BatchNorm", "Scale"} & {l.type for l in folded.net.layers}


def test_compare_marks_the_first_divergence(tmp_path, capsys):
    assert run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5",
               "--layers", "fc_3", "-o", tmp_path / "small")[0] == 0
    code, out, _ = run(capsys, "compare", SAMPLE, SAMPLE_WEIGHTS, tmp_path / "small.prototxt",
                       tmp_path / "small.caffemodel", "--limit", "2")
    assert code == 1 and "first failing output: class_proba" in out  # the pruned net's outputs moved
    rows = {line.split()[0]: line for line in out.split("\n\n")[0].splitlines()[2:]}
    assert rows["conv2"].split()[3] == "0" and "first divergence" in rows["fc_3"]
    assert "shapes differ" not in rows["conv2"] and "1.000000" in rows["pool2"]
    code, out, _ = run(capsys, "compare", SAMPLE, SAMPLE_WEIGHTS, SAMPLE, SAMPLE_WEIGHTS, "--backend", "opencv")
    assert code == 0 and "first divergence" not in out
    relative = [float(line.split()[4]) for line in out.split("\n\n")[0].splitlines()[2:]]
    assert len(relative) == 9 and max(relative) < 1e-4  # every blob but the input


def test_statistics_of_another_criterion_are_refused(tmp_path, capsys):
    data = np.random.default_rng(0).random((20, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "images.npy", data)
    assert run(capsys, "relevance", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "apoz", "--data",
               f"npy:{tmp_path / 'images.npy'}", "-o", tmp_path / "apoz.npz")[0] == 0
    code, _, err = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "activation-l2", "--ratio", "0.5",
                       "--stats", tmp_path / "apoz.npz", "-o", tmp_path / "x")
    assert code == 1 and "apoz.npz: statistics file lacks the per-channel squares" in err
    code, _, _ = run(capsys, "prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "apoz", "--ratio", "0.5",
                     "--stats", tmp_path / "apoz.npz", "-o", tmp_path / "y")
    assert code == 0
