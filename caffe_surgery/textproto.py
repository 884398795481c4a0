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
from google.protobuf.unknown_fields import UnknownFieldSet

from .wire import length_delimited

PRESERVED_FIELD = 536870911  # the largest field number, never used by the schema
_PRESERVED_LINE = re.compile(rf'^(\s*){PRESERVED_FIELD}: "(.*)"$')
_OTHER_UNKNOWN_LINE = re.compile(r"^\s*\d+: .*$")
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[A-Za-z_][\w.]*|[{}<>\[\]:,;]|[^\s{}<>\[\]:,;"\'#]+')


def _submessage(root: message.Message, path: list[tuple[str, int]]) -> message.Message:
    current = root
    for name, index in path:
        field = getattr(current, name)
        current = field[index] if hasattr(field, "add") else field
    return current


_MARK = b"\x07"  # wire type 7 does not exist: the bytes never parse as a message, so they print as a string


def _preserve(target: message.Message, snippet: str) -> None:
    target.MergeFromString(length_delimited(PRESERVED_FIELD, _MARK + snippet.encode("utf-8")))


def preserved_texts(target: message.Message) -> list[str]:
    """The texts of the fields the schema does not know that parsing kept on ``target``, in file order."""
    return [field.data.removeprefix(_MARK).decode("utf-8") for field in UnknownFieldSet(target)
            if field.field_number == PRESERVED_FIELD and field.wire_type == 2]


class _Scanner:
    """One pass over the tokens of a text message, finding the fields its schema does not know.

    Each unknown field is returned as (enclosing path, start, end); a text
    whose structure is broken stops the scan (text_format then reports it).
    """

    _CLOSERS = {"{": "}", "<": ">"}

    def __init__(self, text: str):
        self.tokens = [t for t in _TOKEN.finditer(text) if not t.group().startswith("#")]
        self.unknown: list[tuple[list[tuple[str, int]], int, int]] = []

    def _value(self, i: int) -> str:
        return self.tokens[i].group()

    def _skip_block(self, i: int) -> int:
        """``i`` at an opening bracket: the index after its match."""
        depth = 0
        while True:
            value = self._value(i)
            if value in "{<[":
                depth += 1
            elif value in "}>]":
                depth -= 1
            i += 1
            if depth == 0:
                return i

    def _skip_value(self, i: int) -> int:
        """``i`` at a field's value (after the name and colon): the index after it."""
        if self._value(i) in "{<[":
            return self._skip_block(i)
        i += 1
        while i < len(self.tokens) and self._value(i)[0] in "\"'" and self._value(i - 1)[0] in "\"'":
            i += 1  # adjacent string literals concatenate
        return i

    def message(self, i: int, descriptor, path: list[tuple[str, int]], closer: str | None) -> int:
        """Scan the fields of one message from token ``i`` to its ``closer``; the index after it."""
        counts: dict[str, int] = {}
        while i < len(self.tokens):
            name = self._value(i)
            if name == closer:
                return i + 1
            if name in ";,":
                i += 1
                continue
            start, i = self.tokens[i].start(), i + 1
            if self._value(i) == ":":
                i += 1
            field = descriptor.fields_by_name.get(name) if name[0].isalpha() or name[0] == "_" else None
            if field is None and name[0] != "[":
                i = self._skip_value(i)
                self.unknown.append((path, start, self.tokens[i - 1].end()))
            elif field is None or field.message_type is None:
                i = self._skip_value(i)
            elif self._value(i) == "[":
                i += 1
                while self._value(i) != "]":
                    if self._value(i) == ",":
                        i += 1
                        continue
                    i = self._submessage(i, field, name, path, counts)
                i += 1
            else:
                i = self._submessage(i, field, name, path, counts)
        return i

    def _submessage(self, i: int, field, name: str, path, counts: dict[str, int]) -> int:
        opener = self._value(i)
        if opener not in self._CLOSERS:
            return self._skip_value(i)
        index = counts.get(name, 0)
        counts[name] = index + 1
        return self.message(i + 1, field.message_type, path + [(name, index)], self._CLOSERS[opener])


def _unknown_fields(text: str, descriptor) -> list[tuple[list[tuple[str, int]], int, int]]:
    """Every field of ``text`` the schema does not know, found in one pass (see ``_Scanner``)."""
    scanner = _Scanner(text)
    try:
        scanner.message(0, descriptor, [], None)
    except IndexError:
        pass  # broken structure: text_format names the place
    return scanner.unknown


def parse(text: str, proto: message.Message) -> list[str]:
    """Merge ``text`` into ``proto``, keeping unknown fields; return their names.

    The unknown fields are found in one pass over the text and blanked out,
    so parsing takes time linear in the text. Raises text_format.ParseError
    for any other syntax error (its line and column refer to the text as given).
    """
    unknown = _unknown_fields(text, proto.DESCRIPTOR)
    cut = [(path, text[start:end]) for path, start, end in unknown]
    pieces, position = [], 0
    for _, start, end in unknown:
        pieces += [text[position:start], re.sub(r"[^\n]", " ", text[start:end])]
        position = end
    working = "".join(pieces) + text[position:]
    attempt = type(proto)()
    text_format.Merge(working, attempt)
    proto.MergeFrom(attempt)
    for path, snippet in cut:
        _preserve(_submessage(proto, path), snippet)
    return [_TOKEN.match(snippet).group() for _, snippet in cut]


def _restore(line: str) -> list[str]:
    match = _PRESERVED_LINE.match(line)
    if match is None:
        return [] if _OTHER_UNKNOWN_LINE.match(line) else [line]
    indent, escaped = match.groups()
    snippet = text_encoding.CUnescape(escaped).removeprefix(_MARK).decode("utf-8")
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
