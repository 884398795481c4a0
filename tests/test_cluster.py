"""Statistics and evaluation on a real two-node Ray cluster on this machine, against the local passes.

The module starts one head and one extra worker node (separate raylet processes, one CPU each, all on
127.0.0.1) once, and stops every process it started when done. Data: Fashion-MNIST (IDX and an LMDB
converted from it), the sample maxout LeNet.
"""
import json
import os
import signal
import sys
from dataclasses import dataclass

import lmdb
import numpy as np
import pytest

from caffe_surgery.cli import main
from caffe_surgery.cluster import map_shards
from caffe_surgery.data import convert_data
from caffe_surgery.dataflow import DataRequest
from caffe_surgery.groups import build_groups
from caffe_surgery.model import load_model
from caffe_surgery.pipeline import transform_parameter
from caffe_surgery.pruning import StatisticsTask, chosen_groups
from caffe_surgery.reconstruct import LeastSquaresTask
from caffe_surgery.runtime import Runtime
from conftest import FASHION_MNIST, REPO

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'caffe-surgery[cluster]')")
from ray.cluster_utils import Cluster  # noqa: E402

IN_CHILD = os.environ.get("CAFFE_SURGERY_RAY_CHILD") == "1"
"""Set by tests/test_cluster_child.py, which runs this module in a pytest of its own: a Ray process that dies
takes the driver with it (Ray ends a driver whose raylet or GCS is gone with exit status 1), and it must
end that child run only."""

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not IN_CHILD, reason="runs in a child pytest (tests/test_cluster_child.py)"),
              pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")]

SAMPLE = REPO / "samples" / "lenet_maxout.prototxt"
SAMPLE_WEIGHTS = REPO / "samples" / "lenet_maxout.caffemodel"
IDX = (f"idx:{FASHION_MNIST / 't10k-images-idx3-ubyte.gz'}:{FASHION_MNIST / 't10k-labels-idx1-ubyte.gz'}")
COUNT, BATCH, SHARDS = 96, 8, 4  # shard boundaries fall on batch boundaries: the same batches as one pass
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100_000_000}
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0",
                   # node addresses stay 127.0.0.1 (otherwise Ray picks the host's outward address)
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def cluster():
    """The driver connected to a head node plus one worker node; every started process stops at the end."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENVIRONMENT.items():
            patch.setenv(key, value)
        patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)  # read when ray was imported
        nodes = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        try:
            nodes.add_node(**NODE)
            ray.init(address=nodes.address, logging_level="WARNING")
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # DiesOnce, defined here, for workers
            assert sum(node["Alive"] for node in ray.nodes()) == 2
            yield nodes.address
        finally:
            ray.shutdown()
            nodes.shutdown()


@pytest.fixture(scope="module")
def fashion_lmdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "fashion_lmdb"
    convert_data(IDX, str(path), limit=COUNT)
    return f"lmdb:{path}"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def relevance(capsys, tmp_path, name, spec, *engine):
    output = tmp_path / f"{name}.npz"
    code, _, err = run(capsys, "relevance", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "apoz", "--data", spec,
                       "--scale", "0.00390625", "--limit", COUNT, "--batch-size", BATCH, "-o", output, *engine)
    assert code == 0, err
    with np.load(output) as arrays:
        return {key: arrays[key] for key in arrays.files}


def assert_same_statistics(got: dict, expected: dict, rtol: float) -> None:
    """Integer arrays identical, float64 sums within ``rtol``, the same description."""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("kind", ["idx", "lmdb"])
def test_statistics_on_two_nodes_equal_the_local_pass(cluster, fashion_lmdb, kind, tmp_path, capsys):
    spec = IDX if kind == "idx" else fashion_lmdb
    on_ray = relevance(capsys, tmp_path, "ray", spec, "--engine", "ray", "--address", cluster, "--shards", SHARDS)
    same_shards = relevance(capsys, tmp_path, "local_shards", spec, "--shards", SHARDS)
    one_pass = relevance(capsys, tmp_path, "one_pass", spec)
    assert int(on_ray["samples"]) == COUNT and any(k.endswith("/zeros") for k in on_ray)
    assert_same_statistics(on_ray, same_shards, rtol=0)  # the same shards merged in the same order: bit for bit
    assert_same_statistics(on_ray, one_pass, rtol=1e-12)  # only the order of the float64 additions differs


def test_eval_on_two_nodes_equals_the_local_pass(cluster, capsys):
    common = ["eval", SAMPLE, "-w", SAMPLE_WEIGHTS, "--data", IDX, "--scale", "0.00390625", "--limit", COUNT,
              "--batch-size", BATCH, "--top-k", "1,5", "--json"]
    code, out, err = run(capsys, *common, "--engine", "ray", "--address", cluster, "--shards", SHARDS)
    assert code == 0, err
    code, local_out, _ = run(capsys, *common)
    on_ray, local = json.loads(out), json.loads(local_out)
    assert on_ray["samples"] == local["samples"] == COUNT
    assert on_ray["accuracy"] == local["accuracy"] and 0.5 < local["accuracy"]["top5"] <= 1
    assert local["loss"] is None  # the deploy net has no SoftmaxWithLoss


@dataclass(frozen=True)
class DiesOnce:
    """A task whose first run to reach its second batch kills its own worker process (SIGKILL): exactly one
    kill over the whole run, decided by creating ``marker`` (O_EXCL), mid-task."""

    task: StatisticsTask
    marker: str

    def __call__(self, model, batches):
        return self.task(model, self._dying(batches))

    def _dying(self, batches):
        for number, batch in enumerate(batches):
            if number == 1 and self._first():
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

    def _first(self) -> bool:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False


def test_a_killed_worker_is_retried_and_the_result_is_unchanged(cluster, tmp_path):
    model = load_model(SAMPLE, SAMPLE_WEIGHTS, input_shapes={"images": (BATCH, 1, 28, 28)})
    groups = build_groups(model.net, model.shapes)
    task = StatisticsTask("apoz", tuple(g.id for g in chosen_groups(groups, None)), {})
    data = DataRequest(IDX, limit=COUNT, batch_size=BATCH)
    expected = map_shards(task, model, data, SHARDS)
    marker = tmp_path / "killed"
    got = map_shards(DiesOnce(task, str(marker)), model, data, SHARDS, engine="ray", address=cluster)
    assert marker.exists()  # a worker did die mid-task
    assert_same_statistics(got, expected, rtol=0)


def test_bad_record_stops_the_run_with_the_local_error(cluster, fashion_lmdb, tmp_path, capsys):
    broken = tmp_path / "broken_lmdb"
    convert_data(fashion_lmdb, str(broken))
    with lmdb.open(str(broken), map_size=1 << 26) as env, env.begin(write=True) as txn:
        txn.put(b"%08d" % 60, b"\xff not a datum")  # in shard 2 of 4
    common = ["relevance", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "apoz", "--data", f"lmdb:{broken}",
              "--batch-size", BATCH, "-o", tmp_path / "never.npz"]
    code, _, local_error = run(capsys, *common)
    assert code == 1 and f"{broken}: record b'00000060' is not a Datum" in local_error
    code, _, ray_error = run(capsys, *common, "--engine", "ray", "--address", cluster, "--shards", SHARDS)
    assert code == 1 and ray_error.strip().splitlines()[-1] == local_error.strip()
    assert not (tmp_path / "never.npz").exists()


def test_prune_statistics_pass_on_two_nodes_gives_the_local_plan(cluster, capsys):
    common = ["prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "activation-l2", "--ratio", "0.5", "--data", IDX,
              "--scale", "0.00390625", "--limit", COUNT, "--batch-size", BATCH, "--dry-run", "-o", "unused"]
    code, on_ray, err = run(capsys, *common, "--engine", "ray", "--address", cluster, "--shards", SHARDS)
    assert code == 0, err
    code, local, _ = run(capsys, *common)
    assert code == 0 and on_ray == local and '"fc_3"' in local


def test_sensitivity_on_two_nodes_gives_the_local_curves(cluster, tmp_path, capsys):
    common = ["sensitivity", SAMPLE, "-w", SAMPLE_WEIGHTS, "--data", IDX, "--scale", "0.00390625", "--limit", COUNT,
              "--batch-size", BATCH, "--ratios", "0.3,0.6", "--layers", "conv2,fc_3"]
    code, _, err = run(capsys, *common, "-o", tmp_path / "ray", "--engine", "ray", "--address", cluster,
                       "--shards", SHARDS)
    assert code == 0, err
    code, _, err = run(capsys, *common, "-o", tmp_path / "local")
    assert code == 0, err
    on_ray, local = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("ray", "local"))
    assert on_ray == local and set(local["curves"]) == {"conv2", "fc_3"} and local["measure"] == "top-1"
    assert len({point["value"] for points in local["curves"].values() for point in points}) > 1  # pruning shows


def test_sensitivity_on_ray_refuses_the_output_error_measure(cluster, tmp_path, capsys):
    code, _, err = run(capsys, "sensitivity", SAMPLE, "-w", SAMPLE_WEIGHTS, "--data", IDX, "--scale", "0.00390625",
                       "--limit", COUNT, "--measure", "output-error", "-o", tmp_path / "never", "--engine", "ray",
                       "--address", cluster)
    assert code == 1 and "--engine ray measures top-1 only" in err and not (tmp_path / "never.json").exists()


def test_reconstruction_statistics_on_two_nodes_equal_the_local_shards(cluster):
    model = load_model(SAMPLE, SAMPLE_WEIGHTS, input_shapes={"images": (BATCH, 1, 28, 28)})
    task = LeastSquaresTask(model, "conv2", {"threads": 1, "backend": "onnxruntime", "device": "cpu"})
    data = DataRequest(IDX, transform_parameter(0.00390625, None), limit=COUNT, batch_size=BATCH)
    on_ray = map_shards(task, model, data, SHARDS, engine="ray", address=cluster)
    assert int(on_ray["refit/conv2/rows"]) == COUNT * 10  # POSITIONS_PER_IMAGE sampled per image
    # Gram matrices are BLAS products, whose sum order follows the thread count (Ray workers run one):
    # float64 within 1e-12 of each array's largest value, the row counts identical; the shards sample
    # the positions one pass samples.
    for expected in (map_shards(task, model, data, SHARDS), map_shards(task, model, data, 1)):
        assert sorted(on_ray) == sorted(expected) and on_ray["refit/conv2/rows"] == expected["refit/conv2/rows"]
        for key, value in expected.items():
            np.testing.assert_allclose(on_ray[key], value, rtol=0, atol=1e-12 * np.abs(value).max(), err_msg=key)


def test_prune_reconstruct_on_two_nodes_gives_the_local_refit(cluster, tmp_path, capsys):
    common = ["prune", SAMPLE, "-w", SAMPLE_WEIGHTS, "--criterion", "weight-l1", "--ratio", "0.5", "--reconstruct",
              "--data", IDX, "--scale", "0.00390625", "--limit", COUNT, "--batch-size", BATCH]
    code, _, err = run(capsys, *common, "-o", tmp_path / "ray", "--engine", "ray", "--address", cluster,
                       "--shards", SHARDS)
    assert code == 0, err
    code, _, err = run(capsys, *common, "-o", tmp_path / "local")
    assert code == 0, err
    on_ray, local = (json.loads((tmp_path / f"{name}.report.json").read_text())["refits"] for name in ("ray", "local"))
    assert [r["layer"] for r in on_ray] == [r["layer"] for r in local] == ["conv2", "fc_3", "fc_classes"]
    assert [r["rows"] for r in on_ray] == [r["rows"] for r in local]
    # The workers' one onnxruntime thread rounds the activations differently from the local pass: the
    # refit nets agree to float32 rounding amplified by the solves, far inside what the refit changes.
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    outputs = {name: Runtime(*pruned(tmp_path, name)).run(x)["class_proba"] for name in ("ray", "local")}
    np.testing.assert_allclose(outputs["ray"], outputs["local"], rtol=0, atol=1e-4)


def pruned(folder, name):
    model = load_model(folder / f"{name}.prototxt", folder / f"{name}.caffemodel")
    return model.net, model.shapes
