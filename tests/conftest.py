"""Shared test locations and the one setting that finds third-party test material.

``CAFFE_SURGERY_ASSETS`` names the assets folder (default: ``shared/`` beside the
repository) holding ``real-models/``, ``reference/`` and ``caffe-wire-facts.tsv``;
``CAFFE_SURGERY_FASHION_MNIST`` names the Fashion-MNIST IDX folder (default:
Debian's ``/usr/share/datasets/fashion-mnist``). A test that needs something
absent is skipped with a reason saying how to get it. The need is found
automatically: a test whose code (or a test helper, fixture or parameter it
uses) refers to a path below one of these folders that does not exist is
skipped before it runs. The markers ``needs_real_models``, ``needs_reference``,
``needs_wire_facts`` and ``needs_fashion_mnist`` declare it explicitly.
"""
import os
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CAFFE_SURGERY_ASSETS") or REPO.parent / "shared").resolve()
REAL_MODELS = SHARED / "real-models"
REFERENCE = SHARED / "reference" / "maxout_pruning"
WIRE_FACTS = SHARED / "caffe-wire-facts.tsv"
FASHION_MNIST = Path(os.environ.get("CAFFE_SURGERY_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist")

# (folder, deploy prototxt, caffemodel) of every real model with weights (../shared/real-models/README.md)
REAL_PAIRS = [
    ("lenet_v1_everpeace", "lenet.prototxt", "lenet_iter_10000.caffemodel"),
    ("cifar10_quick_v1_everpeace", "cifar10_quick.prototxt", "cifar10_quick_iter_5000.caffemodel"),
    ("cifar10_full_v1_everpeace", "cifar10_full.prototxt", "cifar10_full_iter_70000.caffemodel"),
    ("mtcnn_det1", "det1.prototxt", "det1.caffemodel"),
    ("mtcnn_det2", "det2.prototxt", "det2.caffemodel"),
    ("ultraface_slim320", "slim-320.prototxt", "slim-320.caffemodel"),
    ("landmark106_dq", "landmark106.prototxt", "landmark106.caffemodel"),
    ("yufacedetectnet_v1", "yufacedetectnet-open-v1.prototxt", "yufacedetectnet-open-v1.caffemodel"),
    ("yoloface500k_v2", "yoloface-500k-v2.prototxt", "yoloface-500k-v2.caffemodel"),
]

# marker -> (folder, how to get it)
ASSETS = {
    "needs_real_models": (REAL_MODELS, "run 'python scripts/fetch_test_assets.py' (downloads the public models "
                                       "listed in tests/assets/MANIFEST.tsv) or set CAFFE_SURGERY_ASSETS to a "
                                       "folder holding real-models/"),
    "needs_reference": (REFERENCE, "set CAFFE_SURGERY_ASSETS to the project's shared/ folder (reference/ holds the "
                                   "prototxts of wilfer9008/maxout_pruning)"),
    "needs_wire_facts": (WIRE_FACTS, "set CAFFE_SURGERY_ASSETS to the project's shared/ folder "
                                     "(caffe-wire-facts.tsv)"),
    "needs_fashion_mnist": (FASHION_MNIST, "'sudo apt-get install dataset-fashion-mnist' or set "
                                           "CAFFE_SURGERY_FASHION_MNIST to a folder of Fashion-MNIST IDX files"),
}
_ROOTS = [SHARED, FASHION_MNIST]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The assets folder; the test is skipped when it is missing."""
    if not SHARED.is_dir():
        pytest.skip(f"no assets folder at {SHARED}: set CAFFE_SURGERY_ASSETS")
    return SHARED


def pytest_configure(config):
    for marker, (folder, how) in ASSETS.items():
        config.addinivalue_line("markers", f"{marker}: skip unless {folder.name} is present ({how})")


def _present(path: Path) -> bool:
    """The path exists, or names a prefix of files in an existing folder (e.g. ``.../landmark106`` + suffixes)."""
    return path.exists() or (path.parent.is_dir() and any(path.parent.glob(f"{path.name}*")))


def _missing_reason(path: Path) -> str | None:
    """Why a test referring to ``path`` cannot run, or None when it can (present, or no asset at all)."""
    if not any(path == root or root in path.parents for root in _ROOTS) or _present(path):
        return None
    for folder, how in ASSETS.values():
        if path == folder or folder in path.parents or path in folder.parents:
            return f"{path} is missing: {how}"
    return f"{path} is missing: set CAFFE_SURGERY_ASSETS to the project's shared/ folder"


def _paths_in(value):
    """The paths a value holds: itself, or the items of a list/tuple/dict (one level, tuples inside too)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, (list, tuple, set, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            if isinstance(item, Path):
                yield item
            elif isinstance(item, tuple):
                yield from (p for p in item if isinstance(p, Path))


def _code_names(code: types.CodeType):
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _referenced_paths(function, seen: set):
    """Paths below the asset roots that a test-side function refers to, following test helpers it calls."""
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen or not code.co_filename.startswith(str(REPO / "tests")):
        return
    seen.add(code)
    namespaces = (function.__globals__, globals())
    for name in set(_code_names(code)):
        for namespace in namespaces:
            if name not in namespace:
                continue
            value = namespace[name]
            yield from _paths_in(value)
            if isinstance(value, types.FunctionType):
                yield from _referenced_paths(value, seen)
            break


def _skip_reason(item) -> str | None:
    for marker, (folder, how) in ASSETS.items():
        if item.get_closest_marker(marker) and not folder.exists():
            return f"{folder} is missing: {how}"
    seen: set = set()
    paths = list(_referenced_paths(item.function, seen)) if hasattr(item, "function") else []
    fixture_info = getattr(item, "_fixtureinfo", None)
    for fixture_defs in (fixture_info.name2fixturedefs.values() if fixture_info else ()):
        for fixture_def in fixture_defs:
            paths += _referenced_paths(fixture_def.func, seen)
    callspec = getattr(item, "callspec", None)
    for value in (callspec.params.values() if callspec else ()):
        paths += _paths_in(value if isinstance(value, (tuple, list)) else (value,))
    for path in paths:
        reason = _missing_reason(path)
        if reason:
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    """Skip every test that needs third-party material that is not there, saying how to get it."""
    if all(folder.exists() for folder, _ in ASSETS.values()):
        return
    for item in items:
        reason = _skip_reason(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
