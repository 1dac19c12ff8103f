"""qinfer's graph IR: values, nodes, graphs, the op table, the verifier and the .qinf format."""
from .graph import Graph, Node, Value, QuantParams  # noqa: F401
