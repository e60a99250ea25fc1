"""IR to text: PyTorch package emission. Decisions in Python, layout in `templates/`."""

from nlc.emit.package import write_package
from nlc.emit.pytorch import emit

__all__ = ["emit", "write_package"]
