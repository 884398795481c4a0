"""Hostile inputs: one clear error and exit 1, never a traceback, a hog, a destroyed input or a silent success."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2, limits
from caffe_surgery.check import check_files
from caffe_surgery.cli import main
from caffe_surgery.errors import CaffeSurgeryError, ParseError, PlanError
from caffe_surgery.evaluate import evaluate
from caffe_surgery.graph import build_net
from caffe_surgery.io import TEMP_MARK, atomic_write, read_weights
from caffe_surgery.model import load_model, load_net
from caffe_surgery.plan import Plan
from caffe_surgery.statistics import merge_files
from caffe_surgery.wire import encode_varint, field_key, length_delimited
from conftest import REPO

SAMPLE = REPO / "samples" / "lenet_maxout"
PROTOTXT, CAFFEMODEL = SAMPLE.with_suffix(".prototxt"), SAMPLE.with_suffix(".caffemodel")


def run(argv, capsys):
    """(exit code, stderr) of the CLI run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def sample_weights() -> caffe_pb2.NetParameter:
    return read_weights(CAFFEMODEL)


def layer_of(weights, name):
    return next(layer for layer in weights.layer if layer.name == name)


def write(path, weights) -> str:
    path.write_bytes(weights.SerializeToString() if not isinstance(weights, bytes) else weights)
    return str(path)


# -- hostile sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.shape.dim.__setitem__(slice(None), [1 << 32, 1 << 32]), "holds 500 values, expected 18446744073709551616"),
    (lambda b: b.shape.dim.__setitem__(slice(None), [20, -1, 5, 5]), "negative dimension"),
    (lambda b: (setattr(b, "num", 7), setattr(b, "channels", 5)), "conflicting legacy dims"),
    (lambda b: (b.ClearField("shape"), [b.ClearField(f) for f in ("num", "channels", "height", "width")]),
     "declares no shape"),
])
def test_hostile_blob_shapes_are_refused_by_load_and_check(tmp_path, mutate, message):
    weights = sample_weights()
    mutate(layer_of(weights, "conv1").blobs[0])
    path = write(tmp_path / "bad.caffemodel", weights)
    with pytest.raises(CaffeSurgeryError, match=message):
        load_model(PROTOTXT, path)
    assert any(message in problem for problem in check_files(PROTOTXT, path))


def test_data_length_of_2_to_the_40_is_refused_before_allocation(tmp_path, capsys):
    blob = field_key(5) + encode_varint(1 << 40) + b"\0" * 64
    layer = length_delimited(1, b"ip") + field_key(7) + encode_varint(len(blob)) + blob
    path = write(tmp_path / "huge.caffemodel", length_delimited(100, layer))
    code, err = run(["info", PROTOTXT, "-w", path], capsys)
    assert code == 1 and err.startswith(f"error: {path}: ") and "Traceback" not in err


def test_weights_beyond_max_memory_are_refused_with_the_number(tmp_path, capsys):
    text = PROTOTXT.read_text().replace("num_output: 20 ", "num_output: 2000000000 ")
    (tmp_path / "big.prototxt").write_text(text)
    code, err = run(["info", tmp_path / "big.prototxt", "--max-memory", "1G"], capsys)
    assert code == 1 and "conv1: the Convolution layer's weights (2000000000, 1, 5, 5), (2000000000,)" in err
    assert "GiB (" in err and "more than the memory limit of 1.00 GiB (1073741824 bytes)" in err


@pytest.mark.parametrize("argv", [
    ["info", "/dev/zero"], ["info", PROTOTXT, "-w", "/dev/zero"], ["info", PROTOTXT, "-w", "/dev/urandom"],
    ["prune", PROTOTXT, "-w", CAFFEMODEL, "--plan", "/dev/zero", "-o", "{tmp}/x"],
    ["eval", PROTOTXT, "-w", CAFFEMODEL, "--data", "csv:/dev/zero"],
    ["eval", PROTOTXT, "-w", CAFFEMODEL, "--data", "idx:/dev/zero"],
    ["eval", PROTOTXT, "-w", CAFFEMODEL, "--data", "npy:/dev/zero"],
    ["relevance", "merge", "/dev/zero", "-o", "{tmp}/m.npz"],
])
def test_devices_are_refused_without_reading_them(tmp_path, capsys, argv):
    started = time.perf_counter()
    code, err = run([str(a).format(tmp=tmp_path) for a in argv], capsys)
    assert code == 1 and "is not a regular file" in err and time.perf_counter() - started < 30


def test_idx_header_beyond_the_file_is_refused(tmp_path, capsys):
    header = b"\0\0\x08\x03" + (1 << 31).to_bytes(4, "big") + (4096).to_bytes(4, "big") * 2
    (tmp_path / "x.idx").write_bytes(header + b"\0" * 64)
    code, err = run(["eval", PROTOTXT, "-w", CAFFEMODEL, "--data", f"idx:{tmp_path / 'x.idx'}"], capsys)
    assert code == 1 and "the file holds 64" in err


def test_pickled_numpy_data_and_plans_and_truncated_shards_are_clean_errors(tmp_path, capsys):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    code, err = run(["eval", PROTOTXT, "-w", CAFFEMODEL, "--data", f"npy:{tmp_path / 'objects.npy'}"], capsys)
    assert code == 1 and "cannot load numpy file" in err
    code, err = run(["prune", PROTOTXT, "-w", CAFFEMODEL, "--plan", tmp_path / "objects.npy", "-o", tmp_path / "p"],
                    capsys)
    assert code == 1 and "cannot read plan: not JSON" in err
    np.savez(tmp_path / "part.npz", samples=np.array(4), total=np.arange(1000.0))
    raw = (tmp_path / "part.npz").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 5):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(CaffeSurgeryError, match="not a statistics file"):
            merge_files([tmp_path / "part.npz", tmp_path / "cut.npz"])


def test_non_utf8_layer_names_in_a_caffemodel_are_a_clean_error(tmp_path, capsys):
    data = CAFFEMODEL.read_bytes().replace(b"conv1", b"co\xffn1")
    path = write(tmp_path / "names.caffemodel", data)
    for argv in (["info", PROTOTXT, "-w", path], ["sparsify", PROTOTXT, "-w", path, "--sparsity", "0.5", "-o",
                                                  tmp_path / "s"], ["fold-bn", PROTOTXT, "-w", path, "-o", tmp_path / "f"]):
        code, err = run(argv, capsys)
        assert code == 1 and "a layer name is not UTF-8 text: b'co\\xffn1'" in err


# -- silent wrong successes ---------------------------------------------------------------------

def _with_copy(weights, name, bad_first: bool):
    """The caffemodel with layer ``name`` stored twice: a copy missing its bias, before or after the good one."""
    good = layer_of(weights, name)
    bad = caffe_pb2.LayerParameter()
    bad.CopyFrom(good)
    del bad.blobs[-1]
    pieces = []
    for layer in weights.layer:
        record = length_delimited(100, layer.SerializeToString())
        if layer.name == name:
            record = (length_delimited(100, bad.SerializeToString()) + record if bad_first
                      else record + length_delimited(100, bad.SerializeToString()))
        pieces.append(record)
    return b"".join(pieces)


def test_a_layer_stored_twice_every_copy_must_fit_and_the_last_wins(tmp_path):
    weights = sample_weights()
    path = write(tmp_path / "twice.caffemodel", _with_copy(weights, "conv1", bad_first=True))
    with pytest.raises(CaffeSurgeryError, match="conv1: stored copy 1 of 2: caffemodel has 1 blobs"):
        load_model(PROTOTXT, path)
    assert any("stored copy 1 of 2" in p for p in check_files(PROTOTXT, path))
    changed = caffe_pb2.LayerParameter()
    changed.CopyFrom(layer_of(weights, "conv1"))
    changed.blobs[1].data[:] = np.full(20, 7.0, np.float32)
    twice = b"".join(length_delimited(100, l.SerializeToString()) for l in weights.layer)
    path = write(tmp_path / "last.caffemodel", twice + length_delimited(100, changed.SerializeToString()))
    assert np.array_equal(load_model(PROTOTXT, path).net.layer("conv1").blobs[1], np.full(20, 7.0, np.float32))
    assert check_files(PROTOTXT, path) == []


def test_weights_of_another_net_and_missing_blobs_are_refused(tmp_path):
    other = caffe_pb2.NetParameter()
    for layer in sample_weights().layer:
        layer.name = "other_" + layer.name
        other.layer.add().CopyFrom(layer)
    with pytest.raises(CaffeSurgeryError, match="weights of another net"):
        load_model(PROTOTXT, write(tmp_path / "other.caffemodel", other))
    weights = sample_weights()
    del layer_of(weights, "fc_3").blobs[:]
    path = write(tmp_path / "noblobs.caffemodel", weights)
    with pytest.raises(CaffeSurgeryError, match="fc_3: caffemodel has 0 blobs, the layer expects 2"):
        load_model(PROTOTXT, path)
    weights = sample_weights()
    weights.layer.remove(layer_of(weights, "fc_3"))
    with pytest.raises(CaffeSurgeryError, match="fc_3: no weights in the caffemodel"):
        load_model(PROTOTXT, write(tmp_path / "nolayer.caffemodel", weights))


@pytest.mark.parametrize("text, message", [
    ("", "the net has no layers"),
    ("# only a comment\n\n# and another\n", "the net has no layers"),
    ('name: "t"\nlayer { name: "d" type: "Input" top: "d" include { phase: TRAIN } '
     'input_param { shape { dim: 1 dim: 2 } } }\n', "is included in the TEST phase"),
    ('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 0 dim: 4 } } }\n'
     'layer { name: "r" type: "ReLU" bottom: "d" top: "r" }\n', "would have shape (1, 0, 4)"),
])
def test_check_and_load_refuse_nets_with_nothing_to_run(tmp_path, text, message):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    [problem] = check_files(path, CAFFEMODEL)
    assert message in problem and problem.startswith(str(path))
    with pytest.raises(CaffeSurgeryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(path)


def test_build_net_appends_the_callers_stages_to_the_prototxts_own():
    text = ('state { stage: "deploy" }\n'
            'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
            'layer { name: "a" type: "ReLU" bottom: "d" top: "a" include { stage: "deploy" } }\n'
            'layer { name: "b" type: "ReLU" bottom: "d" top: "b" include { stage: "deploy" stage: "x" } }\n')
    net_param = text_format.Parse(text, caffe_pb2.NetParameter())
    assert [l.name for l in build_net(net_param).layers] == ["d", "a"]
    assert [l.name for l in build_net(net_param, stages=("x",)).layers] == ["d", "a", "b"]


def test_eval_of_no_samples_and_prune_option_conflicts_are_refused(tmp_path, capsys):
    code, err = run(["eval", PROTOTXT, "-w", CAFFEMODEL, "--limit", "0"], capsys)
    assert code == 2 and "expected a positive integer, got '0'" in err
    model = load_model(PROTOTXT, CAFFEMODEL)
    with pytest.raises(CaffeSurgeryError, match="no samples to evaluate"):
        evaluate(model.net, model.shapes, [])
    base = ["prune", PROTOTXT, "-w", CAFFEMODEL, "--criterion", "weight-l1", "-o", tmp_path / "p", "--global"]
    code, err = run(base + ["--keep", "5"], capsys)
    assert code == 1 and "--keep and --layer-ratio set per-layer counts" in err
    code, err = run(base + ["--ratio", "0.5", "--layer-ratio", "conv1=0.0"], capsys)
    assert code == 1 and "use one or the other" in err
    code, err = run(["prune", PROTOTXT, "-w", CAFFEMODEL, "--criterion", "random-masks", "--ratio", "0.5",
                     "--masks", "0", "-o", tmp_path / "p"], capsys)
    assert code == 2 and "--masks" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_plan_load_refuses_booleans_and_closes_its_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"version": 1, "keep": {"conv1": [True, False]}}))
    with pytest.raises(PlanError, match="integer indices"):
        Plan.load(path)
    path.write_text(json.dumps({"version": 1, "keep": {"conv1": [0, 1]}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        assert Plan.load(path).keep == {"conv1": [0, 1]}


def test_load_net_and_check_agree_on_a_net_of_training_only_layers(tmp_path):
    text = PROTOTXT.read_text().replace("layer {", "layer {\n  include { phase: TRAIN }")
    (tmp_path / "train.prototxt").write_text(text)
    with pytest.raises(CaffeSurgeryError) as loading:
        load_net(tmp_path / "train.prototxt")
    assert check_files(tmp_path / "train.prototxt", CAFFEMODEL) == [str(loading.value)]


# -- inputs never destroyed ---------------------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    proto, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    proto.write_bytes(PROTOTXT.read_bytes())
    weights.write_bytes(CAFFEMODEL.read_bytes())
    return proto, weights


@pytest.mark.parametrize("argv", [
    ["prune", "{p}", "-w", "{w}", "--criterion", "weight-l1", "--ratio", "0.5", "-o", "{prefix}"],
    ["fold-bn", "{p}", "-w", "{w}", "-o", "{prefix}"],
    ["sparsify", "{p}", "-w", "{w}", "--sparsity", "0.5", "-o", "{prefix}"],
    ["upgrade", "{p}", "{p}"],
    ["upgrade", "{p}", "{dir}/./net.prototxt"],
    ["upgrade", "{p}", "{dir}/new.prototxt", "-w", "{w}", "-o", "{w}"],
    ["export", "{p}", "-w", "{w}", "-o", "{w}"],
    ["export", "{p}", "-w", "{w}", "-o", "{dir}/link.caffemodel"],
    ["relevance", "{p}", "-w", "{w}", "--criterion", "apoz", "--data", "idx:/nonexistent", "-o", "{w}"],
])
def test_an_output_naming_an_input_is_refused(pair, capsys, argv):
    proto, weights = pair
    os.link(weights, proto.parent / "link.caffemodel")
    before = proto.read_bytes(), weights.read_bytes()
    fill = dict(p=proto, w=weights, prefix=proto.parent / "net", dir=proto.parent)
    code, err = run([a.format(**fill) for a in argv], capsys)
    assert code == 1 and "the output is an input of this command" in err and "--in-place" in err
    assert (proto.read_bytes(), weights.read_bytes()) == before
    assert sorted(p.name for p in proto.parent.iterdir()) == ["link.caffemodel", "net.caffemodel", "net.prototxt"]


def test_in_place_is_allowed_when_asked_for(pair, capsys):
    proto, weights = pair
    code, _ = run(["upgrade", proto, proto, "-w", weights, "-o", weights, "--in-place"], capsys)
    assert code == 0 and load_model(proto, weights).net.layer("conv1").blobs[0].shape == (20, 1, 5, 5)


def test_convert_data_onto_its_own_source_and_merge_onto_a_part_are_refused(tmp_path, capsys):
    images = tmp_path / "images.idx"
    images.write_bytes(b"\0\0\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
    assert run(["convert-data", f"idx:{images}", "-o", tmp_path / "db"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir()}
    code, err = run(["convert-data", f"lmdb:{tmp_path / 'db'}", "-o", tmp_path / "db", "--force"], capsys)
    assert code == 1 and "the output is an input" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir()} == before
    np.savez(tmp_path / "part.npz", samples=np.array(3))
    code, err = run(["relevance", "merge", tmp_path / "part.npz", "-o", tmp_path / "part.npz"], capsys)
    assert code == 1 and "the output is an input" in err


# -- writes survive SIGKILL -----------------------------------------------------------------------

WRITER = """
import sys
from caffe_surgery.io import atomic_write

def chunks(count):
    for index in range(count):
        if index == 1:  # the write is under way: tell the test, which kills us at some point from here on
            print("writing", flush=True)
        yield bytes([7]) * (1 << 20)

atomic_write(sys.argv[1], chunks(int(sys.argv[2])))
"""


def test_a_killed_writer_leaves_the_old_file_or_the_new_one_and_no_temporaries(tmp_path):
    target = tmp_path / "out.bin"
    old = b"old" * 1000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outcomes = set()
    for delay in (0.0, 0.01, 0.05, 0.2, None):  # None: after the writer finished
        target.write_bytes(old)
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "48"], env=env, stdout=subprocess.PIPE)
        assert process.stdout.readline() == b"writing\n"
        if delay is None:
            process.wait()
        else:
            time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        data = target.read_bytes()
        assert data == old or data == bytes([7]) * (48 << 20)
        outcomes.add(data == old)
        atomic_write(tmp_path / "next.bin", [b"next"])  # the next write cleans what a killed one left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["next.bin", "out.bin"]
    assert outcomes == {True, False}, "a kill must land during a write (old file kept) and after it (new file)"


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    live = tmp_path / f".out.bin.{os.getpid()}.abc{TEMP_MARK}"
    dead = tmp_path / f".out.bin.999999999.abc{TEMP_MARK}"
    other = tmp_path / ".out.bin.notours"
    for path in (live, dead, other):
        path.write_bytes(b"x")
    atomic_write(tmp_path / "out.bin", [b"new"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out.bin"])


def test_max_memory_sizes_parse():
    assert limits.parse_size("4G") == 4 << 30 and limits.parse_size("512MiB") == 512 << 20
    for bad in ("0", "-1G", "lots"):
        with pytest.raises(ValueError):
            limits.parse_size(bad)
    with pytest.raises(ParseError, match="blob shape"):
        limits.element_count((3, -1), "blob shape")


# -- fork fields ------------------------------------------------------------------------------------

def test_unknown_fields_are_found_in_one_pass_and_kept_in_place():
    layers = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "x" fork_{i}: {i} '
                     f'fork_block {{ a: [1, 2] b {{ c: "s" }} }} }}\n' for i in range(300))
    net = caffe_pb2.NetParameter()
    from caffe_surgery import textproto
    names = textproto.parse('name: "n"\n' + layers, net)
    assert names == [n for i in range(300) for n in (f"fork_{i}", "fork_block")]
    again = caffe_pb2.NetParameter()
    assert textproto.parse(textproto.to_text(net), again) == names and again == net
    assert "fork_299: 299" in textproto.to_text(net).split('name: "r299"')[1]


FORK_PROTO_EXTRA = "  optional float fork_gain = 9999;\n"


def _fork_schema(tmp_path):
    text = (REPO / "proto" / "caffe.proto").read_text().replace(
        "message LayerParameter {\n", "message LayerParameter {\n" + FORK_PROTO_EXTRA, 1)
    (tmp_path / "fork.proto").write_text(text)
    return tmp_path / "fork.proto"


def test_a_fork_schema_types_its_fields(tmp_path, capsys):
    schema = _fork_schema(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(PROTOTXT.read_text().replace('type: "Pooling"', 'type: "Pooling"\n  fork_gain: 2.5', 1))
    code, _ = run(["upgrade", net, tmp_path / "out.prototxt", "--proto", schema], capsys)
    assert code == 0 and "fork_gain: 2.5" in (tmp_path / "out.prototxt").read_text()
    net.write_text(PROTOTXT.read_text().replace('type: "Pooling"', 'type: "Pooling"\n  fork_gain: "high"', 1))
    code, err = run(["upgrade", net, tmp_path / "bad.prototxt", "--proto", schema], capsys)
    assert code == 1 and "Couldn't parse float" in err
    code, _ = run(["upgrade", net, tmp_path / "untyped.prototxt"], capsys)  # without the schema: kept as text
    assert code == 0 and 'fork_gain: "high"' in (tmp_path / "untyped.prototxt").read_text()


def test_a_fork_schema_without_grpcio_tools_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc_tools", None)
    code, err = run(["info", PROTOTXT, "--proto", _fork_schema(tmp_path)], capsys)
    assert code == 1 and "--proto needs grpcio-tools" in err


# -- compare streams ------------------------------------------------------------------------------

def test_compare_streams_batches_within_a_small_memory_limit(capsys):
    code, _ = run(["compare", PROTOTXT, CAFFEMODEL, PROTOTXT, CAFFEMODEL, "--limit", "500", "--max-memory", "16M",
                   "--threads", "1"], capsys)
    assert code == 0
    code, err = run(["compare", PROTOTXT, CAFFEMODEL, PROTOTXT, CAFFEMODEL, "--limit", "500", "--max-memory", "1M"],
                    capsys)
    assert code == 1 and "comparing a batch of 64 samples" in err


def test_difference_sums_over_batches_equal_one_pass():
    from caffe_surgery.compare import DifferenceSums
    rng = np.random.default_rng(0)
    a = rng.standard_normal((130, 3, 4)).astype(np.float32)
    b = a + rng.standard_normal(a.shape).astype(np.float32) * 0.01
    whole, parts = DifferenceSums(), DifferenceSums()
    whole.add(a, b)
    for start in range(0, 130, 64):
        parts.add(a[start:start + 64], b[start:start + 64])
    one, many = whole.result("x"), parts.result("x")
    assert one.shape_a == many.shape_a == (130, 3, 4)
    assert one.max_abs == many.max_abs and one.relative == many.relative
    assert many.cosine == pytest.approx(one.cosine, abs=1e-12)
    x64, y64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    assert one.max_abs == np.abs(x64 - y64).max()
    assert one.cosine == pytest.approx(x64 @ y64 / np.linalg.norm(x64) / np.linalg.norm(y64), abs=1e-12)
