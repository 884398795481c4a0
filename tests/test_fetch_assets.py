"""scripts/fetch_test_assets.py against a local copy of the public hosts' raw-file layout (never the hosts)."""
import hashlib
import shutil
import subprocess
import sys

import pytest

from conftest import REAL_MODELS, REPO

sys.path.insert(0, str(REPO / "scripts"))
from fetch_test_assets import MANIFEST, fetch, read_manifest  # noqa: E402

pytestmark = pytest.mark.needs_real_models
TEMPLATE = "{repo}/{commit}/{path}"


@pytest.fixture
def mirror(tmp_path):
    """A file:// base URL under which every manifest file sits at REPO/COMMIT/PATH, as on the raw-file host."""
    root = tmp_path / "host"
    for item in read_manifest():
        target = root / TEMPLATE.format(repo=item.repo, commit=item.commit, path=item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL_MODELS / item.model / item.local, target)
    return root, f"{root.as_uri()}/{TEMPLATE}"


def test_the_bundled_manifest_is_the_shared_one():
    assert MANIFEST.read_bytes() == (REAL_MODELS / "MANIFEST.tsv").read_bytes()


def test_fetch_writes_every_file_with_its_sha256_and_the_manifest(mirror, tmp_path):
    _, base_url = mirror
    assets = tmp_path / "assets"
    written = fetch(assets, base_url)
    items = read_manifest()
    assert len(written) == len(items) == 33
    for item in items:
        data = (assets / "real-models" / item.model / item.local).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert data == (REAL_MODELS / item.model / item.local).read_bytes()
    assert (assets / "real-models" / "MANIFEST.tsv").read_bytes() == MANIFEST.read_bytes()
    assert fetch(assets, base_url) == []  # present with the right sha256: nothing is downloaded again


def test_a_file_with_the_wrong_sha256_is_refused_and_nothing_is_left(mirror, tmp_path):
    root, base_url = mirror
    item = next(i for i in read_manifest() if i.model == "lenet_v1_everpeace" and i.local.endswith(".caffemodel"))
    served = root / TEMPLATE.format(repo=item.repo, commit=item.commit, path=item.path)
    served.write_bytes(served.read_bytes()[:-1] + b"\0")
    assets = tmp_path / "assets"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_test_assets.py"), "--assets", str(assets),
                           "--base-url", base_url, "--model", "lenet_v1_everpeace"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert "sha256" in done.stderr and item.sha256 in done.stderr and "Traceback" not in done.stderr
    folder = assets / "real-models" / "lenet_v1_everpeace"
    assert not (folder / item.local).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
