"""Files shipped inside the package: the bundled samples and the Caffe schema ``proto/caffe.proto``.

In a checkout ``caffe_surgery/samples`` and ``caffe_surgery/proto`` link to the
top-level folders; an installed wheel holds copies. Command-line paths that
start with ``samples/`` or ``proto/`` fall back to these files when no such
file exists in the current folder, so the README's commands work from an
installed wheel too.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

BUNDLED_FOLDERS = ("samples", "proto")


def bundled(relative: str) -> Path:
    """The path of a file shipped in the package, e.g. ``bundled("samples/lenet_maxout.prototxt")``."""
    return Path(str(files("caffe_surgery").joinpath(relative)))


def input_path(text: str) -> str:
    """``text`` itself, or the bundled file it names when it starts with samples/ or proto/ and is not here."""
    head = Path(text).parts[0] if text else ""
    if head in BUNDLED_FOLDERS and not os.path.exists(text) and bundled(text).is_file():
        return str(bundled(text))
    return text
