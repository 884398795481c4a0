"""Where relative data paths point."""

import os

from ..resources import input_path


def resolve_path(path: str, base_dir: str | None) -> str:
    """Resolve a relative ``path`` against ``base_dir`` when it exists there, else the cwd, else the bundled
    copy of a ``samples/...`` file (so the README's commands run from an installed wheel)."""
    if not os.path.isabs(path) and base_dir:
        candidate = os.path.join(base_dir, path)
        if os.path.exists(candidate):
            return candidate
    return input_path(path)
