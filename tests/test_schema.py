"""proto/caffe.proto matches the wire facts, and the committed bindings match proto/caffe.proto.

Both checks read the committed bindings' serialized file descriptor, so they
compare what protobuf actually uses at run time.
"""
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from caffe_surgery import caffe_pb2
from conftest import REPO, WIRE_FACTS

FieldProto = descriptor_pb2.FieldDescriptorProto
LABELS = {"optional": FieldProto.LABEL_OPTIONAL, "repeated": FieldProto.LABEL_REPEATED,
          "required": FieldProto.LABEL_REQUIRED}
SCALAR_TYPES = {name.lower()[5:]: value for name, value in FieldProto.Type.items()}


def _facts():
    rows = []
    for line in WIRE_FACTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append((line.split("\t") + [""] * 7)[:7])
    return rows


@pytest.fixture(scope="module")
def schema():
    """Every field and enum of the committed bindings, keyed as the facts file names them."""
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    fields, values = {}, {}
    for enum in file_proto.enum_type:
        values.update({(enum.name, v.name): v.number for v in enum.value})
    for message in file_proto.message_type:
        assert not message.nested_type, f"{message.name} has nested messages the facts do not list"
        fields.update({(message.name, f.name): f for f in message.field})
        for enum in message.enum_type:
            values.update({(f"{message.name}.{enum.name}", v.name): v.number for v in enum.value})
    return file_proto, fields, values


def _type_of(field):
    if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
        return field.type_name.lstrip(".")
    return field.type


def _expected_type(type_text):
    return type_text if type_text.startswith("caffe.") else SCALAR_TYPES[type_text]


def _default_matches(field, text):
    text = text.strip()
    if text.startswith("[") or text == "":
        return not field.HasField("default_value")
    if field.type in (FieldProto.TYPE_FLOAT, FieldProto.TYPE_DOUBLE):
        return float(field.default_value) == pytest.approx(float(text), rel=1e-6)
    return field.default_value == text


def test_every_listed_field_and_enum_value_matches(schema):
    _, fields, values = schema
    problems = []
    for kind, scope, name, number, label, type_text, default in _facts():
        if kind == "enum":
            if values.get((scope, name)) != int(number):
                problems.append(f"enum value {scope}.{name} should be {number}, is {values.get((scope, name))}")
            continue
        field = fields.get((scope, name))
        if field is None:
            problems.append(f"missing field {scope}.{name}")
            continue
        if field.number != int(number):
            problems.append(f"{scope}.{name}: number {field.number}, facts say {number}")
        if field.label != LABELS[label]:
            problems.append(f"{scope}.{name}: label differs from {label}")
        if _type_of(field) != _expected_type(type_text):
            problems.append(f"{scope}.{name}: type {_type_of(field)}, facts say {type_text}")
        if not _default_matches(field, default):
            problems.append(f"{scope}.{name}: default {field.default_value!r}, facts say {default!r}")
        if field.options.packed != ("[packed]" in default):
            problems.append(f"{scope}.{name}: packed is {field.options.packed}")
    assert not problems, "\n".join(problems)


def test_schema_has_nothing_beyond_the_facts(schema):
    file_proto, fields, values = schema
    facts = _facts()
    listed_fields = {(s, n) for k, s, n, *_ in facts if k == "field"}
    listed_values = {(s, n) for k, s, n, *_ in facts if k == "enum"}
    assert sorted(set(fields) - listed_fields) == []
    assert sorted(set(values) - listed_values) == []
    assert file_proto.package == "caffe"
    assert file_proto.syntax in ("", "proto2")


def test_committed_bindings_describe_proto_file(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) compiles proto/caffe.proto")
    out = tmp_path / "caffe.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={REPO / 'proto'}",
                    f"--descriptor_set_out={out}", str(REPO / "proto" / "caffe.proto")], check=True)
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    assert _normalised(compiled) == _normalised(committed)


def _normalised(file_proto):
    """Drop what differs only in spelling: protoc's json_name, and float defaults' digits (1e-08 vs 9.99999994e-09)."""
    for message in file_proto.message_type:
        for field in message.field:
            field.ClearField("json_name")
            if field.type == FieldProto.TYPE_FLOAT and field.HasField("default_value"):
                field.default_value = repr(float(np.float32(field.default_value)))
    return file_proto
