"""Property tests over the readers and the plan/surgery path: any input gives a result or one of the
project's errors, never another exception, within bounded memory (a small --max-memory) and time.

A bounded budget runs here; ``scripts/fuzz.py --budget N`` drives the CLI verbs for longer.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffe_surgery import caffe_pb2, limits, textproto
from caffe_surgery.data import parse_data_spec
from caffe_surgery.errors import CaffeSurgeryError, PlanError
from caffe_surgery.groups import build_groups
from caffe_surgery.io import read_net_text, read_weight_layers
from caffe_surgery.model import load_model, read_stored_weights
from caffe_surgery.plan import Plan, resolve_plan
from caffe_surgery.save import save_caffemodel, save_prototxt
from caffe_surgery.surgery import apply_plan
from conftest import REPO
from pruning_nets import NETS, random_weights

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SAMPLE_PROTOTXT = (REPO / "samples" / "lenet_maxout.prototxt").read_text()


@pytest.fixture(autouse=True)
def small_memory_limit():
    """Every allocation a hostile size asks for is refused above 256 MiB here."""
    limits.set_max_memory(256 << 20)
    yield
    limits.set_max_memory(None)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A small net with random weights written as a prototxt/caffemodel pair, and the caffemodel's bytes."""
    folder = tmp_path_factory.mktemp("pair")
    net, _ = random_weights(NETS["max_feature_map"], seed=0)
    save_prototxt(net, folder / "net.prototxt")
    save_caffemodel(net, folder / "net.caffemodel")
    return folder / "net.prototxt", (folder / "net.caffemodel").read_bytes()


def _mutations():
    """(kind, position, value) edits applied to a byte string."""
    return st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.floats(0, 1),
                              st.integers(0, 255)), min_size=1, max_size=6)


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        position = int(where * max(len(out) - 1, 0))
        if not out:
            out.append(value)
        elif kind == "flip":
            out[position] ^= 1 << (value % 8)
        elif kind == "cut":
            del out[position:]
        elif kind == "insert":
            out[position:position] = bytes([value]) * (1 + value % 9)
        else:
            del out[position:position + 1 + value % 16]
    return bytes(out)


@PROPERTY
@given(edits=_mutations())
def test_caffemodel_readers_take_any_mutation(small_pair, edits):
    prototxt, data = small_pair
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.caffemodel"
        path.write_bytes(_mutate(data, edits))
        streamed = read_weight_layers(path)  # None or layers; never an exception but the project's
        assert streamed is None or isinstance(streamed[1], list)
        try:
            read_stored_weights(path)
            load_model(prototxt, path)
        except CaffeSurgeryError:
            pass


@PROPERTY
@given(dims=st.lists(st.integers(-(1 << 62), 1 << 62), min_size=0, max_size=5),
       legacy=st.none() | st.tuples(*[st.integers(-(1 << 31), (1 << 31) - 1)] * 4),
       values=st.integers(0, 64))
def test_hostile_blob_headers_never_allocate(small_pair, dims, legacy, values):
    prototxt, _ = small_pair
    layer = caffe_pb2.LayerParameter(name="conv1", type="Convolution")
    blob = layer.blobs.add()
    blob.shape.dim.extend(dims)
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = legacy
    blob.data.extend([0.5] * values)
    net = caffe_pb2.NetParameter()
    net.layer.add().CopyFrom(layer)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.caffemodel"
        path.write_bytes(net.SerializeToString())
        with pytest.raises(CaffeSurgeryError):
            load_model(prototxt, path)


_FIELD_NAMES = st.sampled_from(["fork_a", "fork_b", "visualize", "resize_param", "x9"])
_SCALARS = st.one_of(st.integers(-10, 10).map(str), st.sampled_from(['"s"', "true", "MAX", "1.5e3", "-inf"]))


@st.composite
def _unknown_field(draw, depth=0):
    name = draw(_FIELD_NAMES)
    if depth < 2 and draw(st.booleans()):
        inner = " ".join(draw(st.lists(_unknown_field(depth + 1), max_size=3)))
        return f"{name} {{ {inner} }}"
    if draw(st.booleans()):
        return f"{name}: [{', '.join(draw(st.lists(_SCALARS, min_size=1, max_size=3)))}]"
    return f"{name}: {draw(_SCALARS)}"


@PROPERTY
@given(fields=st.lists(st.tuples(st.integers(0, 10 ** 6), _unknown_field()), max_size=8))
def test_unknown_fields_anywhere_round_trip(fields):
    lines = SAMPLE_PROTOTXT.split("\n")
    block_ends = [i for i, line in enumerate(lines) if line.strip() == "}" or line.endswith("}")]
    for where, text in fields:
        lines.insert(block_ends[where % len(block_ends)], "  " + text)
    text = "\n".join(lines)
    first = caffe_pb2.NetParameter()
    names = textproto.parse(text, first)
    assert sorted(names) == sorted(field.split()[0].rstrip(":") for _, field in fields)
    again = caffe_pb2.NetParameter()
    assert sorted(textproto.parse(textproto.to_text(first), again)) == sorted(names)
    assert again == first


@PROPERTY
@given(edits=_mutations())
def test_prototxt_reader_takes_any_mutation(edits):
    data = _mutate(SAMPLE_PROTOTXT.encode(), edits)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.prototxt"
        path.write_bytes(data)
        try:
            read_net_text(path)
            load_model(path)
        except CaffeSurgeryError:
            pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
                     | st.text(max_size=5), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def plan_net():
    net, shapes = random_weights(NETS["residual_concat_slice"], seed=1)
    return net, shapes, build_groups(net, shapes)


def _names(net):
    return st.sampled_from([layer.name for layer in net.layers] + ["nope", ""])


@settings(PROPERTY, max_examples=20)
@given(data=st.data())
def test_any_plan_json_resolves_or_is_a_plan_error(plan_net, data):
    net, shapes, groups = plan_net
    keep = data.draw(st.dictionaries(_names(net), st.lists(st.integers(-2, 20), max_size=12) | _JSON, max_size=4))
    document = data.draw(st.just({"version": 1, "keep": keep}) | _JSON)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(json.dumps(document))
        try:
            plan = Plan.load(path)
            kept = resolve_plan(plan, net, groups, str(path))
        except PlanError:
            return
    pruned, pruned_shapes = apply_plan(net, shapes, groups, kept)  # a resolved plan always applies
    for gid, indices in kept.items():
        for producer in groups.groups[gid].producers:
            assert pruned_shapes.blob(pruned.layer(producer).tops[0])[1] == indices.size


@PROPERTY
@given(data=st.data())
def test_valid_random_plans_apply_on_every_generated_net(data):
    name = data.draw(st.sampled_from(sorted(NETS)))
    net, shapes = random_weights(NETS[name], seed=2)
    groups = build_groups(net, shapes)
    keep = {}
    for group in groups.prunable():
        if not data.draw(st.booleans()):
            continue
        if group.maxout is not None:
            per_unit = data.draw(st.integers(1, group.maxout.k))
            kept = np.sort(group.maxout.neurons[:, :per_unit].ravel())
        elif group.chunks > 1:
            per_chunk = group.size // group.chunks
            count = data.draw(st.integers(1, per_chunk))
            kept = np.concatenate([c * per_chunk + np.arange(count) for c in range(group.chunks)])
        else:
            kept = np.array(sorted(data.draw(st.sets(st.integers(0, group.size - 1), min_size=1))))
        keep[group.producers[0]] = kept.tolist()
    try:
        resolved = resolve_plan(Plan(keep), net, groups)
    except PlanError:
        return  # e.g. constraints a drawn plan does not meet: refused, not crashed
    pruned, pruned_shapes = apply_plan(net, shapes, groups, resolved)
    assert pruned_shapes.totals()[0] <= shapes.totals()[0]


@PROPERTY
@given(kind=st.sampled_from(["idx", "csv", "npy", "list"]), payload=st.binary(max_size=600),
       header=st.lists(st.integers(0, (1 << 32) - 1), max_size=4))
def test_data_specs_take_any_file(kind, payload, header):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data.{kind}"
        if kind == "idx" and header:
            payload = b"\0\0\x08" + bytes([len(header)]) + b"".join(d.to_bytes(4, "big") for d in header) + payload
        path.write_bytes(payload)
        try:
            source = parse_data_spec(f"{kind}:{path}")
            next(iter(source.iter_batches(4)), None)
        except CaffeSurgeryError:
            pass


def test_text_format_errors_stay_parse_errors():
    with pytest.raises(text_format.ParseError):
        textproto.parse('layer { name: "a" fork { x: 1 ', caffe_pb2.NetParameter())
