"""Text prototxt parsing and printing that keeps fields the schema does not know.

Real prototxts carry fields of other Caffe forks (``resize_param`` of SSD's
data layers, ``visualize`` of DetectionOutput). Parsing cuts each such field's
text out, parses the rest, and stores the cut text inside the enclosing
message as an unknown field under a private number; printing puts the text
back where it was. So a load/save round trip keeps them, and binary messages
carry them like any other unknown field.
"""
from __future__ import annotations

import re

from google.protobuf import message, text_encoding, text_format

from .wire import length_delimited

PRESERVED_FIELD = 536870911  # the largest field number, never used by the schema
_UNKNOWN_FIELD = re.compile(r'has no field named "(\w+)"')
_PRESERVED_LINE = re.compile(rf'^(\s*){PRESERVED_FIELD}: "(.*)"$')
_OTHER_UNKNOWN_LINE = re.compile(r"^\s*\d+: .*$")
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[A-Za-z_][\w.]*|[{}<>\[\]:,;]|[^\s{}<>\[\]:,;"\'#]+')


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(l) + 1 for l in lines[: line - 1]) + column - 1


def _field_end(text: str, start: int) -> int:
    """End offset of the field whose name starts at ``start`` (scalar, list or block)."""
    tokens = _TOKEN.finditer(text, start)
    next(tokens)  # the field name
    depth = 0
    for token in tokens:
        value = token.group()
        if value.startswith("#"):
            continue
        if value == ":" and depth == 0:
            continue
        if value in "{<[":
            depth += 1
        elif value in "}>]":
            depth -= 1
        if depth == 0:
            return token.end()
    raise text_format.ParseError(f"unterminated field at offset {start}")


def _enclosing_path(text: str, end: int) -> list[tuple[str, int]]:
    """The chain of (field name, occurrence) of the blocks open at offset ``end``."""
    stack: list[tuple[str, int]] = []
    counts: list[dict[str, int]] = [{}]
    previous_name = None
    for token in _TOKEN.finditer(text, 0, end):
        value = token.group()
        if value.startswith("#") or value == ":":
            continue
        if value in ("{", "<") and previous_name is not None:
            index = counts[-1].get(previous_name, 0)
            counts[-1][previous_name] = index + 1
            stack.append((previous_name, index))
            counts.append({})
        elif value in ("}", ">"):
            stack.pop()
            counts.pop()
        previous_name = value if value[0].isalpha() or value[0] == "_" else None
    return stack


def _submessage(root: message.Message, path: list[tuple[str, int]]) -> message.Message:
    current = root
    for name, index in path:
        field = getattr(current, name)
        current = field[index] if hasattr(field, "add") else field
    return current


def _preserve(target: message.Message, snippet: str) -> None:
    target.MergeFromString(length_delimited(PRESERVED_FIELD, snippet.encode("utf-8")))


def parse(text: str, proto: message.Message) -> list[str]:
    """Merge ``text`` into ``proto``, keeping unknown fields; return their names.

    Raises text_format.ParseError for any other syntax error (its line and
    column refer to the text as given).
    """
    cut: list[tuple[list[tuple[str, int]], str]] = []
    names = []
    working = text
    while True:
        attempt = type(proto)()
        try:
            text_format.Merge(working, attempt)
            break
        except text_format.ParseError as exc:
            match = _UNKNOWN_FIELD.search(str(exc))
            if not match or exc.GetLine() is None:
                raise
            start = _offset(working, exc.GetLine(), exc.GetColumn())
            end = _field_end(working, start)
            cut.append((_enclosing_path(working, start), working[start:end]))
            names.append(match.group(1))
            working = working[:start] + re.sub(r"[^\n]", " ", working[start:end]) + working[end:]
    proto.MergeFrom(attempt)
    for path, snippet in cut:
        _preserve(_submessage(proto, path), snippet)
    return names


def _restore(line: str) -> list[str]:
    match = _PRESERVED_LINE.match(line)
    if match is None:
        return [] if _OTHER_UNKNOWN_LINE.match(line) else [line]
    indent, escaped = match.groups()
    snippet = text_encoding.CUnescape(escaped).decode("utf-8")
    first, *rest = snippet.split("\n")
    base = min((len(l) - len(l.lstrip()) for l in rest if l.strip()), default=0)
    return [indent + first] + [indent + l[base:] if l.strip() else "" for l in rest]


def to_text(proto: message.Message) -> str:
    """Print ``proto`` as text, with preserved unknown fields written back by name.

    Unknown fields that came from binary files have no name and cannot be
    written as text, so they are left out of the text form.
    """
    printed = text_format.MessageToString(proto, print_unknown_fields=True)
    return "\n".join(out for line in printed.split("\n") for out in _restore(line))
