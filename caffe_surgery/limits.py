"""Bounds on what a hostile input may make caffe-surgery read or allocate.

Files are read only when they are regular files (a device or a pipe has no
size to bound the read by) and never beyond what their format can hold; an
allocation asked for by a declared shape is refused, with its size, before it
is made when it exceeds the memory limit (``--max-memory``, by default half
the machine's memory).
"""
from __future__ import annotations

import math
import os
import re
import stat

from .errors import CaffeSurgeryError, ParseError


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 8 << 30


DEFAULT_MAX_MEMORY = _physical_memory() // 2
_max_memory = DEFAULT_MAX_MEMORY
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``1000000`` -> bytes; ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"expected a size such as 4G, 512M or 1000000, got '{text}'")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"a size must be positive, got '{text}'")
    return size


def max_memory() -> int:
    """The byte limit on one allocation a file or a shape asks for."""
    return _max_memory


def set_max_memory(limit: int | None) -> None:
    """Set the limit (None: back to the default)."""
    global _max_memory
    _max_memory = DEFAULT_MAX_MEMORY if limit is None else int(limit)


def format_bytes(count: int) -> str:
    """``1234567890`` -> ``1.15 GiB (1234567890 bytes)``."""
    value, unit = float(count), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{count} bytes" if unit == "bytes" else f"{value:.2f} {unit} ({count} bytes)"


def check_allocation(nbytes: int, what: str, *, file: str | None = None, layer: str | None = None) -> None:
    """CaffeSurgeryError when ``what`` would take more than the memory limit."""
    if nbytes > _max_memory:
        raise CaffeSurgeryError(f"{what} would take {format_bytes(nbytes)}, more than the memory limit of "
                                f"{format_bytes(_max_memory)} (--max-memory)", file=file, layer=layer)


def element_count(shape, what: str = "shape") -> int:
    """The exact number of elements of a shape (no int64 wrap-around); ParseError for a negative dim."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ParseError(f"{what} {dims} has a negative dimension")
    return math.prod(dims)


def regular_file_size(path: str | os.PathLike, what: str, error=ParseError) -> int:
    """The size of ``path``; ``error`` when it cannot be read or is not a regular file (a device, a pipe)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"cannot read file: {exc.strerror}", file=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} is not a regular file (a device, a pipe or a folder cannot be read as one)",
                    file=str(path))
    return info.st_size


def read_file(path: str | os.PathLike, what: str, error=ParseError, limit: int | None = None) -> bytes:
    """The bytes of a regular file, refused (before reading) when larger than ``limit`` or the memory limit."""
    size = regular_file_size(path, what, error)
    bound = min(limit, _max_memory) if limit is not None else _max_memory
    if size > bound:
        raise error(f"{what} of {format_bytes(size)} is larger than the {format_bytes(bound)} it may take "
                    f"({'its format' if limit is not None and limit <= _max_memory else '--max-memory'})",
                    file=str(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read(size + 1)
    except OSError as exc:
        raise error(f"cannot read file: {exc.strerror}", file=str(path)) from None
    if len(data) > size or len(data) > bound:
        raise error(f"{what} grew past {format_bytes(bound)} while being read", file=str(path))
    return data
