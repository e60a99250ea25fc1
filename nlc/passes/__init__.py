"""Graph-to-graph passes: importing this package registers every pass in `PASSES`.

Call a pass through `run_passes` (by name, options as a dict, on a copy, verified) or
directly: `nlc.passes.svd.svd(graph, weights, SvdOptions(rank=0.5))`.
"""

from nlc.passes import (  # noqa: F401  (registration)
    channels,
    cp,
    lora,
    prune,
    quantize,  # noqa: F401  (registration)
    svd,
    tt,
    tucker,
    weight_only,  # noqa: F401  (registration)
)
from nlc.passes.base import PASSES, Pass, PassResult, Weights
from nlc.passes.manager import run_passes

__all__ = ["PASSES", "Pass", "PassResult", "Weights", "run_passes"]
