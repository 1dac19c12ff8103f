"""Whole-model int8 quantization: float Graph + calibration data -> Graph of quantized ops.

Design (observe / compute / pack, then rewrite):
1. Calibrate: run the float graph on the samples, one observer per float value (calibrate.py).
2. Candidates: every Conv (2-D, constant weights; plain, grouped or depthwise) and every Gemm /
   MatMul with a constant 2-D weight, each absorbing what its epilogue can apply: a MatMul's bias
   Add and one activation (Relu, Clip, HardSwish, Sigmoid, HardSigmoid).
3. Rewrite: each candidate becomes a QConv / QGemm with per-channel int8 weights packed for the
   kernels. A value that quantized layers pass to each other stays uint8 (NHWC between convs) under
   its float name, with its qparams on the value and its layout in ``metadata["layouts"]``; a
   residual Add of two such values becomes a QAdd; QuantizeU8 / DequantizeU8 appear only where
   float and quantized regions meet. A conv whose input comes from float may read it quantized
   per channel (QuantizeU8 ``channel_scales``, one zero point): the scales are folded into its
   weights before they are quantized per output channel, so the kernels see nothing new. A
   Flatten between int8 convs and a quantized Gemm flattens the uint8 NHWC bytes as they are, the
   Gemm's weight rows permuted to their (h, w, c) order.
4. Accuracy budget: the quantized model is run against the float one on (a part of) the
   calibration data. If an output's error (1 - cosine similarity) exceeds ``max_error``, each layer
   is quantized alone to measure its sensitivity, and the most sensitive layers are kept in float
   until the budget holds. ``metadata["precision_report"]`` records each layer's precision and why.
   The search runs twice, with every input per tensor and with float inputs per channel where a
   conv can take them; the result that leaves fewer multiply-adds in float wins.

Dynamic mode (``activations="dynamic"``): Gemm / MatMul become DynQGemm (activations quantized per
call, no calibration data needed); convs stay float.

int4 weights (``weights="int4"``): Gemm / MatMul and (non-depthwise) Conv layers get int4 weights
in blocks of ``group_size`` along the reduction axis (Q4Gemm / Q4Conv, or DynQ4Gemm in dynamic
mode; docs/formats.md 2.2), rounded to nearest or by GPTQ (quant/gptq.py) from each layer's
calibration inputs. Before the int8 search, ``_plan_int4`` measures the output error of the model
with every such layer in int4; over the budget, the layers whose int4 weights cost the most (each
measured alone) keep int8 until it holds, and the report says why per layer.
"""
from __future__ import annotations

import copy
import sys

import numpy as np

from .. import errors
from ..ir.graph import Node, QuantParams, Value
from ..ir.passes.fuse import epilogue_chain
from ..reference import int4 as qref4
from ..reference import quantized as qref
from ..reference import sparse as qsparse
from ..reference.executor import run_graph
from ..reference.qops import DYNAMIC_ZP
from . import gptq
from . import qparams as qp
from . import constants
from .calibrate import calibrate, iter_calibration
from .prune import pruned_layers

#: weight formats this version quantizes to
WEIGHT_FORMATS = ("int8", "int4")
#: int4 block sizes (``group_size``) along the reduction axis
INT4_GROUP_SIZES = (32, 64, 128)
#: default output budget: every output keeps cosine similarity >= 0.99 with the float model
DEFAULT_MAX_ERROR = 0.01
#: Sparse int8 weights: a Gemm / MatMul / (non-depthwise) Conv layer whose int8 weights have a
#: block4 density (non-zero 1x4 blocks along the reduction axis / all blocks) below this is packed
#: sparse (SB4W, docs/formats.md 2.3) and runs on the sparse kernels; at or above it, dense. The
#: break-even density measured by bench/bench_ukernels.py (sparse rows: M = 196, K = N = 1024, 1
#: thread, AVX-512 VNNI, this machine): 0.57, between density 0.5 (sparse 786 us, dense 927 us)
#: and 0.6 (1026 vs 928 us); bench/README.md has the table. Taken a little below (0.55): layers with
#: few output channels pay more fixed cost per call (the activations' re-packing and the
#: epilogue's transposes), so their break-even is lower. Set to 0 to force every layer dense.
SPARSE_MAX_DENSITY = 0.55
#: ... and, for a Gemm / MatMul, when one sample gives it at least this many rows: the sparse
#: kernel computes 16 rows per vector, so a batch-1 classifier head (one row) would leave 15 of 16
#: lanes idle (bench: M = 1, K = N = 1024 at 80% sparsity, sparse 37 us vs dense 15 us)
SPARSE_MIN_ROWS = 16
#: calibration samples used to measure the output error (the first ones)
EVAL_SAMPLES = 8
#: float units the refinement after the binary search gives a second try at int8 (at most)
REFINE_TRIES = 64

#: candidate kinds that read (and may write) uint8 NHWC activations
NHWC_KINDS = ("conv", "dw", "deconv")


class Candidate:
    """A quantizable layer: its node, the nodes its epilogue absorbs, and its I/O values."""

    def __init__(self, node, kind, absorbed, act, bias_const, weight):
        self.node = node
        self.kind = kind            # "conv" | "dw" | "gemm" | "deconv" (a ConvTranspose as a GEMM)
        self.absorbed = absorbed    # nodes folded into the epilogue (bias Add, activation)
        self.act = act              # (code, alpha, beta)
        self.bias = bias_const      # float bias or None
        self.weight = weight        # float weight: conv [M, C/g, KH, KW]; gemm [K, N]; deconv
                                    # [Cin, KH * KW * Cout], columns in (ky, kx, c) order
        self.x = node.inputs[0]
        self.y = (absorbed[-1] if absorbed else node).outputs[0]
        self.post = None            # (a, b, nodes, output) of a scalar a*y + b after the epilogue
        self.affine = (1.0, 0.0)    # (a, b) folded into the requantization (post absorbed)

    @property
    def name(self):
        return self.node.name


# ----------------------------------------------------------------------------- candidates
def find_candidates(graph, exclude=()):
    consts = graph.initializers
    consumers = graph.consumers()
    outputs = set(graph.output_names)
    exclude = set(exclude)
    out = []

    for n in graph.nodes:
        if n.name in exclude or n.op not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        w = consts.get(n.inputs[1]) if len(n.inputs) > 1 else None
        if w is None or w.dtype != np.float32:
            continue
        bias_name = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
        if bias_name and bias_name not in consts:
            continue
        bias = consts[bias_name].astype(np.float32) if bias_name else None
        if n.op == "ConvTranspose":
            weight = _deconv_as_gemm(n, w)
            if weight is None:
                continue
            if bias is not None:
                if bias.shape != (w.shape[1],):
                    continue
                bias = np.tile(bias, w.shape[2] * w.shape[3])
            kind = "deconv"
        elif n.op == "Conv":
            if w.ndim != 4:
                continue
            if n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                continue
            group = int(n.attrs.get("group", 1))
            m, cg = w.shape[:2]
            kind = "dw" if group > 1 and cg == 1 and m == group else "conv"
            weight = w
        else:
            if w.ndim != 2:
                continue
            if n.op == "Gemm":
                a = n.attrs
                if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0:
                    continue
                weight = np.ascontiguousarray(w.T) if a.get("transB", 0) else w
                if bias is not None:
                    if float(a.get("beta", 1.0)) != 1.0 or bias.size not in (1, weight.shape[1]):
                        continue
                    bias = np.broadcast_to(bias.reshape(-1), (weight.shape[1],)).astype(np.float32)
            else:
                weight = w
            kind = "gemm"
        add_bias, absorbed, act = epilogue_chain(n, consts, consumers, outputs)
        if add_bias is not None:
            bias = add_bias
        c = Candidate(n, kind, absorbed, act, bias, weight)
        c.rows = None if kind != "gemm" else 1 if n.op == "Gemm" else _rows_per_sample(graph, c.x)
        if kind in ("conv", "dw"):
            c.post = _post_affine(c.y, consts, consumers, outputs)
        out.append(c)
    return out


def _deconv_as_gemm(n, w):
    """The GEMM weights [Cin, KH * KW * Cout] (columns in (ky, kx, c) order) of a 2-D ConvTranspose
    whose kernel windows do not overlap (strides equal to the kernel, no padding, dilation 1, one
    group: a 2x2 stride-2 upsampling of a detector head or a U-Net), or None: each input pixel
    then writes its own KH x KW block of the output, a GEMM row rearranged. Overlapping windows
    need a col2im sum and stay float."""
    a = n.attrs
    if w.ndim != 4 or int(a.get("group", 1)) != 1 or "output_shape" in a:
        return None
    k = list(w.shape[2:])
    if (list(a.get("kernel_shape", k)) != k or list(a.get("strides", [1, 1])) != k
            or any(a.get("pads", [0, 0, 0, 0])) or any(a.get("output_padding", [0, 0]))
            or list(a.get("dilations", [1, 1])) != [1, 1]
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        return None
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def _rows_per_sample(graph, x):
    """GEMM rows one sample gives a MatMul input (the product of its dims between the first and the
    last: 1 for [batch, K], the sequence length for [batch, seq, K]); None when unknown. (An ONNX
    Gemm's input is 2-D, [batch, K]: one row per sample.)"""
    shape = graph.value(x).shape
    if shape is None or len(shape) < 2:
        return None
    mid = shape[1:-1]
    return int(np.prod(mid)) if all(isinstance(d, (int, np.integer)) for d in mid) else None


def _post_affine(y, consts, consumers, outputs):
    """A scalar affine map a*y + b after a layer's epilogue (PP-LCNetV3's learnable affine block
    after each activation): Mul by a constant scalar a > 0 and / or Add of a constant scalar b, each
    the only reader of the value before it. Returns (a, b, nodes, output) or None."""
    def single(name):
        cs = consumers.get(name, [])
        return cs[0] if len(cs) == 1 and name not in outputs else None

    def scalar(node, last):
        if len(node.inputs) != 2:
            return None
        other = node.inputs[1] if node.inputs[0] == last else node.inputs[0]
        v = consts.get(other)
        if v is None or v.size != 1 or v.dtype != np.float32 or v.ndim > 4:
            return None
        return float(v.reshape(-1)[0])

    a, b, nodes, last = 1.0, 0.0, [], y
    nxt = single(last)
    if nxt is not None and nxt.op == "Mul":
        v = scalar(nxt, last)
        if v is not None and 0.0 < v < 1e6 and np.isfinite(v):
            a, last = v, nxt.outputs[0]
            nodes.append(nxt)
            nxt = single(last)
    if nxt is not None and nxt.op == "Add":
        v = scalar(nxt, last)
        if v is not None and np.isfinite(v):
            b, last = v, nxt.outputs[0]
            nodes.append(nxt)
    return (a, b, nodes, last) if nodes else None


# ----------------------------------------------------------------------------- rewriting
def _value_qparams(observers, name):
    obs = observers.get(name)
    if obs is None:
        raise errors.CalibrationError(f"value {name!r} was not observed during calibration")
    scale, zp = obs.qparams(8)
    return float(scale), int(zp)


def _rounding_shift(c, wq, s_w, mu):
    """float64 [N]: the mean change of each output channel that rounding the weights to
    ``wq * s_w`` makes on inputs whose channels average ``mu`` (a conv's input channels; a GEMM's
    K values): sum over (c, ky, kx) of (wq * s_w - w) * mu[c] (zero padding at the borders left
    out)."""
    w = np.asarray(c.weight, np.float64)
    if c.kind == "gemm":
        d = wq.astype(np.float64) * s_w.astype(np.float64)[None, :] - w
        return mu @ d
    d = wq.astype(np.float64) * s_w.astype(np.float64)[:, None, None, None] - w
    per = d.reshape(d.shape[0], d.shape[1], -1).sum(axis=2)    # [M, C/g]: each kernel's sum
    return (per * _per_kernel(c, mu)).sum(axis=1)


def _per_kernel(c, v):
    """float64 [M, C/g]: a value per input channel of conv candidate ``c`` (``v`` [C]) laid out
    as its weight's first two axes (output channel m reads its group's channels)."""
    m, cg = c.weight.shape[:2]
    groups = int(c.node.attrs.get("group", 1))
    return np.repeat(np.asarray(v, np.float64).reshape(groups, cg), m // groups, axis=0)


def _pack(c, s_x, zp_x, mu=None):
    """Per-channel int8 weights, int32 bias and kernel scales of a candidate (int4 weights, a
    float offset and the per-call scale s_x when the candidate carries ``int4``).

    ``mu`` (the mean of each of the layer's input channels in calibration, in the units the
    weights multiply): the bias absorbs the mean shift that rounding the weights makes
    (Nagel et al. 2019's bias correction, from calibration means): a kernel whose large weights
    nearly cancel (a re-parameterized edge filter) otherwise adds a constant error to every
    output, as large as its rounding error times the input's mean."""
    if getattr(c, "int4", None) is not None:
        return _pack_int4(c, s_x, zp_x)
    gemm_like = c.kind in ("gemm", "deconv")
    if gemm_like:
        wq, s_w = qp.quantize_weight_per_channel(c.weight, axis=1)
    else:
        wq, s_w = qp.quantize_weight_per_channel(c.weight, axis=0)
    s_w = np.asarray(s_w, np.float32)
    if c.bias is not None:
        # a channel whose weights are (nearly) dead but whose bias is not: a weight scale so small
        # that bias / (s_x * s_w) overflows int32 buys nothing; raise it to where the bias fits
        # (the weights then round to what little they are worth next to that bias)
        floor = np.abs(c.bias.astype(np.float64)) / (np.float64(s_x) * 2.0 ** 28)
        if np.any(floor > s_w):
            s_w = np.maximum(s_w.astype(np.float64), floor).astype(np.float32)
            shape = (1, -1) if gemm_like else (-1, 1, 1, 1)
            wq = np.clip(np.rint(c.weight / s_w.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    bias = c.bias
    if mu is not None and c.kind in ("conv", "dw", "gemm"):
        shift = _rounding_shift(c, wq, s_w, mu)
        if np.all(np.isfinite(shift)) and np.any(shift != 0):
            bias = ((np.zeros(shift.shape) if bias is None else bias.astype(np.float64))
                    - shift).astype(np.float32)
    if bias is not None:
        ratio = np.abs(bias.astype(np.float64)) / (np.float64(s_x) * s_w.astype(np.float64))
        if not np.all(ratio < 2.0 ** 30):
            raise ValueError("its bias is too large for int32 at this input scale")
    bias_q = qp.quantize_bias(bias, s_x, s_w) if bias is not None else None
    groups = int(c.node.attrs.get("group", 1))
    c.density = None
    rows = getattr(c, "rows", None)
    if c.kind in ("conv", "gemm") and (c.kind != "gemm" or rows is None or rows >= SPARSE_MIN_ROWS):
        d = qsparse.layer_density(wq, groups)   # block4 zeros (a pruned layer): sparse below the
        if d < SPARSE_MAX_DENSITY:               # measured break-even
            c.density = d
    if c.density is not None:
        packed = (qsparse.pack_gemm_sb4w(wq, bias_q, zp_x) if c.kind == "gemm"
                  else qsparse.pack_conv_sb4w(wq, bias_q, zp_x, groups))
    elif gemm_like:
        packed = qref.pack_gemm_qc8w(wq, bias_q, zp_x)
    elif c.kind == "dw":
        packed = qref.pack_dwconv_qc8w(wq, bias_q, zp_x)
    else:
        packed = qref.pack_conv_qc8w(wq, bias_q, zp_x, groups)
    scale = (np.float64(s_x) * s_w.astype(np.float64)).astype(np.float32)
    return packed, scale, s_w


#: quantize() applies bias correction after its precision search (False: it does not; for
#: comparisons such as bench/bench_rec_lines.py)
BIAS_CORRECTION = True


def _input_means(observers, name, channels):
    """Calibration mean of each of ``channels`` input channels of value ``name`` (float64), or
    None (no observer, or a channel count that does not match)."""
    obs = observers.get(name)
    mu = obs.input_means() if obs is not None else None
    return mu if mu is not None and mu.shape == (channels,) else None


def _conv_geometry(attrs, w):
    kh, kw = w.shape[2:]
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    p = list(attrs.get("pads", [0, 0, 0, 0]))
    if attrs.get("auto_pad", "NOTSET") == "VALID":
        p = [0, 0, 0, 0]
    return {"strides": strides, "dilations": dil, "pads": [p[0], p[1], p[2], p[3]]}


def _channel_folded(c, scales):
    """A copy of conv / depthwise candidate ``c`` whose input is quantized per channel with
    ``scales`` (float32 [C_in]): each weight is multiplied by its input channel's scale, so the
    integer products of the raw uint8 values and these weights, times a per-output-channel scale
    of 1 * s_w, are the real ones (the scales move from the activations into the weights, which
    are then quantized per output channel as usual)."""
    f = copy.copy(c)
    f.weight = (c.weight.astype(np.float64)
                * _per_kernel(c, scales)[:, :, None, None]).astype(np.float32)
    return f


def channel_input_ok(c, observers):
    """Can ``c``'s input, where it comes from float, be quantized per channel (into its weights)?"""
    if c.kind not in ("conv", "dw") or getattr(c, "int4", None) is not None:
        return False
    obs = observers.get(c.x)
    if obs is None or obs.ch_min is None:
        return False
    groups = int(c.node.attrs.get("group", 1))
    return obs.ch_min.shape[0] == c.weight.shape[1] * groups


def _macs(c, observers):
    """Multiply-adds of candidate ``c`` per sample, from its output's size seen in calibration"""
    obs = observers.get(c.y)
    if obs is None or not obs.batches:
        return 0
    per_out = c.weight.shape[0] if c.kind in ("gemm", "deconv") else c.weight[0].size
    return (obs.count + obs.nonfinite) / obs.batches * per_out


def build_quantized(graph, candidates, observers, quantize_set, channel_inputs=(),
                    bias_correction=False):
    """Rewrite ``graph`` with the candidates named in ``quantize_set`` quantized; those named in
    ``channel_inputs`` whose input comes from float (not from another int8 layer) read it
    quantized per channel (QuantizeU8 ``channel_scales``, folded into their weights). With
    ``bias_correction`` the int8 layers' biases absorb their weights' rounding shift (_pack)."""
    means = ((lambda name, channels: _input_means(observers, name, channels)) if bias_correction
             else (lambda name, channels: None))
    g = graph.copy()
    outputs = set(graph.output_names)
    passthrough = {k: v for k, v in _passthrough_nodes(graph, outputs).items() if k in quantize_set}
    pt_inputs = {x for pt in passthrough.values() for x in _pt_xs(pt)}
    chosen = [_with_post(c, candidates, quantize_set, pt_inputs) for c in candidates
              if c.name in quantize_set]
    by_node = {c.name: c for c in chosen}
    absorbed = {a.name for c in chosen for a in c.absorbed}
    consumers = graph.consumers()
    outputs = set(graph.output_names)
    layouts = dict(g.metadata.get("layouts", {}))

    # QAdd: residual Adds (with an optional following Relu) of two uint8 NHWC values of equal shape
    conv_out = {c.y for c in chosen if c.kind in NHWC_KINDS} - outputs
    qadds = {}   # final output name -> (Add node, Relu node or None)
    for n in graph.nodes:
        if n.op != "Add" or len(n.inputs) != 2 or n.name in absorbed or n.inputs[0] == n.inputs[1]:
            continue
        # both rank-4 activations: NHWC broadcasting then matches NCHW broadcasting axis for axis
        va, vb = graph.value(n.inputs[0]), graph.value(n.inputs[1])
        if (va.rank != 4 or vb.rank != 4 or va.dtype != "float32" or vb.dtype != "float32"
                or any(i in graph.initializers for i in n.inputs)):
            continue
        cs = consumers.get(n.outputs[0], [])
        relu = cs[0] if len(cs) == 1 and cs[0].op == "Relu" and n.outputs[0] not in outputs else None
        y = relu.outputs[0] if relu else n.outputs[0]
        if y not in outputs:
            qadds[y] = (n, relu)
    # Flatten(axis 1) of a rank-4 value whose only reader is a quantized Gemm: it flattens the
    # uint8 NHWC bytes as they are, (h, w, c) order, and the Gemm's weight rows are permuted from
    # (c, h, w) to match (a classifier head after conv / pool layers: no dequantize, float
    # Flatten and quantize between them)
    flat_gemm = {}   # Flatten node name -> (gemm candidate, (C, H, W))
    for n in graph.nodes:
        if n.op != "Flatten" or int(n.attrs.get("axis", 1)) != 1 or n.outputs[0] in outputs:
            continue
        cs = consumers.get(n.outputs[0], [])
        c = by_node.get(cs[0].name) if len(cs) == 1 else None
        shape = graph.value(n.inputs[0]).shape
        if (c is None or c.kind != "gemm" or c.x != n.outputs[0] or getattr(c, "int4", None) is not None
                or shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:])
                or c.weight.shape[0] != shape[1] * shape[2] * shape[3]):
            continue
        flat_gemm[n.name] = (c, tuple(shape[1:]))
    while True:   # keep the QAdds whose result a quantized conv, another QAdd or a pass-through reads
        add_nodes = {n.name for n, _ in qadds.values()}

        def wants_u8(cn, y):
            c = by_node.get(cn.name)
            if c is not None:
                return c.kind in NHWC_KINDS and c.x == y
            pt = passthrough.get(cn.name)
            return (cn.name in add_nodes or (pt is not None and y in _pt_xs(pt))
                    or cn.name in flat_gemm)

        unwanted = [y for y in qadds if not any(wants_u8(cn, y) for cn in consumers.get(y, []))]
        if not unwanted:
            break
        for y in unwanted:
            del qadds[y]
    u8 = set(qadds) | {y for y in conv_out if any(wants_u8(cn, y) for cn in consumers.get(y, []))}
    # pass-through ops run on uint8 when their input is (a Concat: when one of its inputs is):
    # MaxPool, Resize, Concat and the channel Mul give uint8, the global average pool float (a
    # dequantizing reduction)
    active_pt = {}
    for n in graph.nodes:
        pt = passthrough.get(n.name)
        if pt is not None and any(x in u8 for x in _pt_xs(pt)):
            active_pt[n.name] = pt
            if pt[0] != "gap":
                u8.add(n.outputs[0])
    qadd_by_node = {n.name: (y, relu) for y, (n, relu) in qadds.items()}
    skip_relu = {relu.name for _, relu in qadds.values() if relu is not None}

    qparams = {}

    def qp_of(name):
        if name not in qparams:
            qparams[name] = _value_qparams(observers, name)
        return qparams[name]

    # a uint8 Concat copies bytes: its inputs take its output's scale and zero point (their
    # producers requantize to it; the union range holds each input's), and so does what a
    # nearest Resize feeding it reads (a Resize keeps its input's)
    producers = graph.producers()
    for n in graph.nodes:
        pt = active_pt.get(n.name)
        if pt is None or pt[0] != "concat":
            continue
        common = qp_of(n.outputs[0])
        for x in pt[1]:
            while x not in qparams:
                qparams[x] = common
                p = producers.get(x)
                pp = active_pt.get(p.name) if p is not None else None
                if pp is None or pp[0] != "resize":
                    break
                x = pp[1]

    new_nodes = []
    quantized_inputs = {}   # (float value, layout) -> uint8 value name
    dequantized = {}        # uint8 NHWC value -> float NCHW value name

    def float_of(name):
        """The float NCHW version of a value (inserting a DequantizeU8 after a uint8 one)."""
        if name not in u8:
            return name
        if name not in dequantized:
            s, zp = qp_of(name)
            fname = f"{name}__f32"
            new_nodes.append(Node("DequantizeU8", (name,), (fname,),
                                  {"scale": s, "zero_point": zp, "layout": "nhwc_to_nchw"},
                                  f"{name}__dequantize", "qinfer"))
            dequantized[name] = fname
        return dequantized[name]

    def u8_of(name, layout):
        """The uint8 version of a value in ``layout`` ("nhwc" for convs, "keep" for gemms)."""
        if name in u8 and layout == "nhwc":
            return name
        key = (name, layout)
        if key not in quantized_inputs:
            s, zp = qp_of(name)
            qname = f"{name}__u8_{layout}"
            new_nodes.append(Node("QuantizeU8", (float_of(name),), (qname,),
                                  {"scale": s, "zero_point": zp,
                                   "layout": "nchw_to_nhwc" if layout == "nhwc" else "keep"},
                                  f"{name}__quantize_{layout}", "qinfer"))
            quantized_inputs[key] = qname
        return quantized_inputs[key]

    def u8_channels_of(name):
        """The uint8 NHWC version of float NCHW ``name`` quantized per channel: (value, scales, zp)."""
        key = (name, "nhwc_channels")
        if key not in quantized_inputs:
            scales, zp = observers[name].channel_qparams(8)
            qname = f"{name}__u8_nhwc_channels"
            new_nodes.append(Node("QuantizeU8", (float_of(name),), (qname,),
                                  {"scale": float(scales.max()), "zero_point": int(zp),
                                   "channel_scales": [float(v) for v in scales],
                                   "layout": "nchw_to_nhwc"},
                                  f"{name}__quantize_nhwc_channels", "qinfer"))
            quantized_inputs[key] = (qname, scales, zp)
        return quantized_inputs[key]

    report = []
    flat_u8 = {}    # gemm name -> (its uint8 (h, w, c) input, the NHWC value flattened, row order,
                    # [C, H, W])
    for n in graph.nodes:
        if n.name in absorbed:
            continue
        if n.name in flat_gemm and n.inputs[0] in u8:
            c, (ch, hh, ww) = flat_gemm[n.name]
            qname = f"{n.outputs[0]}__u8_hwc"
            new_nodes.append(Node("Flatten", (n.inputs[0],), (qname,), {"axis": 1}, n.name))
            flat_u8[c.name] = (qname, n.inputs[0],
                               np.arange(ch * hh * ww).reshape(ch, hh, ww).transpose(1, 2, 0).ravel(),
                               [ch, hh, ww])
            continue
        c = by_node.get(n.name)
        if c is not None:
            layout = "keep" if c.kind == "gemm" else "nhwc"
            if c.name in flat_u8:
                x, src, rows, chw = flat_u8[c.name]
                s_x, zp_x = qp_of(src)
                c = copy.copy(c)
                c.weight = np.ascontiguousarray(c.weight[rows])
                mu = means(c.x, c.weight.shape[0])   # the float Flatten's
                packed, scale, s_w = _pack(c, s_x, zp_x, None if mu is None else mu[rows])
            elif c.name in channel_inputs and c.x not in u8 and channel_input_ok(c, observers):
                x, scales, zp_x = u8_channels_of(c.x)
                c = _channel_folded(c, scales)
                mu = means(c.x, len(scales))
                packed, scale, s_w = _pack(c, np.float32(1.0), zp_x,
                                           None if mu is None else mu / np.asarray(scales, np.float64))
                c.note = ("quantized (per-channel int8 weights, uint8 activations; its input "
                          "per channel, the scales folded into the weights)")
            else:
                x = u8_of(c.x, layout)
                s_x, zp_x = qp_of(c.x)
                k_in = (c.weight.shape[0] if c.kind == "gemm"
                        else c.weight.shape[1] * int(c.node.attrs.get("group", 1)))
                packed, scale, s_w = _pack(c, s_x, zp_x, means(c.x, k_in))
            pname, sname = f"{c.name}__packed_w", f"{c.name}__scale"
            g.initializers[pname] = packed
            # one value when every channel shares it (int4 layers: the block scales are in the
            # packed weights, this is s_x alone; per-tensor int8 weights): the runtime broadcasts
            g.initializers[sname] = scale[:1] if scale.size > 1 and np.all(scale == scale[0]) else scale
            attrs = {"activation": c.act[0], "alpha": c.act[1], "beta": c.act[2]}
            if c.kind == "deconv":
                attrs["kernel_shape"] = [int(d) for d in graph.initializers[n.inputs[1]].shape[2:]]
            elif c.kind != "gemm":
                attrs.update(_conv_geometry(n.attrs, c.weight), kind=c.kind)
            if c.y in u8:
                s_y, zp_y = qp_of(c.y)
                inv = np.float32(1.0 / s_y)
                pa, pb = c.affine
                if (pa, pb) == (1.0, 0.0):
                    attrs.update(out_dtype="uint8", y_inv_scale=float(inv), zp_y=zp_y)
                else:   # q = rint(act(y) * (a / s) + (b / s + zp)): the tail folded in
                    attrs.update(out_dtype="uint8", y_inv_scale=float(np.float32(pa) * inv),
                                 zp_y=float(np.float32(pb) * inv + np.float32(zp_y)))
            else:
                attrs.update(out_dtype="float32", out_layout="nchw")
            if c.name in flat_u8:   # K rows in (h, w, c) order of a [C, H, W] input (tools that
                attrs["k_order_hwc"] = flat_u8[c.name][3]   # read the weights map them back)
            four = getattr(c, "int4", None) is not None
            op = {"gemm": "Q4Gemm" if four else "QGemm", "deconv": "QConvTranspose"}.get(
                c.kind, "Q4Conv" if four else "QConv")
            new_nodes.append(Node(op, (x, pname, sname), (c.y,), attrs, c.name, "qinfer"))
            entry = {"layer": c.name, "op": n.op, "precision": "int4" if four else "int8",
                     "reason": getattr(c, "note", None)
                     or "quantized (per-channel int8 weights, uint8 activations)"}
            if getattr(c, "density", None) is not None and not four:
                entry["sparse"] = {"pattern": "block4", "density": c.density}
                entry["reason"] += (f"; sparse block4 weights, {c.density:.1%} of blocks non-zero "
                                    f"(dense at or above {SPARSE_MAX_DENSITY:.0%})")
            report.append(entry)
            continue
        if n.name in skip_relu:
            continue
        pt = active_pt.get(n.name)
        if pt is not None and pt[0] == "concat":
            y = n.outputs[0]
            xs = [u8_of(x, "nhwc") for x in pt[1]]
            s_y, zp_y = qp_of(y)
            qs = [qp_of(x) for x in pt[1]]
            new_nodes.append(Node("QConcat", tuple(xs), (y,),
                                  {"axis": 3, "scales": [float(q[0]) for q in qs],
                                   "zero_points": [int(q[1]) for q in qs],
                                   "scale": float(s_y), "zero_point": int(zp_y)}, n.name, "qinfer"))
            continue
        if pt is not None:
            kind, x, factor = pt
            y = n.outputs[0]
            s_x, zp_x = qp_of(x)
            if kind == "maxpool":     # max commutes with the monotonic quantization: same qparams
                qparams[y] = (s_x, zp_x)
                attrs = {k: v for k, v in n.attrs.items()
                         if k in ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")}
                new_nodes.append(Node("QMaxPool", (x,), (y,), attrs, n.name, "qinfer"))
            elif kind == "gap":
                new_nodes.append(Node("QGlobalAveragePool", (x,), (y,),
                                      {"scale": s_x, "zero_point": zp_x}, n.name, "qinfer"))
            elif kind == "resize":   # nearest: copies values, so the same qparams
                qparams[y] = (s_x, zp_x)
                new_nodes.append(Node("QResize", (x,) + tuple(n.inputs[1:]), (y,), dict(n.attrs),
                                      n.name, "qinfer"))
            else:
                s_y, zp_y = qp_of(y)
                new_nodes.append(Node("QMulChannel", (x, float_of(factor)), (y,),
                                      {"x_scale": s_x, "x_zp": zp_x,
                                       "y_inv_scale": float(np.float32(1.0 / s_y)), "zp_y": zp_y},
                                      n.name, "qinfer"))
            continue
        if n.name in qadd_by_node:
            y, relu = qadd_by_node[n.name]
            a, b = n.inputs
            (sa, za), (sb, zb), (sy, zy) = qp_of(a), qp_of(b), qp_of(y)
            new_nodes.append(Node("QAdd", (u8_of(a, "nhwc"), u8_of(b, "nhwc")), (y,),
                                  {"a_scale": sa, "a_zp": za, "b_scale": sb, "b_zp": zb,
                                   "y_inv_scale": float(np.float32(1.0 / sy)), "zp_y": zy,
                                   "activation": 1 if relu is not None else 0}, n.name, "qinfer"))
            continue
        ins = tuple(float_of(i) if i else i for i in n.inputs)
        new_nodes.append(n.replace(inputs=ins) if ins != n.inputs else n)

    g.nodes = _reorder(new_nodes, g)
    for name in u8:
        s, zp = qp_of(name)
        g.value_info[name] = Value(name, "uint8", None, QuantParams(np.float32(s), np.int32(zp)))
        layouts[name] = "NHWC"
    for name in qparams:
        if name not in u8 and name in g.value_info:
            v = g.value_info[name]
            s, zp = qparams[name]
            g.value_info[name] = Value(name, v.dtype, v.shape, QuantParams(np.float32(s), np.int32(zp)))
    g.metadata["layouts"] = layouts
    g.metadata["quantization"] = {"weights": "int8", "activations": "int8"}
    sparse = sum("sparse" in r for r in report)
    if sparse:
        g.metadata["quantization"]["sparse_layers"] = sparse
    return g.remove_unused(), report


def _with_post(c, candidates, quantize_set, pt_inputs):
    """``c``, or a copy absorbing its scalar affine tail into the requantization when a quantized
    conv or a uint8 pass-through op reads the tail's result (the epilogue's 1/scale and zero point
    carry a and b: uint8 outputs only, so the tail is absorbed only where the result stays uint8)."""
    if c.post is None:
        return c
    y_post = c.post[3]
    readers = [d for d in candidates if d.name in quantize_set and d.x == y_post]
    if any(d.kind == "gemm" for d in readers) or not (readers or y_post in pt_inputs):
        return c
    pc = copy.copy(c)
    pc.absorbed = list(c.absorbed) + list(c.post[2])
    pc.y = y_post
    pc.affine = c.post[:2]
    return pc


def _anchors(candidates, producers, x):
    """The candidate convs whose outputs make ``x`` (directly, or through one Add / Relu)."""
    by_y = {c.y: c.name for c in candidates if c.kind in NHWC_KINDS}
    if x in by_y:
        return {by_y[x]}
    producer = producers.get(x)
    if producer is not None and producer.op == "Relu":
        producer = producers.get(producer.inputs[0])
    if producer is not None and producer.op == "Add":
        return {by_y[i] for i in producer.inputs if i in by_y}
    return set()


def _pt_xs(pt):
    """The uint8 inputs of a pass-through entry (a Concat has several)."""
    return pt[1] if isinstance(pt[1], tuple) else (pt[1],)


def _nearest_resize(graph, n):
    """Whether Resize node ``n`` can run on uint8 NHWC: nearest, rank 4, constant scales that
    keep batch and channels (or none and constant sizes), no ``axes``, no crop-and-resize."""
    a = n.attrs
    x = graph.value(n.inputs[0])
    if (a.get("mode", "nearest") != "nearest" or x.rank != 4 or x.dtype != "float32"
            or a.get("axes") is not None or int(a.get("antialias", 0))
            or a.get("coordinate_transformation_mode") == "tf_crop_and_resize"
            or a.get("keep_aspect_ratio_policy", "stretch") != "stretch"):
        return False
    consts = [graph.initializers.get(i) if i else None for i in n.inputs[1:]]
    if any(i and c is None for i, c in zip(n.inputs[1:], consts)):
        return False                     # a computed roi / scales / sizes
    scales = consts[1] if len(consts) > 1 and consts[1] is not None and consts[1].size else None
    sizes = consts[2] if len(consts) > 2 and consts[2] is not None and consts[2].size else None
    if scales is not None:
        return scales.size == 4 and float(scales[0]) == 1.0 and float(scales[1]) == 1.0
    return sizes is not None and sizes.size == 4 and x.shape is not None and list(
        sizes[:2]) == list(x.shape[:2])


def _passthrough_nodes(graph, outputs):
    """{node name: (kind, uint8 input, per-channel factor or None)} of the nodes that can run on a
    uint8 NHWC input: 2-D MaxPool ("maxpool"), GlobalAveragePool ("gap"), a Mul of a rank-4
    activation by a per-channel factor [N|1, C, 1, 1] ("mul", the gate of squeeze-excitation),
    nearest Resize ("resize") and a channel Concat ("concat", whose input is the tuple of its
    inputs). None of these is ever absorbed by an epilogue (an activation or a scalar affine tail)."""
    out = {}
    for n in graph.nodes:
        if not n.outputs or n.outputs[0] in outputs:
            continue
        if n.op == "Resize" and _nearest_resize(graph, n):
            out[n.name] = ("resize", n.inputs[0], None)
        elif n.op == "Concat" and len(n.inputs) >= 2 and all(n.inputs) and all(
                graph.value(i).rank == 4 and graph.value(i).dtype == "float32"
                and i not in graph.initializers for i in n.inputs) and int(n.attrs.get("axis", 0)) in (1, -3):
            out[n.name] = ("concat", tuple(n.inputs), None)
        if n.op == "MaxPool":
            a = n.attrs
            if (len([o for o in n.outputs if o]) == 1 and graph.value(n.inputs[0]).rank == 4
                    and len(a.get("kernel_shape", ())) == 2 and not a.get("storage_order", 0)
                    and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")):
                out[n.name] = ("maxpool", n.inputs[0], None)
        elif n.op == "GlobalAveragePool" and graph.value(n.inputs[0]).rank == 4:
            out[n.name] = ("gap", n.inputs[0], None)
        elif n.op == "Mul" and len(n.inputs) == 2 and n.inputs[0] != n.inputs[1]:
            for x, f in (n.inputs, n.inputs[::-1]):
                vx, vf = graph.value(x), graph.value(f)
                if (vx.rank == 4 and vf.rank == 4 and vx.dtype == "float32" and vf.dtype == "float32"
                        and x not in graph.initializers and tuple(vf.shape[2:]) == (1, 1)
                        and tuple(vx.shape[2:]) != (1, 1) and vf.shape[1] == vx.shape[1]
                        and vf.shape[1] is not None):
                    out[n.name] = ("mul", x, f)
                    break
    return out


def _reorder(nodes, graph):
    """Topological order of the rewritten nodes (a Dequantize is emitted when first needed)."""
    produced = {v.name for v in graph.inputs} | set(graph.initializers)
    pending = list(nodes)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all((not i) or i in produced for i in n.inputs):
                ordered.append(n)
                produced.update(o for o in n.outputs if o)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            names = ", ".join(n.name for n in rest[:5])
            raise errors.QinferError(f"internal: quantized graph has unresolved inputs at {names}")
        pending = rest
    return ordered


# ----------------------------------------------------------------------------- accuracy
def _outputs(graph, feeds, num_threads=1):
    from ..runtime.session import InferenceSession
    sess = InferenceSession(graph, num_threads=num_threads)
    return [sess.run(None, f) for f in feeds]


def output_error(ref_outs, got_outs):
    """Worst 1 - cosine similarity over every output of every evaluation sample.

    Per sample, not pooled: a model must keep its answer on each input (a text-free image's
    near-zero map must not hide a broken one in a pooled cosine).
    """
    worst = 0.0
    for ref, got in zip(ref_outs, got_outs):
        for r, q in zip(ref, got):
            r = np.asarray(r, np.float64).ravel()
            q = np.asarray(q, np.float64).ravel()
            nr, nq = np.linalg.norm(r), np.linalg.norm(q)
            if nr == 0 and nq == 0:
                continue
            cos = float(r @ q / (nr * nq)) if nr > 0 and nq > 0 else 0.0
            worst = max(worst, 1.0 - cos)
    return worst


#: the most constants ``_small_constants`` tries one by one
CONSTANT_TRIES = 24


def _small_constants(qg, ref, eval_feeds, budget, err, tables="int8", block=64):
    """``qg`` with its big float constants stored smaller (quant/constants.py) as far as the output
    error stays within ``budget``: tables (positional, embeddings) as ``tables`` rows ("int8", or
    "int4" in blocks of ``block`` for a model with int4 weights), the weights of the layers kept
    float as float16. All at once if that holds, else each, largest first, as planned (a table
    int8 if int4 does not hold, float16 if int8 does not), two passes. Returns (graph, error);
    ``metadata["quantization"]["constants"]`` says what was done."""
    names = sorted(constants.candidates(qg), key=lambda k: -qg.initializers[k].nbytes)
    layers = constants.layer_weights(qg)
    half = {k for k in names if constants.fits_float16(qg.initializers[k])}
    plan = {k: "float16" if k in layers else tables for k in names if k not in layers or k in half}
    if not plan:
        return qg, err
    g, rep = constants.compress_constants(qg, plan, block)
    e = output_error(ref, _outputs(g, eval_feeds))
    if e > budget:
        chosen, g, rep, e = {}, qg, [], err
        wider = {"int4": ("int4", "int8", "float16"), "int8": ("int8", "float16")}
        tries = [(k, kind) for k in names[:CONSTANT_TRIES] if k in plan
                 for kind in wider.get(plan[k], (plan[k],)) if kind != "float16" or k in half]
        for _ in range(2):     # the error is not monotonic: a second pass may take what the first left
            changed = False
            for name, kind in tries:
                if name in chosen:
                    continue
                g_t, rep_t = constants.compress_constants(qg, {**chosen, name: kind}, block)
                e_t = output_error(ref, _outputs(g_t, eval_feeds))
                if e_t <= budget:
                    chosen[name] = kind
                    g, rep, e, changed = g_t, rep_t, e_t, True
            if not changed:
                break
    info = dict(qg.metadata["quantization"])
    before = sum(qg.initializers[k].nbytes for k in names)
    counts = {k: sum(r["storage"] == k for r in rep) for k in ("int4", "int8", "float16")}
    four = f"{counts['int4']} stored int4 per block of {block}, " if tables == "int4" else ""
    info["constants"] = (f"{len(names)} float32 of {before:,} B outside the int8 layers: {four}"
                         f"{counts['int8']} stored int8 per row, {counts['float16']} float16, "
                         f"{len(names) - len(rep)} kept float32 "
                         f"({before:,} -> {before - sum(r['float_bytes'] - r['stored_bytes'] for r in rep):,} B)")
    g = g.copy() if g is qg else g
    g.metadata["quantization"] = info
    return g, e


def _progress(it, enabled, total, desc):
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
            return tqdm(it, total=total, desc=desc, leave=False)
        except ImportError:
            pass
    return it


def quantize_graph(graph, calibration, weights="int8", activations="int8", method="minmax",
                   rounding="nearest", per_channel=True, group_size=64, max_error=None, exclude=(),
                   progress=True):
    if weights not in ("int8", "int4", "float"):
        raise errors.QinferError(f"weights must be 'int8', 'int4' or 'float', got {weights!r}")
    if activations not in ("int8", "dynamic", "float"):
        raise errors.QinferError(f"activations must be 'int8', 'dynamic' or 'float', got {activations!r}")
    if rounding not in ("nearest", "gptq"):
        raise errors.QinferError(f"rounding must be 'nearest' or 'gptq', got {rounding!r}")
    if weights == "int4":
        if (isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer))
                or int(group_size) not in INT4_GROUP_SIZES):
            raise errors.QinferError(f"group_size must be one of {INT4_GROUP_SIZES} for int4 "
                                     f"weights, got {group_size!r}")
    elif rounding == "gptq" and weights == "int8":
        raise errors.QinferError("rounding='gptq' applies to weights='int4' (int8 weights round "
                                 "to nearest); use weights='int4' or rounding='nearest'")
    if not per_channel:
        raise errors.QinferError("per_channel=False is not supported: int8 weights are per output channel")
    names = {n.name for n in graph.nodes}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise errors.QinferError(f"exclude names unknown node(s) {unknown}")
    if weights == "float" or activations == "float":
        return graph.copy()
    if activations == "dynamic":
        if weights == "int4":
            return _quantize_dynamic_int4(graph, calibration, int(group_size), rounding, max_error,
                                          exclude, progress)
        return quantize_dynamic(graph, exclude)
    budget = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
    if not budget > 0:
        raise errors.QinferError(f"max_error must be > 0, got {max_error!r}")
    feeds = list(iter_calibration(calibration, graph.input_names))
    if not feeds:
        raise errors.CalibrationError("calibration data is empty")
    candidates = find_candidates(graph, exclude)
    if not candidates:
        # nothing to quantize (no Conv / Gemm / MatMul with constant weights): the model is returned
        # as it is, and says so, as ONNX Runtime's quantizer does
        g = graph.copy()
        g.metadata["precision_report"] = []
        g.metadata["quantization"] = {"weights": "int8", "activations": "int8",
                                      "note": "no layer with constant weights to quantize"}
        return g
    observers = calibrate(graph, feeds, method=method, progress=progress)
    unfit = {}
    for c in candidates:   # a bias that int32 cannot hold (tiny input scale) keeps the layer float
        try:
            _pack(c, *_value_qparams(observers, c.x))
        except (ValueError, OverflowError) as e:
            unfit[c.name] = str(e)
    candidates = [c for c in candidates if c.name not in unfit]
    eval_feeds = feeds[:EVAL_SAMPLES]
    ref = _outputs(graph, eval_feeds)
    # the pass-through ops (uint8 MaxPool / global average pool / channel Mul) are units of the
    # precision search too: running one on uint8 makes its producer's output uint8, and a
    # squeeze-excitation gate applied in uint8 adds a rounding the float gate does not
    passthrough = _passthrough_nodes(graph, set(graph.output_names))
    units = {c.name: {c.name} for c in candidates}
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    by_input = {}    # the pass-through ops reading one value form one unit (SE: its pool and gate)
    for name, pt in passthrough.items():   # (a Concat is a unit of its own)
        by_input.setdefault(pt[1] if pt[0] != "concat" else name, []).append(name)
    for names in by_input.values():
        units[names[0]] = set(names).union(*(_anchors(candidates, producers, x)
                                             for x in _pt_xs(passthrough[names[0]])))
    members = {name: set(names) for names in by_input.values() for name in names[:1]}
    all_names = list(units)
    if weights == "int4":
        everything = set().union(*(members.get(n, {n}) for n in all_names))
        candidates = _plan_int4(graph, candidates, feeds, eval_feeds, ref, int(group_size), rounding,
                                budget, lambda cs: build_quantized(graph, cs, observers, everything)[0],
                                progress)

    def search(channels):
        """(error, graph, report, quantized set, channels, float units' sensitivity): the
        fewest float units that meet the budget, the layers named in ``channels`` reading a float
        input per channel"""
        everything = set().union(*(members.get(n, {n}) for n in all_names))
        qg, report = build_quantized(graph, candidates, observers, everything, channels)
        err = output_error(ref, _outputs(qg, eval_feeds))
        if err <= budget:
            return err, qg, report, everything, channels, {}
        # sensitivity: quantize each layer alone
        sens = {}
        for name in _progress(all_names, progress, len(all_names), "sensitivity"):
            g1, _ = build_quantized(graph, candidates, observers, units[name], channels)
            sens[name] = output_error(ref, _outputs(g1, eval_feeds))
        order = sorted(all_names, key=lambda n: -sens[n])

        def attempt(k):   # the k most sensitive units float, the rest int8
            chosen = set().union(*(members.get(n, {n}) for n in order[k:]))
            g_k, rep_k = build_quantized(graph, candidates, observers, chosen, channels)
            return (output_error(ref, _outputs(g_k, eval_feeds)) if chosen else 0.0), g_k, rep_k, chosen

        # the fewest float layers that meet the budget: binary search on k (the error shrinks as
        # k grows, near enough; the result is checked, and k = all layers always meets it)
        lo, hi = 0, len(order)
        best = None
        while lo < hi:
            mid = (lo + hi) // 2
            e_mid, g_mid, rep_mid, set_mid = attempt(mid)
            if e_mid <= budget:
                hi, best = mid, (e_mid, g_mid, rep_mid, set_mid)
            else:
                lo = mid + 1
        if best is None:          # only k = all layers is left, which never needs measuring twice
            best = attempt(lo)
        # the error is not monotonic in k (a float layer changes which values its neighbours
        # round): give each float unit, least sensitive first, another try at int8 and keep it
        # there if the budget still holds
        float_units = list(order[:lo])
        chosen_units = list(order[lo:])
        for name in _progress(float_units[::-1][:REFINE_TRIES], progress,
                              min(len(float_units), REFINE_TRIES), "refine"):
            trial = set().union(*(members.get(n, {n}) for n in chosen_units + [name]))
            g_t, rep_t = build_quantized(graph, candidates, observers, trial, channels)
            e_t = output_error(ref, _outputs(g_t, eval_feeds))
            if e_t <= budget:
                chosen_units.append(name)
                float_units.remove(name)
                best = (e_t, g_t, rep_t, trial)
        return best + (channels, {name: sens[name] for name in float_units})

    # Two searches: every input per tensor, and the layers whose input comes from float reading
    # it per channel (QuantizeU8 channel_scales, folded into their weights). Per channel, a
    # depthwise layer of PP-OCRv4 det quantized alone costs 10-60x less output error, but it
    # also makes each layer alone look harmless where, among int8 neighbours, its input comes
    # per tensor: on PP-OCRv4 cls it is the per-tensor search that keeps fewer layers float. The
    # result that leaves the fewest multiply-adds in float wins (then the lower error).
    results = [search(())]
    channels = {c.name for c in candidates if channel_input_ok(c, observers)}
    if channels and results[0][5]:
        results.append(search(channels))
    macs = {c.name: _macs(c, observers) for c in candidates}
    err, qg, report, chosen, channels, kept = min(
        results, key=lambda r: (sum(macs.get(n, 0) for n in r[5]), r[0]))
    # Bias correction (_pack) on the chosen layers: their weights' rounding shift absorbed by
    # their biases, kept when the model stays within the budget. It runs after the search, not
    # in it: in the search the error it saves is spent on more int8 layers, and on PP-OCRv4 rec
    # the cosine budget then no longer holds the read text (83-88% of lines exact against 92-93%
    # without it); on the layers chosen without it, it raises them to 93-97% (3 x 100 lines).
    # The error on the few evaluation samples cannot say whether it helps: near the budget these
    # OCR models' worst sample moves with any small change (on PP-OCRv4 det, float16 weights in
    # one of the float layers: 0.0095 -> 0.012-0.030, where the float model alone moves 3e-4).
    bias_note = None
    if weights == "int8" and BIAS_CORRECTION:   # (int4: GPTQ / nearest per block, no correction)
        g_bc, rep_bc = build_quantized(graph, candidates, observers, chosen, channels,
                                       bias_correction=True)
        e_bc = output_error(ref, _outputs(g_bc, eval_feeds))
        bias_note = "applied" if e_bc <= budget else f"not applied (error {e_bc:.3g} over the budget)"
        if e_bc <= budget:
            err, qg, report = e_bc, g_bc, rep_bc
    if kept:
        nodes = {n.name: n for n in graph.nodes}
        for name, e in kept.items():
            node = nodes[name]
            report.append({"layer": name, "op": node.op, "precision": "float32",
                           "reason": f"sensitive: quantized alone it costs {e:.2e} of the output "
                                     f"error budget {budget:g} (1 - cosine)"})
    for name, why in unfit.items():
        node = next(n for n in graph.nodes if n.name == name)
        report.append({"layer": name, "op": node.op, "precision": "float32",
                       "reason": f"cannot be quantized with this calibration: {why}"})
    for e in exclude:
        node = next(n for n in graph.nodes if n.name == e)
        report.append({"layer": e, "op": node.op, "precision": "float32", "reason": "excluded by the user"})
    qg, err = _small_constants(qg, ref, eval_feeds, budget, err,
                               "int4" if weights == "int4" else "int8", group_size)
    qg.metadata["precision_report"] = report
    qg.metadata["quantization"].update({"method": method, "max_error": budget, "output_error": err,
                                        "calibration_samples": len(feeds)})
    if bias_note is not None:
        qg.metadata["quantization"]["bias_correction"] = bias_note
    if weights == "int4":
        qg.metadata["quantization"].update(_int4_summary(report, group_size, rounding))
    return qg


def quantize_dynamic(graph, exclude=(), candidates=None):
    """Gemm / MatMul -> DynQGemm (int8 weights, activations quantized per call), or DynQ4Gemm for
    the ``candidates`` (default: every Gemm / MatMul) that carry ``int4`` weights."""
    g = graph.copy()
    if candidates is None:
        candidates = find_candidates(graph, exclude)
    cands = {c.name: c for c in candidates if c.kind == "gemm"}
    absorbed = {a.name for c in cands.values() for a in c.absorbed}
    nodes, report = [], []
    for n in graph.nodes:
        if n.name in absorbed:
            continue
        c = cands.get(n.name)
        if c is None:
            nodes.append(n)
            continue
        if getattr(c, "int4", None) is not None:
            nodes.append(_dynamic_int4_node(g, c))
            report.append({"layer": c.name, "op": n.op, "precision": "int4-dynamic",
                           "reason": c.note + ", activations quantized per call"})
            continue
        wq, s_w = qp.quantize_weight_per_channel(c.weight, axis=1)
        packed = qref.pack_gemm_qc8w(wq, None, DYNAMIC_ZP)
        pname, sname = f"{c.name}__packed_w", f"{c.name}__w_scale"
        g.initializers[pname] = packed
        g.initializers[sname] = np.asarray(s_w, np.float32)
        ins = [c.x, pname, sname]
        if c.bias is not None:
            bname = f"{c.name}__bias"
            g.initializers[bname] = np.ascontiguousarray(c.bias, np.float32)
            ins.append(bname)
        nodes.append(Node("DynQGemm", tuple(ins), (c.y,),
                          {"activation": c.act[0], "alpha": c.act[1], "beta": c.act[2]}, c.name, "qinfer"))
        report.append({"layer": c.name, "op": n.op, "precision": "int8-dynamic",
                       "reason": getattr(c, "note", None) or "int8 weights, activations quantized per call"})
    g.nodes = nodes
    g.metadata["precision_report"] = report
    g.metadata["quantization"] = {"weights": "int8", "activations": "dynamic"}
    return g.remove_unused()


# ----------------------------------------------------------------------------- int4 weights
class Int4Weights:
    """A layer's int4 weights: ``q`` in the packers' layout (GEMM [K, N], conv ONNX), ``scales``
    [N, nblk], and the layer's output SQNR (dB) on its calibration inputs with these weights, with
    round-to-nearest ones and with int8 ones (None without calibration data)."""

    def __init__(self, q, scales, block, rounding, sqnr=None, sqnr_rtn=None, sqnr_int8=None):
        self.q, self.scales, self.block, self.rounding = q, scales, block, rounding
        self.sqnr, self.sqnr_rtn, self.sqnr_int8 = sqnr, sqnr_rtn, sqnr_int8
        self._packed = {}

    def describe(self):
        text = f"int4 weights ({self.rounding}, block {self.block})"
        if self.sqnr is None:
            return text + "; not checked against an output budget (no calibration data)"
        text += f", layer SQNR {self.sqnr:.1f} dB"
        if self.rounding == "gptq":
            text += f" (round-to-nearest {self.sqnr_rtn:.1f} dB)"
        return text + f"; int8 would give {self.sqnr_int8:.1f} dB"

    def packed(self, c, bias, zp_x):
        """The packed bytes for this layer with ``bias`` (accumulator units) and ``zp_x``."""
        key = (None if bias is None else bias.tobytes(), zp_x)
        if key not in self._packed:
            if c.kind == "gemm":
                self._packed[key] = qref4.pack_gemm_qb4w(self.q, self.scales, self.block, bias, zp_x)
            else:
                self._packed[key] = qref4.pack_conv_qb4w(self.q, self.scales, self.block, bias, zp_x,
                                                         int(c.node.attrs.get("group", 1)))
        return self._packed[key]


def _pack_int4(c, s_x, zp_x):
    """The int4 counterpart of _pack: packed weights (bias / s_x and zp_x folded into the offset)
    and the per-call scale, s_x for every channel."""
    bias = None if c.bias is None else np.asarray(c.bias, np.float64) / np.float64(s_x)
    packed = c.int4.packed(c, bias, zp_x)
    return packed, np.full(c.int4.scales.shape[0], s_x, np.float32), None


def _dynamic_int4_node(g, c):
    """DynQ4Gemm(x, packed int4 weights folded for the dynamic zero point[, float bias])."""
    pname = f"{c.name}__packed_w"
    g.initializers[pname] = c.int4.packed(c, None, DYNAMIC_ZP)
    ins = [c.x, pname]
    if c.bias is not None:
        g.initializers[f"{c.name}__bias"] = np.ascontiguousarray(c.bias, np.float32)
        ins.append(f"{c.name}__bias")
    return Node("DynQ4Gemm", tuple(ins), (c.y,),
                {"activation": c.act[0], "alpha": c.act[1], "beta": c.act[2]}, c.name, "qinfer")


def _weight_rows(c):
    """A candidate's weight as [N, K] matrices in the kernels' reduction order, one per conv group."""
    if c.kind == "gemm":
        return [np.asarray(c.weight, np.float64).T]
    groups = int(c.node.attrs.get("group", 1))
    m = qref4.conv_matrix(np.asarray(c.weight, np.float64))
    ng = m.shape[0] // groups
    return [m[g * ng:(g + 1) * ng] for g in range(groups)]


def _layer_stats(graph, cands, feeds, progress):
    """{layer: gptq.LayerStats}: X^T X of every candidate's input, one float run per sample."""
    stats = {}
    for c in cands:
        if c.kind == "gemm":
            stats[c.name] = gptq.LayerStats(c.weight.shape[0])
        else:
            geo = _conv_geometry(c.node.attrs, c.weight)
            stats[c.name] = gptq.LayerStats(
                int(np.prod(c.weight.shape[1:])),
                (int(c.node.attrs.get("group", 1)), tuple(c.weight.shape[2:]), geo["strides"],
                 geo["pads"], geo["dilations"]))
    wanted = sorted({c.x for c in cands})
    for f in _progress(feeds, progress, len(feeds), "int4 statistics"):
        vals = run_graph(graph, f, outputs=wanted)
        for c in cands:
            stats[c.name].update(vals[c.x])
    return stats


def _int4_weights(c, stats, block, rounding, pruned=False):
    """Int4Weights of a candidate: every conv group rounded on its own statistics. ``pruned``: the
    layer's zero weights were set by qinfer.prune and GPTQ keeps them zero (rounding to nearest
    maps 0 to 0 by itself)."""
    rows = _weight_rows(c)
    axis = 1 if c.kind == "gemm" else 0
    w8, s8 = qp.quantize_weight_per_channel(c.weight, axis=axis)
    c8 = copy.copy(c)
    c8.weight = qp.dequantize(w8, s8, axis=axis).astype(np.float64)
    rows8 = _weight_rows(c8)
    qs, ss, energy = [], [], np.zeros(4)   # signal, int4 noise, round-to-nearest noise, int8 noise
    for g, w in enumerate(rows):
        q_rtn, s_rtn = gptq.quantize_rtn(w, block)
        G = None if stats is None else stats.gram(g)
        q, s = (q_rtn, s_rtn) if G is None or rounding != "gptq" else gptq.quantize_gptq(
            w, G, block, keep_zero=(w == 0) if pruned else None)
        qs.append(q)
        ss.append(s)
        if G is not None:
            energy += [gptq.energy(w, G), gptq.energy(w - gptq.dequantize(q, s, block), G),
                       gptq.energy(w - gptq.dequantize(q_rtn, s_rtn, block), G),
                       gptq.energy(w - rows8[g], G)]
    q = np.concatenate(qs)
    if c.kind == "gemm":
        q = q.T
    else:
        cout, cin_g, kh, kw = c.weight.shape
        q = q.reshape(cout, kh, kw, cin_g).transpose(0, 3, 1, 2)
    sq = [None] * 3 if stats is None else [gptq.to_db(energy[0], e) for e in energy[1:]]
    return Int4Weights(np.ascontiguousarray(q, np.int8), np.concatenate(ss), block, rounding, *sq)


def _fewest(n, ok):
    """The smallest k in 0..n with ok(k), by bisection (ok taken as monotone in k; n if none)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def _plan_int4(graph, candidates, feeds, eval_feeds, ref, block, rounding, budget, build, progress):
    """The candidates, with ``int4`` weights on the Gemm / MatMul / Conv layers that take them and a
    ``note`` (the report's reason) on every layer. ``build(candidates)`` makes the quantized graph.
    With evaluation samples, layers leave int4 for int8, those whose int4 weights cost the model's
    output the most first (each measured alone), until the output error is within ``budget``."""
    eligible = [c for c in candidates if c.kind in ("gemm", "conv")]
    stats = _layer_stats(graph, eligible, feeds, progress) if feeds else {}
    pruned = pruned_layers(graph)
    w4 = {c.name: _int4_weights(c, stats.get(c.name), block, rounding, c.name in pruned)
          for c in _progress(eligible, progress, len(eligible), f"int4 {rounding}")}
    notes = {c.name: "kept int8: depthwise convolutions have no int4 kernel (K = kh*kw per channel)"
             for c in candidates if c.kind == "dw"}

    def assign(four):
        out = []
        for c in candidates:
            if c.name in four or c.name in notes:
                c = copy.copy(c)
                c.int4 = w4[c.name] if c.name in four else None
                c.note = w4[c.name].describe() if c.name in four else notes[c.name]
            out.append(c)
        return out

    names = list(w4)
    if not eval_feeds or not names:
        return assign(set(names))

    def error(four):
        return output_error(ref, _outputs(build(assign(set(four))), eval_feeds))

    if error(names) <= budget:
        return assign(set(names))
    base = error([])
    cost = {n: error([n]) - base for n in _progress(names, progress, len(names), "int4 sensitivity")}
    order = sorted(names, key=lambda n: -cost[n])
    k = _fewest(len(order), lambda k: error(order[k:]) <= budget)
    for n in order[:k]:
        notes[n] = (f"kept int8: int4 weights would cost {max(cost[n], 0.0):.2e} of the output error "
                    f"budget {budget:g} (1 - cosine) on their own; {w4[n].describe()}")
    return assign(set(order[k:]))


def _int4_summary(report, group_size, rounding):
    """The int4 part of metadata["quantization"]."""
    four = sum(r["precision"].startswith("int4") for r in report)
    return {"weights": "int4", "group_size": int(group_size), "rounding": rounding,
            "int4_layers": four, "int8_layers": sum(r["precision"].startswith("int8") for r in report)}


def _quantize_dynamic_int4(graph, calibration, block, rounding, max_error, exclude, progress):
    """Dynamic activations with int4 weights (DynQ4Gemm). Calibration data are optional: they feed
    GPTQ (which needs them) and the output-error check of ``_plan_int4``."""
    feeds = [] if calibration is None else list(iter_calibration(calibration, graph.input_names))
    if rounding == "gptq" and not feeds:
        raise errors.CalibrationError("rounding='gptq' needs calibration data (each layer's inputs "
                                      "decide how its weights round)")
    budget = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
    if not budget > 0:
        raise errors.QinferError(f"max_error must be > 0, got {max_error!r}")
    cands = [c for c in find_candidates(graph, exclude) if c.kind == "gemm"]
    eval_feeds = feeds[:EVAL_SAMPLES]
    ref = _outputs(graph, eval_feeds) if eval_feeds else None
    chosen = _plan_int4(graph, cands, feeds, eval_feeds, ref, block, rounding, budget,
                        lambda cs: quantize_dynamic(graph, exclude, cs), progress)
    g = quantize_dynamic(graph, exclude, chosen)
    info = g.metadata["quantization"]
    info.update(_int4_summary(g.metadata["precision_report"], block, rounding))
    if eval_feeds:
        g, err = _small_constants(g, ref, eval_feeds, budget,
                                 output_error(ref, _outputs(g, eval_feeds)), "int4", block)
        g.metadata["quantization"].update(max_error=budget, output_error=err,
                                          calibration_samples=len(feeds))
    return g


__all__ = ["quantize_graph", "quantize_dynamic", "find_candidates", "build_quantized", "output_error"]
