"""One setting finds the third-party test material; without it the tests that need it skip, saying how to get it."""
import os
import subprocess
import sys

import pytest

from conftest import REFERENCE, REPO

SAMPLE_OF_TESTS = ["tests/test_schema.py", "tests/test_check.py", "tests/test_graph.py", "tests/test_fold.py"]
FASHION_TEST = "tests/test_train.py::test_short_training_of_the_reference_net_learns_and_writes_a_caffemodel_opencv_runs"


def run_hidden(tmp_path, *tests, assets=True):
    """pytest on ``tests`` with Fashion-MNIST hidden, and the assets folder too when ``assets``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAFFE_SURGERY_FASHION_MNIST": str(tmp_path / "no-fashion-mnist")}
    if assets:
        env["CAFFE_SURGERY_ASSETS"] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_hidden_assets_skip_with_a_reason_instead_of_failing(tmp_path):
    done = run_hidden(tmp_path, *SAMPLE_OF_TESTS)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " skipped" in summary and "failed" not in summary and "error" not in summary
    reasons = "\n".join(line for line in done.stdout.splitlines() if line.startswith("SKIPPED"))
    empty = tmp_path / "empty"
    assert f"{empty / 'caffe-wire-facts.tsv'} is missing: set CAFFE_SURGERY_ASSETS" in reasons  # test_schema
    assert f"{empty / 'real-models'} is missing: run 'python scripts/fetch_test_assets.py'" in reasons  # parametrized
    assert f"{empty / 'reference' / 'maxout_pruning'} is missing" in reasons  # test_graph, through a constant
    assert f"{empty / 'real-models' / 'landmark106_dq' / 'landmark106'} is missing" in reasons  # a module constant


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} is missing: the training test would skip for it "
                    "before it looks for Fashion-MNIST")
def test_missing_fashion_mnist_skips_the_training_test_that_reads_it_through_a_helper(tmp_path):
    done = run_hidden(tmp_path, FASHION_TEST, assets=False)
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-3000:]
    assert f"{tmp_path / 'no-fashion-mnist'} is missing: 'sudo apt-get install dataset-fashion-mnist'" in done.stdout
