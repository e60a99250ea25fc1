"""Read-only questions about a graph (parameters, MACs). Never mutates the graph."""
