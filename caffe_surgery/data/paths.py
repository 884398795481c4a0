"""Where relative data paths point."""

import os


def resolve_path(path: str, base_dir: str | None) -> str:
    """Resolve a relative ``path`` against ``base_dir`` when it exists there, else leave it to the cwd."""
    if os.path.isabs(path) or not base_dir:
        return path
    candidate = os.path.join(base_dir, path)
    return candidate if os.path.exists(candidate) else path
