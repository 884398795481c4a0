#!/usr/bin/env python3
"""Download the public Caffe models the tests use, at the commits pinned in tests/assets/MANIFEST.tsv.

Each file is fetched from its repository's raw-file URL (``--base-url``, a
template with ``{repo}``, ``{commit}`` and ``{path}``), its sha256 checked
against the manifest, and written through a temporary file and a rename into
``ASSETS/real-models/<model>/``, where ``ASSETS`` is ``$CAFFE_SURGERY_ASSETS``
or ``shared/`` beside the repository (what tests/conftest.py reads). Files
already present with the right sha256 are kept; nothing else is touched.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from caffe_surgery.errors import CaffeSurgeryError  # noqa: E402
from caffe_surgery.io import atomic_write  # noqa: E402

MANIFEST = REPO / "tests" / "assets" / "MANIFEST.tsv"
GITHUB_RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
_COMMIT = re.compile(r"([0-9a-f]{40})(?:\s*\(([^)]*)\))?")


@dataclass(frozen=True)
class AssetFile:
    """One file of the manifest: where it goes, where it comes from, what it must hash to."""

    model: str
    local: str
    repo: str
    commit: str
    path: str
    sha256: str


def _commits(text: str, locals_: list[str]) -> dict[str, str]:
    """Local file name -> commit, from ``HASH`` or ``HASH (stem, stem); HASH (stem)``."""
    found = {}
    for match in _COMMIT.finditer(text):
        commit, names = match.groups()
        stems = {n.strip() for n in names.split(",")} if names else None
        for local in locals_:
            if stems is None or local in stems or local.rsplit(".", 1)[0] in stems:
                found.setdefault(local, commit)
    return found


def read_manifest(path: Path = MANIFEST) -> list[AssetFile]:
    """Every file of the manifest, in its order."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    files = []
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t")))
        pairs = [item.strip().split("=", 1) for item in row["files(local=repo_path)"].split(";")]
        hashes = row["sha256"].split(",")
        commits = _commits(row["commit"], [local for local, _ in pairs])
        if len(hashes) != len(pairs) or len(commits) != len(pairs):
            raise CaffeSurgeryError("files, sha256 and commits do not line up", file=str(path), layer=row["short_name"])
        for (local, repo_path), sha in zip(pairs, hashes):
            files.append(AssetFile(row["short_name"], local, row["repo"], commits[local], repo_path, sha.strip()))
    return files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, expected_sha256: str) -> bytes:
    """The bytes at ``url``; raises CaffeSurgeryError when their sha256 is not the expected one."""
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    found = hashlib.sha256(data).hexdigest()
    if found != expected_sha256:
        raise CaffeSurgeryError(f"sha256 {found} differs from the manifest's {expected_sha256}", file=url)
    return data


def fetch(assets: Path, base_url: str = GITHUB_RAW, models: list[str] | None = None,
          manifest: Path = MANIFEST) -> list[Path]:
    """Download the manifest's files (or those of ``models``) into ``assets/real-models``; return the written ones."""
    target = assets / "real-models"
    written = []
    for item in read_manifest(manifest):
        if models and item.model not in models:
            continue
        destination = target / item.model / item.local
        if destination.is_file() and sha256_of(destination) == item.sha256:
            continue
        url = base_url.format(repo=item.repo, commit=item.commit, path=item.path)
        atomic_write(destination, [download(url, item.sha256)])
        written.append(destination)
    copy = target / "MANIFEST.tsv"
    if not copy.is_file() or copy.read_bytes() != manifest.read_bytes():
        atomic_write(copy, [manifest.read_bytes()])
    return written


def default_assets() -> Path:
    """``$CAFFE_SURGERY_ASSETS``, else ``shared/`` beside the repository (as tests/conftest.py)."""
    return Path(os.environ.get("CAFFE_SURGERY_ASSETS") or REPO.parent / "shared")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=default_assets(),
                        help="assets folder (default: $CAFFE_SURGERY_ASSETS or shared/ beside the repository)")
    parser.add_argument("--base-url", default=GITHUB_RAW,
                        help="raw-file URL template with {repo}, {commit}, {path} (default: %(default)s)")
    parser.add_argument("--model", action="append", help="only this model folder (repeatable)")
    args = parser.parse_args(argv)
    try:
        written = fetch(args.assets, args.base_url, args.model)
    except (CaffeSurgeryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(f"{len(written)} files written; the rest were present with the right sha256")
    return 0


if __name__ == "__main__":
    sys.exit(main())
