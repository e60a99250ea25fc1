"""nlc, the NeuralLayers compiler: declarative model specs to a typed IR to PyTorch packages."""

__version__ = "0.1.0"

from nlc.api import build, check, load  # noqa: E402

__all__ = ["__version__", "build", "check", "load"]
