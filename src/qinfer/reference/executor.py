"""Runs any Graph with the numpy reference ops, slowly and readably.

Used for constant folding, calibration and as the oracle in tests. It never calls compiled kernels.
"""
import numpy as np

from . import registry
from ..errors import UnsupportedOperatorError


def run_node(node, inputs):
    fn = registry.get(node.op)
    if fn is None:
        raise UnsupportedOperatorError(
            f"node {node.name!r}: op {node.op!r} has no reference implementation",
            [(node.name, node.op, None, "no reference implementation")])
    outs = fn(inputs, node.attrs, len(node.outputs))
    return list(outs)


def run_graph(graph, feeds, outputs=None, observer=None):
    """Execute ``graph`` on ``feeds`` (name -> array). Returns {output name: array}.

    ``outputs``: names to return (default: graph outputs; any intermediate value may be named).
    ``observer(name, array)``: called for every value produced (calibration hooks).
    """
    env = dict(graph.initializers)
    env.update(feeds)
    want = list(outputs) if outputs is not None else graph.output_names
    keep = set(want) | set(graph.initializers) | set(feeds)
    last_use = {}
    for idx, node in enumerate(graph.nodes):
        for i in node.inputs:
            if i:
                last_use[i] = idx
    for idx, node in enumerate(graph.nodes):
        args = [env[i] if i else None for i in node.inputs]
        results = run_node(node, args)
        for name, val in zip(node.outputs, results):
            if name:
                val = np.asarray(val)
                env[name] = val
                if observer is not None:
                    observer(name, val)
        # drop intermediates after their last reader, so memory follows the live set
        for i in set(node.inputs) | set(node.outputs):
            if i and i not in keep and last_use.get(i, -1) <= idx:
                env.pop(i, None)
    return {n: env[n] for n in want}
