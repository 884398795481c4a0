"""The one exception family of caffe-surgery.

Every message names what went wrong and where: the file, the layer (when one is
involved) and the problem, so the command line can print it on one line.
"""


class CaffeSurgeryError(Exception):
    """A problem with user input: a file, a layer, a plan or a data source."""

    def __init__(self, problem: str, *, file: str | None = None, layer: str | None = None):
        self.problem = problem
        self.file = file
        self.layer = layer
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as ``<file>: <layer>: <problem>``, leaving out the parts not known."""
        parts = [p for p in (self.file, self.layer) if p]
        return ": ".join(parts + [self.problem])

    def with_file(self, file: str) -> "CaffeSurgeryError":
        """Return the same error with the file name filled in when it was not known."""
        if self.file is None:
            self.file = file
            self.args = (self.one_line(),)
        return self


class ParseError(CaffeSurgeryError):
    """A prototxt, caffemodel or binaryproto that cannot be decoded."""


class ShapeError(CaffeSurgeryError):
    """Shapes that do not fit together (weights vs layer, bottoms of one layer)."""


class UnsupportedLayerError(CaffeSurgeryError):
    """A layer type the requested operation does not know."""


class GraphError(CaffeSurgeryError):
    """A net whose wiring is broken: a missing bottom, a cycle, a duplicate name."""


class PlanError(CaffeSurgeryError):
    """A pruning plan that cannot be applied to the net."""


class DataError(CaffeSurgeryError):
    """A data source that cannot be read the way Caffe would read it."""
