"""Params of Caffe forks that ``proto/caffe.proto`` does not hold (``interp_param``, ``shuffle_channel_param``).

Text parsing keeps such a field as a preserved unknown field holding its text (``textproto``); this
reads the scalar fields of that text back, by name, so a declaration can use them. A param written by
a binary file only (no text) has no name and reads as absent: the fork's defaults apply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.unknown_fields import UnknownFieldSet

from ..textproto import PRESERVED_FIELD
from .shape_rules import fail

_SCALAR = re.compile(r"(\w+)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _snippets(param, name: str) -> list[str]:
    """The preserved texts of field ``name`` in a LayerParameter, in file order."""
    opening = re.compile(rf"^\s*{name}\s*:?\s*[{{<]")
    texts = [f.data.decode("utf-8") for f in UnknownFieldSet(param)
             if f.field_number == PRESERVED_FIELD and f.wire_type == 2]
    return [text for text in texts if opening.match(text)]


@dataclass(frozen=True)
class ForkParam:
    """A fork message read from its text: ``values`` by field name (defaults filled in), ``given``: the fields
    the file sets (as protobuf's HasField tells)."""

    values: dict
    given: frozenset

    def __getitem__(self, field: str):
        return self.values[field]

    def has(self, field: str) -> bool:
        return field in self.given


def fork_param(param, name: str, defaults: dict[str, int | float]) -> ForkParam:
    """The scalar fields of fork message ``name`` in a LayerParameter; a field not in ``defaults`` is an error."""
    values, given = dict(defaults), set()
    for text in _snippets(param, name):
        body = text[min(i for i in (text.find("{"), text.find("<")) if i >= 0) + 1:]
        for field, value in _SCALAR.findall(body):
            if field not in defaults:
                fail(f"{name} has no field '{field}' (known: {', '.join(defaults)})")
            number = float(value)
            values[field] = int(number) if isinstance(defaults[field], int) else number
            given.add(field)
    return ForkParam(values, frozenset(given))
