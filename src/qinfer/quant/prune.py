"""Pruning: a float Graph -> a new float Graph whose Conv / Gemm / MatMul weights have zeros.

Block layout (the contract the sparse int8 kernels rely on)
------------------------------------------------------------
Every pruned layer's weight is seen as a matrix ``[N, K]``: output channels by the reduction axis,
in the order the int8 kernels reduce it (the order of ``reference.quantized.pack_gemm_qc8w`` /
``pack_conv_qc8w``, whose panels hold 4 consecutive k per VNNI lane):

- Gemm: ``B`` is ``[K, N]`` (``transB=0``) or ``[N, K]`` (``transB=1``); MatMul: ``B [K, N]``.
  Row n of the matrix is output column n of B, k runs along B's reduction axis.
- Conv, weight ``[O, I/g, kh, kw]`` (ONNX): per conv group g (output channels
  ``g*O/g .. (g+1)*O/g - 1``), k = ``(ky * kw + kx) * (I/g) + c``, i.e. the (ky, kx, c) order of the
  NHWC im2col patches (``reference.int4.conv_matrix``, ``gptq.patches_nhwc``); channels vary
  fastest. 1-D / 3-D convs likewise: (kernel positions..., c).

``block4``: block j of row n is the weights k = 4j, 4j+1, 4j+2, 4j+3 of that row, counted from
k = 0 of the row's own group; a block is either all zero or all kept. The last block of a row is
shorter when K % 4 != 0 (the kernels pad K to a multiple of 4 with zero weights, so it is the same
VNNI lane). With I/g a multiple of 4 a block is 4 consecutive input channels at one kernel
position (ky, kx); with fewer channels (a stem with I = 3) blocks run on into the next kernel
position, exactly as the dense panels' lanes do. ``2:4``: in every such group of 4 (the same
k = 4j .. 4j+3), 2 weights are zero; a tail group of 3 has 1 zero, of 1 or 2 none. ``unstructured``:
any weights.

Every row (output channel) of a layer keeps the same number of blocks (weights, for unstructured):
``round(s * units)`` of a row's units are pruned, at most all but one, so threads that split the
output channels get equal work. ``metadata["sparsity"]["layers"]`` lists every pruned layer by node
name (the name survives quantization) with its weight, pattern and measured sparsity.

What is pruned
--------------
Conv (any groups but depthwise), Gemm and MatMul nodes with a constant float weight of reduction
length K >= ``MIN_REDUCTION`` (fewer than 4 blocks a row save nothing and cost accuracy). Left
dense, with the reason in ``metadata["sparsity"]["dense"]``: depthwise convs (no reduction over
channels; their int8 kernel is per channel), short reductions (a one-channel 3x3 stem has K = 9),
batched or shared weights, ``exclude``.

Scopes
------
``layer``: every layer to ``sparsity``. ``global``: one magnitude threshold over all layers' units
(a block's mean squared weight, or a weight's square), each divided by its layer's mean squared
weight so that layers of different scales compare (a layer's weights are judged against their own
RMS, not against another layer's); the fraction of a layer's units under the threshold is the
layer's sparsity, applied per row as above. ``2:4`` is 50% in every layer whatever the scope.

Calibration-based update (SparseGPT, Frantar & Alistarh 2023)
-------------------------------------------------------------
With ``calibration`` data, each layer's input Hessian ``H = X^T X`` (patches for a conv; the
machinery of quant/gptq.py) is gathered, and the columns of ``[N, K]`` are swept in order through
the inverse Hessian (``gptq.obs_sweep``): in lazy batches of 128 columns the mask is chosen by the
OBS saliency ``w^2 / [U]_kk^2`` (U the Cholesky factor of H^-1; summed over a block for block4,
within each group of 4 for 2:4) from the weights as updated so far, each row pruning its share of
the batch's units, and each pruned weight's contribution is compensated on the columns after it.
Layers are done in waves (``sequential=True``): a layer's inputs are computed by the model whose
earlier layers are already pruned, so later layers compensate earlier ones' error. Each layer's
relative output error ``||W X - W' X|| / ||W X||`` on its calibration inputs is recorded, with the
error plain magnitude pruning would have given.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .. import errors
from ..ir.graph import Graph
from . import gptq

PATTERNS = ("unstructured", "block4", "2:4")
SCOPES = ("layer", "global")
#: weights per block (block4) and per group (2:4) along the reduction axis
BLOCK = 4
#: layers whose reduction is shorter stay dense
MIN_REDUCTION = 16
#: ``sparsity=None``: this for unstructured and block4 (2:4 is 0.5 by construction)
DEFAULT_SPARSITY = 0.8


# ----------------------------------------------------------------------------- layers
class Layer:
    """A prunable node: its weight seen as ``[N, K]`` matrices, one per conv group."""

    def __init__(self, node, wname, w):
        self.node, self.wname, self.w = node, wname, w
        self.groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1

    @property
    def name(self):
        return self.node.name

    def matrix(self):
        """float64 [N, K] in the kernels' reduction order (all groups stacked)."""
        w = np.asarray(self.w, np.float64)
        if self.node.op == "Conv":
            return w.transpose(0, *range(2, w.ndim), 1).reshape(w.shape[0], -1)
        return w if self.node.op == "Gemm" and self.node.attrs.get("transB", 0) else w.T

    def weight_from(self, m):
        """The inverse of ``matrix``, in the weight's own dtype."""
        w = self.w
        if self.node.op == "Conv":
            out = m.reshape((w.shape[0],) + w.shape[2:] + (w.shape[1],))
            out = out.transpose(0, w.ndim - 1, *range(1, w.ndim - 1))
        else:
            out = m if self.node.op == "Gemm" and self.node.attrs.get("transB", 0) else m.T
        return np.ascontiguousarray(out, dtype=w.dtype)

    def split(self, m):
        """The group matrices of ``m [N, K]``."""
        n = m.shape[0] // self.groups
        return [m[g * n:(g + 1) * n] for g in range(self.groups)]


def find_layers(graph, exclude=()):
    """(prunable ``Layer`` list, [{"layer", "op", "reason"}] of weighted layers left dense)."""
    uses = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i:
                uses.setdefault(i, []).append(n.name)
    layers, dense = [], []
    for n in graph.nodes:
        if n.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.inputs) < 2:
            continue
        wname = n.inputs[1]
        w = graph.initializers.get(wname)
        if w is None or w.dtype.kind != "f":
            continue      # an activation x activation MatMul: nothing to prune

        def keep(reason):
            dense.append({"layer": n.name, "op": n.op, "reason": reason})

        if n.name in exclude:
            keep("excluded by the user")
        elif n.op == "ConvTranspose":
            keep("ConvTranspose layers are not pruned (no sparse kernel)")
        elif len(uses.get(wname, ())) > 1:
            keep(f"its weight {wname!r} is shared with {[u for u in uses[wname] if u != n.name]}")
        elif n.op == "Conv" and w.ndim < 3:
            keep(f"conv weight of rank {w.ndim}")
        elif n.op != "Conv" and w.ndim != 2:
            keep(f"{n.op} weight of rank {w.ndim} (only 2-D weights are pruned)")
        elif (n.op == "Conv" and int(n.attrs.get("group", 1)) > 1 and w.shape[1] == 1
              and w.shape[0] == int(n.attrs.get("group", 1))):
            keep("depthwise conv: no reduction over channels, its kernel is per channel")
        else:
            layer = Layer(n, wname, w)
            k = layer.matrix().shape[1]
            if k < MIN_REDUCTION:
                keep(f"reduction length {k} < {MIN_REDUCTION}: too small to prune usefully")
            else:
                layers.append(layer)
    return layers, dense


# ----------------------------------------------------------------------------- masks
def _round(x):
    return int(math.floor(x + 0.5))


def units(k, pattern):
    """Units of a row of length k: blocks for block4, weights for unstructured."""
    return -(-k // BLOCK) if pattern == "block4" else k


def count(s, n):
    """Units of n pruned at sparsity s: round(s * n), at most n - 1 (a row keeps one)."""
    return min(_round(s * n), max(n - 1, 0))


def unit_scores(sq, pattern):
    """Per-row scores of the units of ``sq [N, K]`` (a square or a saliency per weight): the
    weight's own for unstructured, the block's mean for block4."""
    if pattern != "block4":
        return sq
    n, k = sq.shape
    nb = units(k, "block4")
    pad = np.full((n, nb * BLOCK), np.nan)
    pad[:, :k] = sq
    return np.nanmean(pad.reshape(n, nb, BLOCK), axis=2)


def to_weights(unit_mask, k, pattern):
    """A mask over units -> the mask over the k weights of each row."""
    return np.repeat(unit_mask, BLOCK, axis=1)[:, :k] if pattern == "block4" else unit_mask


def lowest(scores, z):
    """bool mask [N, U]: the ``z`` lowest-scoring units of each row (ties: the first ones)."""
    mask = np.zeros(scores.shape, bool)
    if z > 0:
        idx = np.argsort(scores, axis=1, kind="stable")[:, :z]
        np.put_along_axis(mask, idx, True, axis=1)
    return mask


def two_of_four(scores):
    """bool mask [N, K]: in every group of 4 along k the 2 lowest scores (1 of a tail of 3)."""
    n, k = scores.shape
    mask = np.zeros((n, k), bool)
    for j in range(0, k, BLOCK):
        g = scores[:, j:j + BLOCK]
        z = {4: 2, 3: 1}.get(g.shape[1], 0)
        mask[:, j:j + g.shape[1]] = lowest(g, z)
    return mask


def magnitude_mask(m, pattern, s):
    """bool [N, K]: the weights of ``m`` that magnitude pruning zeroes at sparsity ``s``."""
    sq = np.square(m)
    if pattern == "2:4":
        return two_of_four(sq)
    sc = unit_scores(sq, pattern)
    return to_weights(lowest(sc, count(s, sc.shape[1])), m.shape[1], pattern)


def sparsegpt(m, H, pattern, s, damp=gptq.DAMP, lazy=gptq.LAZY):
    """SparseGPT on one matrix ``m [N, K]`` with input Hessian ``H [K, K]`` -> (new float64 weights
    with the pruned ones 0, the prune mask). Falls back to magnitude pruning if H is singular."""
    U, _ = gptq.hessian_factor(H, damp)
    if U is None:
        mask = magnitude_mask(m, pattern, s)
        return np.where(mask, 0.0, m), mask
    W = np.array(m, np.float64)
    k = W.shape[1]
    nu = units(k, pattern)
    z = count(s, nu)
    pruned = np.zeros(W.shape, bool)
    lazy = -(-lazy // BLOCK) * BLOCK            # batches start on block boundaries

    def on_batch(i1, i2, W1, U1):
        if pattern == "2:4":
            return
        sal = np.square(W1) / np.square(np.diag(U1))[None, :]
        sc = unit_scores(sal, pattern)
        u1, u2 = units(i1, pattern), units(i2, pattern)
        zb = _round(z * u2 / nu) - _round(z * u1 / nu)   # this batch's share of the row's z
        pruned[:, i1:i2] = to_weights(lowest(sc, zb), i2 - i1, pattern)

    def step(col, i, W1, U1):
        if pattern == "2:4" and col % BLOCK == 0:
            g = slice(i, min(i + BLOCK, W1.shape[1]))
            d = np.square(np.diag(U1)[g])
            pruned[:, col:col + d.size] = two_of_four(np.square(W1[:, g]) / d[None, :])
        return np.where(pruned[:, col], 0.0, W1[:, i])

    gptq.obs_sweep(W, U, step, lazy, on_batch)
    W[pruned] = 0.0
    return W, pruned


def relative_error(m, m2, G):
    """||W X - W' X|| / ||W X|| from ``G = X^T X``."""
    sig = gptq.energy(m, G)
    return math.sqrt(gptq.energy(m - m2, G) / sig) if sig > 0 else 0.0


# ----------------------------------------------------------------------------- scopes
def global_sparsities(layers, pattern, s):
    """{layer: sparsity} from one threshold over every layer's normalized unit scores, chosen so
    that the pruned units hold the fraction ``s`` of all the layers' weights."""
    scores, sizes, owner = [], [], []
    for i, layer in enumerate(layers):
        m = layer.matrix()
        sq = np.square(m)
        ms = float(sq.mean())
        sc = unit_scores(sq / ms if ms > 0 else sq, pattern)
        size = np.full(sc.shape, 1.0)
        if pattern == "block4":
            size[:] = BLOCK
            if m.shape[1] % BLOCK:
                size[:, -1] = m.shape[1] % BLOCK
        scores.append(sc.ravel())
        sizes.append(size.ravel())
        owner.append(np.full(sc.size, i))
    scores, sizes, owner = np.concatenate(scores), np.concatenate(sizes), np.concatenate(owner)
    order = np.argsort(scores, kind="stable")
    n_pruned = int(np.searchsorted(np.cumsum(sizes[order]), s * sizes.sum(), side="right"))
    below = np.bincount(owner[order[:n_pruned]], minlength=len(layers))
    total = np.bincount(owner, minlength=len(layers))
    return {layer.name: float(below[i] / total[i]) for i, layer in enumerate(layers)}


# ----------------------------------------------------------------------------- calibration
def _subgraph(graph, wanted):
    """The graph reduced to the nodes that ``wanted`` values depend on."""
    need, keep = set(wanted), []
    for n in reversed(graph.nodes):
        if any(o in need for o in n.outputs):
            keep.append(n)
            need.update(i for i in n.inputs if i)
    g = graph.copy()
    g.nodes = keep[::-1]
    return g


def _upstream_layers(graph, layers):
    """{layer: names of the prunable layers its input depends on} (one pass in graph order)."""
    names = {layer.name for layer in layers}
    up = {}
    for n in graph.nodes:
        u = set().union(*(up.get(i, ()) for i in n.inputs if i))
        if n.name in names:
            u = u | {n.name}
        for o in n.outputs:
            if o:
                up[o] = u
    return {layer.name: up.get(layer.node.inputs[0], set()) for layer in layers}


def _stats_for(layer):
    """A gptq.LayerStats for the layer's input, or None when it cannot be gathered (non-2-D convs,
    auto_pad SAME)."""
    from .quantize import _conv_geometry
    n = layer.node
    if n.op != "Conv":
        return gptq.LayerStats(layer.matrix().shape[1])
    if layer.w.ndim != 4 or n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    geo = _conv_geometry(n.attrs, layer.w)
    return gptq.LayerStats(int(np.prod(layer.w.shape[1:])),
                           (layer.groups, tuple(layer.w.shape[2:]), geo["strides"], geo["pads"],
                            geo["dilations"]))


def _bar(enabled, total, desc):
    """A tqdm bar on a terminal (as calibration shows), else None."""
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=desc, unit="layer", leave=False)
        except ImportError:
            pass
    return None


def _gather(graph, layers, feeds):
    """{layer: LayerStats or None} from one run over the calibration feeds."""
    from ..reference.executor import run_graph
    stats = {layer.name: _stats_for(layer) for layer in layers}
    live = [layer for layer in layers if stats[layer.name] is not None]
    if not live:
        return stats
    wanted = sorted({layer.node.inputs[0] for layer in live})
    sub = _subgraph(graph, wanted)
    for f in feeds:
        vals = run_graph(sub, f, outputs=wanted)
        for layer in live:
            x = vals[layer.node.inputs[0]]
            if layer.node.op == "Gemm" and layer.node.attrs.get("transA", 0):
                x = np.swapaxes(x, -1, -2)
            stats[layer.name].update(x)
    return stats


# ----------------------------------------------------------------------------- the pass
def _check_args(graph, sparsity, pattern, scope, exclude):
    if pattern not in PATTERNS:
        raise errors.QinferError(f"pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    if scope not in SCOPES:
        raise errors.QinferError(f"scope must be 'layer' or 'global', got {scope!r}")
    if sparsity is None:
        sparsity = 0.5 if pattern == "2:4" else DEFAULT_SPARSITY
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.integer, np.floating)):
        raise errors.QinferError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise errors.QinferError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), "
                                 f"got {sparsity!r}")
    if pattern == "2:4" and sparsity != 0.5:
        raise errors.QinferError(f"pattern '2:4' prunes 2 of every 4 weights: its sparsity is 0.5, "
                                 f"got {sparsity!r} (leave sparsity out, or use 'block4' / "
                                 f"'unstructured')")
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(exclude)
    names = {n.name for n in graph.nodes}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise errors.QinferError(f"exclude names unknown node(s) {unknown}; the model's weighted "
                                 f"layers are {[n.name for n in graph.nodes if n.op in ('Conv', 'Gemm', 'MatMul')][:20]}")
    if graph.metadata.get("quantization") or any(n.domain == "qinfer" for n in graph.nodes):
        raise errors.QinferError("prune takes a float model: prune first, then quantize "
                                 "(qinfer.quantize(qinfer.prune(model), data))")
    return sparsity, exclude


def prune_graph(graph: Graph, sparsity=None, pattern="block4", scope="layer", exclude=(),
                calibration=None, sequential=True, progress=True) -> Graph:
    """See ``qinfer.prune``; returns a new Graph (the input is untouched)."""
    from .calibrate import iter_calibration, prepare_feed
    sparsity, exclude = _check_args(graph, sparsity, pattern, scope, exclude)
    layers, dense = find_layers(graph, set(exclude))
    if scope == "global" and pattern != "2:4" and layers:
        target = global_sparsities(layers, pattern, sparsity)
    else:
        target = {layer.name: sparsity for layer in layers}
    feeds = None
    if calibration is not None:
        feeds = [prepare_feed(graph, f, i)
                 for i, f in enumerate(iter_calibration(calibration, graph.input_names))]

    g = graph.copy()
    records = {}

    def prune_layer(layer, stats):
        m = layer.matrix()
        st = None if stats is None else stats.get(layer.name)
        parts, errs, errs_mag = [], [], []
        for gi, mg in enumerate(layer.split(m)):
            mag = np.where(magnitude_mask(mg, pattern, target[layer.name]), 0.0, mg)
            if st is None:
                parts.append(mag)
                continue
            G = st.gram(gi)
            new, _ = sparsegpt(mg, G, pattern, target[layer.name])
            parts.append(new)
            errs.append((gptq.energy(mg - new, G), gptq.energy(mg, G)))
            errs_mag.append((gptq.energy(mg - mag, G), gptq.energy(mg, G)))
        new_m = np.concatenate(parts)
        w = layer.weight_from(new_m)
        g.initializers[layer.wname] = w
        rec = {"layer": layer.name, "op": layer.node.op, "weight": layer.wname,
               "shape": list(w.shape), "pattern": pattern, "sparsity": float(np.mean(w == 0)),
               "method": "magnitude" if st is None else "sparsegpt",
               "output_error": None, "output_error_magnitude": None}
        if errs:
            def rel(pairs):
                sig = sum(p[1] for p in pairs)
                return math.sqrt(sum(p[0] for p in pairs) / sig) if sig > 0 else 0.0
            rec["output_error"], rec["output_error_magnitude"] = rel(errs), rel(errs_mag)
        elif feeds is not None:
            rec["note"] = "no calibration statistics for this layer (magnitude pruning)"
        records[layer.name] = rec
        if bar is not None:
            bar.update(1)

    bar = _bar(progress, len(layers), "pruning" if feeds is None else "pruning (SparseGPT)")
    try:
        if feeds is None:
            for layer in layers:
                prune_layer(layer, None)
        else:
            up = _upstream_layers(graph, layers) if sequential else {x.name: set() for x in layers}
            done, pending = set(), list(layers)
            while pending:
                wave = [layer for layer in pending if up[layer.name] <= done]
                stats = _gather(g, wave, feeds)
                for layer in wave:
                    prune_layer(layer, stats)
                    done.add(layer.name)
                pending = [layer for layer in pending if layer.name not in done]
    finally:
        if bar is not None:
            bar.close()

    total = sum(int(np.prod(layer.w.shape)) for layer in layers)
    zeros = sum(int(np.count_nonzero(g.initializers[layer.wname] == 0)) for layer in layers)
    g.metadata["sparsity"] = {
        "pattern": pattern, "scope": scope, "target": sparsity,
        "method": "magnitude" if feeds is None else "sparsegpt",
        "calibration_samples": 0 if feeds is None else len(feeds),
        "sparsity": zeros / total if total else 0.0, "zero_weights": zeros, "prunable_weights": total,
        "layers": [records[layer.name] for layer in layers], "dense": dense}
    return g


def pruned_layers(graph):
    """{node name: record} of the layers ``prune_graph`` pruned (from the graph's metadata)."""
    info = graph.metadata.get("sparsity")
    if not isinstance(info, dict):
        return {}
    return {r["layer"]: r for r in info.get("layers", []) if isinstance(r, dict) and "layer" in r}


__all__ = ["prune_graph", "pruned_layers", "find_layers", "magnitude_mask", "sparsegpt",
           "global_sparsities", "relative_error", "PATTERNS", "SCOPES", "BLOCK", "MIN_REDUCTION"]
