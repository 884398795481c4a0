"""A user's fork schema (``--proto fork.proto``): fork fields read and written typed.

The .proto is compiled at run time by the protoc that grpcio-tools ships into
a descriptor set in a temporary folder, which is loaded into a pool of its own
(the fork's ``caffe`` package would clash with the project's in the default
pool). Texts are parsed with the fork's message types, so the fork's fields
are checked against their declared types, then carried into the project's
messages as binary fields; writing converts back, so they print by name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from .errors import CaffeSurgeryError


class ForkSchema:
    """Message classes of a fork's .proto, by full name (e.g. ``caffe.NetParameter``)."""

    def __init__(self, path: str, pool: descriptor_pool.DescriptorPool):
        self.path, self._pool = path, pool

    def message_class(self, full_name: str):
        """The fork's class for a message the project also knows; CaffeSurgeryError when the fork lacks it."""
        try:
            return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full_name))
        except KeyError:
            raise CaffeSurgeryError(f"the fork schema defines no message {full_name}", file=self.path) from None

    def to_fork(self, proto: message.Message) -> message.Message:
        """The same message as the fork's type (its fork fields become named fields)."""
        fork = self.message_class(proto.DESCRIPTOR.full_name)()
        fork.ParseFromString(proto.SerializeToString())
        return fork

    def from_fork(self, fork: message.Message, proto: message.Message) -> message.Message:
        """Merge a fork message into the project's ``proto`` (fork fields travel as binary fields)."""
        proto.MergeFromString(fork.SerializeToString())
        return proto


def compile_schema(path: str | os.PathLike) -> ForkSchema:
    """Compile a fork's .proto with grpcio-tools' protoc and load its messages."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise CaffeSurgeryError("--proto needs grpcio-tools to compile the schema: pip install grpcio-tools",
                                file=str(path)) from None
    source = Path(path)
    if not source.is_file():
        raise CaffeSurgeryError("cannot read file: no such schema file", file=str(path))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="caffe-surgery-proto-") as folder:
        out = Path(folder) / "schema.pb"
        code = protoc.main(["protoc", f"-I{source.parent.resolve()}", f"-I{include}", "--include_imports",
                            f"--descriptor_set_out={out}", str(source.resolve())])
        if code != 0 or not out.is_file():
            raise CaffeSurgeryError("protoc could not compile the schema (its messages are printed above)",
                                    file=str(path))
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    try:
        for file in files.file:
            pool.Add(file)
    except (TypeError, ValueError) as exc:
        raise CaffeSurgeryError(f"schema cannot be loaded: {exc}", file=str(path)) from None
    schema = ForkSchema(str(path), pool)
    schema.message_class("caffe.NetParameter")
    return schema


_active: ForkSchema | None = None


def use(schema: ForkSchema | None) -> None:
    """Read and write texts with this fork schema from now on (None: the project's own)."""
    global _active
    _active = schema


def active() -> ForkSchema | None:
    """The fork schema in use, if any."""
    return _active
