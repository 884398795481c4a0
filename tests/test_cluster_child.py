"""tests/test_cluster.py in a pytest process of its own, so that a Ray failure fails those tests, with Ray's
own output, instead of ending the whole run."""
import os
import subprocess
import sys

import pytest

from conftest import FASHION_MNIST, REPO

pytest.importorskip("ray", reason="Ray is not installed (pip install 'caffe-surgery[cluster]')")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_cluster_module_passes_in_a_child_process():
    env = {**os.environ, "CAFFE_SURGERY_RAY_CHILD": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cluster.py"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    output = (done.stdout + done.stderr)[-6000:]
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"exit status {done.returncode}:\n{output}"
    assert " passed" in summary and not any(word in summary for word in ("skipped", "failed", "error")), output
