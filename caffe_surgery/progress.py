"""A progress bar on stderr that shows throughput and stays silent off a terminal."""

import sys

from tqdm import tqdm


class Progress:
    """Count work done (e.g. images) toward ``total``; use as a context manager."""

    def __init__(self, total: int | None, desc: str, unit: str = "img"):
        interactive = sys.stderr is not None and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                         disable=not interactive, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done."""
        self._bar.update(n)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "img") -> Progress:
    """Start a progress bar showing ``unit``/s; disabled when stderr is not a terminal."""
    return Progress(total, desc, unit)
