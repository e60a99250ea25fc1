"""The IR: tensor types, nodes, graphs, printer and verifier. Construction and inspection only."""

from nlc.ir.graph import Frame, Graph, Node, Param, Value
from nlc.ir.types import DTYPES, Dim, TensorType, dim_str

__all__ = ["DTYPES", "Dim", "Frame", "Graph", "Node", "Param", "TensorType", "Value", "dim_str"]
