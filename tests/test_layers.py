"""The layer registry (caffe_surgery.layers): every type states every facet, plugins add types end to end."""
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffe_surgery import caffe_pb2, layers
from caffe_surgery.layers import FACETS, ChannelRule, LayerType, NotApplicable, Train
from caffe_surgery.layers.registry import FAMILIES

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "tests" / "plugins" / "fork_layers.py"


# ------------------------------------------------------------------ the registry walk

@pytest.mark.parametrize("declaration", layers.declarations(), ids=lambda d: d.name)
def test_every_type_has_every_facet_or_a_reason(declaration):
    for facet in FACETS:
        value = getattr(declaration, facet)
        if isinstance(value, NotApplicable):
            assert value.reason.strip(), f"{declaration.name}.{facet}: NotApplicable without a reason"
        elif facet == "channels":
            assert isinstance(value, ChannelRule) and value.describe
            assert len(inspect.signature(value.apply).parameters) == 3
        elif facet == "train":
            assert isinstance(value, Train) and len(inspect.signature(value.op).parameters) == 3
        else:
            arity = {"shape": 2, "export": 1, "rewrite": 4}[facet]
            assert len(inspect.signature(value).parameters) == arity, f"{declaration.name}.{facet}"
    assert declaration.kind in (layers.LAYER, layers.DATA, layers.TRAINING_ONLY)
    assert all(d.what for d in declaration.departures)


@pytest.mark.parametrize("declaration", layers.declarations(), ids=lambda d: d.name)
def test_prunable_weights_have_a_rewrite(declaration):
    """A rule that keeps channels while holding per-channel weights must say how those weights shrink."""
    if declaration.channels.weighted or declaration.channels.produces:
        assert not isinstance(declaration.rewrite, NotApplicable), declaration.name


def test_builtin_types_live_in_their_family_modules():
    modules = {d.shape.__module__ for d in layers.declarations() if callable(d.shape)} - {layers.same_shape.__module__}
    assert modules == {f"caffe_surgery.layers.{family}" for family in FAMILIES}
    assert all(d.origin == "" for d in layers.declarations())


def test_redeclaring_a_type_is_refused():
    relu = layers.lookup("ReLU")
    with pytest.raises(layers.RegistryError, match="layer type 'ReLU' is already declared"):
        layers.declare(relu)


def test_a_facet_left_out_is_refused():
    with pytest.raises(layers.RegistryError, match="facet 'rewrite' must be given"):
        LayerType("Nothing", shape=layers.same_shape, export=NotApplicable("x"), channels=layers.PIN,
                  rewrite=None, train=NotApplicable("x"))


def test_importing_caffe_surgery_imports_no_torch_and_no_family():
    code = ("import sys, caffe_surgery.cli, caffe_surgery.layers; "
            "print('torch' in sys.modules, 'caffe_surgery.layers.convolution' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------ a plugin, end to end through the CLI

NET = textwrap.dedent("""\
    name: "fork"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 } }
    layer { name: "gain" type: "ChannelGain" bottom: "conv1" top: "gained" }
    layer { name: "act" type: "ScaledTanh" bottom: "gained" top: "act" scaled_tanh_param { scale: 2.5 } }
    layer { name: "conv2" type: "Convolution" bottom: "act" top: "conv2" convolution_param { num_output: 4 kernel_size: 3 } }
    """)


def _blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.astype(np.float32).ravel().tolist())
    return blob


def _weights(blobs: dict) -> bytes:
    net = caffe_pb2.NetParameter(name="fork")
    for name, arrays in blobs.items():
        net.layer.add(name=name).blobs.extend(_blob(a) for a in arrays)
    return net.SerializeToString()


def cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if check:
        assert done.returncode == 0, done.stderr
    return done


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["conv2"], {"data": x})[0]


def reference(blobs: dict, x: np.ndarray) -> np.ndarray:
    """The fork's semantics in numpy: conv, per-channel gain, 2.5 * tanh, conv."""
    def conv(x, w, b):
        k = w.shape[2]
        out = np.zeros((x.shape[0], w.shape[0], x.shape[2] - k + 1, x.shape[3] - k + 1))
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                out[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + k, j:j + k], w)
        return out + b.reshape(1, -1, 1, 1)
    y = conv(x.astype(np.float64), *blobs["conv1"]) * blobs["gain"][0].reshape(1, -1, 1, 1)
    return conv(2.5 * np.tanh(y), *blobs["conv2"])


@pytest.fixture(scope="module")
def fork_net(tmp_path_factory):
    root = tmp_path_factory.mktemp("fork")
    rng = np.random.default_rng(5)
    blobs = {"conv1": [rng.standard_normal((6, 3, 3, 3)) * 0.3, rng.standard_normal(6) * 0.1],
             "gain": [rng.uniform(0.5, 1.5, 6)],
             "conv2": [rng.standard_normal((4, 6, 3, 3)) * 0.3, rng.standard_normal(4) * 0.1]}
    (root / "net.prototxt").write_text(NET)
    (root / "net.caffemodel").write_bytes(_weights(blobs))
    return root, blobs


def test_without_the_plugin_the_fork_type_is_unknown(fork_net):
    root, _ = fork_net
    done = cli("info", root / "net.prototxt", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {root / 'net.prototxt'}: gain: unknown layer type 'ChannelGain': no shape rule for it "
        "(pass its top shapes, or declare the type in a --plugin)"]


def test_plugin_info_and_groups(fork_net):
    root, _ = fork_net
    table = cli("--plugin", PLUGIN, "info", root / "net.prototxt", "-w", root / "net.caffemodel").stdout
    gain_row = next(line for line in table.splitlines() if line.split()[:2] == ["gain", "ChannelGain"])
    assert " 6 " in f" {gain_row} "  # the 6 per-channel gains counted as parameters
    groups = cli("info", root / "net.prototxt", "--groups", "--plugin", PLUGIN).stdout
    assert "group 1 'conv1' (6 channels) prunable" in groups
    assert "members: act (channel), conv2 (in), gain (channel)" in groups


def test_plugin_export_matches_the_fork_semantics(fork_net, tmp_path):
    root, blobs = fork_net
    cli("export", root / "net.prototxt", "-w", root / "net.caffemodel", "-o", tmp_path / "net.onnx", "--plugin", PLUGIN)
    onnx.checker.check_model(onnx.load(tmp_path / "net.onnx"), full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = reference(blobs, x)
    assert np.abs(run_onnx(tmp_path / "net.onnx", x) - expected).max() <= 1e-4 * max(1, np.abs(expected).max())


def test_plugin_prune_is_exact_against_the_masked_original(fork_net, tmp_path):
    """Prune conv1 to channels 0, 2, 3 through the plugin's rules; the result equals the original with the
    other channels switched off (conv1 rows zeroed: gain * 0 -> tanh(0) = 0 reaches conv2)."""
    root, blobs = fork_net
    keep = [0, 2, 3]
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "keep": {"conv1": keep}}))
    cli("--plugin", PLUGIN, "prune", root / "net.prototxt", "-w", root / "net.caffemodel", "--plan",
        tmp_path / "plan.json", "-o", tmp_path / "small")
    pruned = caffe_pb2.NetParameter.FromString((tmp_path / "small.caffemodel").read_bytes())
    gains = next(layer for layer in pruned.layer if layer.name == "gain").blobs[0]
    assert list(gains.shape.dim) == [3] and np.allclose(gains.data, blobs["gain"][0][keep])
    assert "scaled_tanh_param" in (tmp_path / "small.prototxt").read_text()

    masked = {name: [a.copy() for a in arrays] for name, arrays in blobs.items()}
    off = [c for c in range(6) if c not in keep]
    masked["conv1"][0][off] = 0
    masked["conv1"][1][off] = 0
    (tmp_path / "masked.caffemodel").write_bytes(_weights(masked))
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for name, weights, prototxt in (("small", tmp_path / "small.caffemodel", tmp_path / "small.prototxt"),
                                    ("masked", tmp_path / "masked.caffemodel", root / "net.prototxt")):
        cli("--plugin", PLUGIN, "export", prototxt, "-w", weights, "-o", tmp_path / f"{name}.onnx")
    small, masked_out = run_onnx(tmp_path / "small.onnx", x), run_onnx(tmp_path / "masked.onnx", x)
    assert np.abs(small - masked_out).max() <= 1e-5 * max(1, np.abs(masked_out).max())

    compared = cli("compare", root / "net.prototxt", tmp_path / "masked.caffemodel", tmp_path / "small.prototxt",
                   tmp_path / "small.caffemodel", "--plugin", PLUGIN).stdout
    row = next(line for line in compared.splitlines() if line.split()[:1] == ["conv2"])
    assert float(row.split()[3]) <= 1e-5 and "divergence" not in row


def test_plugin_redeclaring_a_builtin_type_is_one_clear_line(tmp_path, fork_net):
    root, _ = fork_net
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("from caffe_surgery.layers import declare, lookup\ndeclare(lookup('ReLU'))\n")
    done = cli("--plugin", bad, "info", root / "net.prototxt", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: layer type 'ReLU' is already declared (by caffe-surgery)"]


def test_plugin_that_fails_to_import_is_one_clear_line(tmp_path, fork_net):
    root, _ = fork_net
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("import not_a_module_anywhere\n")
    done = cli("info", root / "net.prototxt", "--plugin", bad, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: cannot load plugin: ModuleNotFoundError: No module named 'not_a_module_anywhere'"]
    missing = cli("--plugin", tmp_path / "absent.py", "info", root / "net.prototxt", check=False)
    assert missing.stderr.strip() == f"error: {tmp_path / 'absent.py'}: plugin file does not exist"


def test_installed_package_plugin_via_entry_point(tmp_path, fork_net):
    """A distribution advertising the 'caffe_surgery.layers' entry point registers its types without --plugin."""
    root, blobs = fork_net
    site = tmp_path / "site"
    (site / "fork_pkg").mkdir(parents=True)
    (site / "fork_pkg" / "__init__.py").write_text(PLUGIN.read_text())
    info = site / "fork_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fork-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[caffe_surgery.layers]\nfork = fork_pkg\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    done = subprocess.run([sys.executable, "-m", "caffe_surgery.cli", "export", str(root / "net.prototxt"), "-w",
                           str(root / "net.caffemodel"), "-o", str(tmp_path / "net.onnx")],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = reference(blobs, x)
    assert np.abs(run_onnx(tmp_path / "net.onnx", x) - expected).max() <= 1e-4 * max(1, np.abs(expected).max())


RACE = """
import sys, threading
sys.setswitchinterval(1e-6)
from caffe_surgery.layers import registry
barrier, found = threading.Barrier(8), []
def ask():
    barrier.wait()
    found.append(len(registry.types_with("export")) if registry.lookup("Input") else 0)
threads = [threading.Thread(target=ask) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(found)
"""


def test_threads_asking_at_once_all_see_the_whole_registry():
    """A Ray worker unpickles a task's arguments in threads: none may see a half-loaded registry."""
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    found = json.loads(done.stdout)
    assert done.returncode == 0 and len(found) == 8 and set(found) == {len(layers.types_with("export"))}, done.stderr
