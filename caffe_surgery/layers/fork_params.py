"""Fork parameters the project's caffe.proto does not know, read from the text the prototxt reader kept.

``textproto.parse`` keeps each unknown field's text (``reorg_param { stride: 2 }`` on a layer,
``width: 5`` inside a known ``prior_box_param``) as an unknown field of the enclosing message. A
``ForkParam`` gathers the scalar ``key: value`` entries of one such block (or of the message
itself) so declarations read them with types and defaults. Given the fork's ``defaults``, a block
also refuses a field the fork does not have and reads ``param[field]`` typed as its default. A param
written by a binary file only (no text) has no name and reads as absent: the defaults apply.
"""
from __future__ import annotations

import re

from ..textproto import preserved_texts
from .shape_rules import fail

_ENTRY = re.compile(r'(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s{}#]+)')


class ForkParam:
    """The scalar entries of a fork block: ``values(key, type)`` (repeated), ``get(key, default)`` and,
    with the fork's ``defaults``, ``param[key]``, ``has(key)`` and ``settings()``."""

    def __init__(self, entries: list[tuple[str, str]], defaults: dict | None = None, block: str | None = None):
        self.entries = entries
        self.defaults = defaults or {}
        if defaults is not None:
            for name, _ in entries:
                if name not in defaults:
                    fail(f"{block} has no field '{name}' (known: {', '.join(defaults)})")

    @property
    def given(self) -> frozenset:
        """The fields the file sets (as protobuf's HasField tells)."""
        return frozenset(name for name, _ in self.entries)

    def has(self, key: str) -> bool:
        return key in self.given

    def __getitem__(self, key: str):
        return self.get(key, self.defaults[key])

    def settings(self) -> dict:
        """Every field of the fork's defaults with the value the file gives, else its default."""
        return {key: self[key] for key in self.defaults}

    def values(self, key: str, kind=float) -> list:
        """Every value given for ``key``, converted by ``kind`` (a bad value is a shape error)."""
        converted = []
        for name, raw in self.entries:
            if name == key:
                converted.append(_convert(key, raw, kind))
        return converted

    def get(self, key: str, default, kind=None):
        """The last value given for ``key`` (as Caffe's text format keeps the last), else ``default``."""
        values = self.values(key, kind or type(default))
        return values[-1] if values else default


def _convert(key: str, raw: str, kind):
    text = raw.strip('"')
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        fail(f"fork parameter {key}: cannot read {raw!r} as {kind.__name__}")


def fork_param(message, block: str | None = None, defaults: dict | None = None) -> ForkParam:
    """The entries of fork block ``block`` (e.g. ``"reorg_param"``) kept on ``message``, or with no
    block the fork entries kept directly on ``message`` (e.g. ``width`` inside ``prior_box_param``);
    ``defaults``: the fork's fields and defaults (an unknown field is then an error)."""
    entries: list[tuple[str, str]] = []
    for text in preserved_texts(message):
        if block is None:
            entries += _ENTRY.findall(text)
            continue
        match = re.match(rf"\s*{block}\s*:?\s*[{{<](.*)[}}>]\s*$", text, re.S)
        if match:
            entries += _ENTRY.findall(match.group(1))
    return ForkParam(entries, defaults, block)
