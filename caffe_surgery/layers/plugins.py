"""Layer types from outside caffe-surgery: a Python file (``--plugin FILE``) or an installed package
advertising the entry-point group ``caffe_surgery.layers``.

A plugin declares its types with ``caffe_surgery.layers.declare(LayerType(...))`` exactly as the
built-in families do. An entry point names a module (importing it declares its types) or a
function (called without arguments). A plugin that fails to import, or declares a type already
declared, stops the command with a one-line error naming it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib.metadata import entry_points

from . import registry
from .registry import RegistryError

PLUGIN_GROUP = "caffe_surgery.layers"
_loaded_files: set[str] = set()


class PluginError(RegistryError):
    """A plugin that cannot be loaded."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plugin_file(path: str | os.PathLike) -> None:
    """Import a plugin file, registering the layer types it declares (a file loads once)."""
    if not os.fspath(path):
        raise PluginError("--plugin needs a FILE")
    path = os.path.abspath(os.fspath(path))
    if path in _loaded_files:
        return
    if not os.path.isfile(path):
        raise PluginError("plugin file does not exist", file=path)
    registry.declarations()  # built-in types first, so a plugin redeclaring one is caught whatever the order
    name = "caffe_surgery_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError("not a Python file", file=path)
    module = importlib.util.module_from_spec(spec)
    _run(lambda: spec.loader.exec_module(module), path)
    _loaded_files.add(path)


def load_entry_points() -> None:
    """Load every installed plugin of the ``caffe_surgery.layers`` entry-point group."""
    for point in entry_points(group=PLUGIN_GROUP):
        origin = f"entry point '{point.name} = {point.value}'"

        def load(point=point):
            target = point.load()
            if callable(target):
                target()
        _run(load, origin)


def _run(load, origin: str) -> None:
    """Run a plugin's loading with its declarations marked as coming from ``origin``."""
    previous = registry.set_origin(origin)
    try:
        load()
    except RegistryError as exc:
        raise exc.with_file(origin)
    except Exception as exc:  # a plugin's own failure, whatever it is, becomes one line
        raise PluginError(f"cannot load plugin: {_describe(exc)}", file=origin) from exc
    finally:
        registry.set_origin(previous)
