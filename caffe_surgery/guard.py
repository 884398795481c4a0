"""Inputs are never overwritten: every writer asks here before it replaces a file.

The command line registers the files a run reads (``protect``); a write onto
one of them, compared by device and inode so that links and other spellings
of a path are caught, is refused unless the user asked for in-place output.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import CaffeSurgeryError

_protected: dict[tuple[int, int], str] = {}
_in_place = False


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def protect(paths: Iterable[str | os.PathLike], in_place: bool = False) -> None:
    """Remember the existing files among ``paths`` as inputs of this run (``in_place``: allow replacing them)."""
    global _in_place
    _in_place = in_place
    for path in paths:
        identity = _identity(path)
        if identity is not None:
            _protected.setdefault(identity, str(path))


def release() -> None:
    """Forget every registered input (the end of a run)."""
    global _in_place
    _protected.clear()
    _in_place = False


def refuse_input(path: str | os.PathLike) -> None:
    """CaffeSurgeryError when writing ``path`` would replace an input of this run."""
    if _in_place or not _protected:
        return
    identity = _identity(path)
    if identity is not None and identity in _protected:
        same = _protected[identity]
        spelled = "" if os.path.abspath(same) == os.path.abspath(path) else f" ('{same}')"
        raise CaffeSurgeryError(f"the output is an input of this command{spelled}; refusing to overwrite it "
                                "(write elsewhere, or pass --in-place)", file=str(path))
