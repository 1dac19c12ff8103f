"""Fusions on the float graph: BatchNormalization folded into the preceding Conv / ConvTranspose.

y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is a conv with weights scaled per output channel
and a new bias; the fold is exact up to float rounding and removes a whole pass over the activation.
"""
import numpy as np


def _bn_params(g, n):
    names = n.inputs[1:5]
    if len(names) < 4 or not all(x in g.initializers for x in names):
        return None
    if n.attrs.get("training_mode", 0):
        return None
    scale, bias, mean, var = (g.initializers[x].astype(np.float64) for x in names)
    eps = float(n.attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _out_channels(conv, w):
    """Output channels of a Conv (weights [Cout, Cin/group, k...]) or a ConvTranspose (weights
    [Cin, Cout/group, k...]); None for weights the op itself will refuse."""
    group = int(conv.attrs.get("group", 1))
    if w.ndim < 3 or group < 1 or w.shape[0] % group:
        return None
    return w.shape[0] if conv.op == "Conv" else w.shape[1] * group


def _scale_out_channels(conv, w, s):
    """``w`` (float64) with each output channel's weights multiplied by ``s[channel]``."""
    if conv.op == "Conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    group = int(conv.attrs.get("group", 1))
    cin, cog = w.shape[0], w.shape[1]
    wg = w.reshape((group, cin // group, cog) + w.shape[2:])
    return (wg * s.reshape((group, 1, cog) + (1,) * (w.ndim - 2))).reshape(w.shape)


def fold_batchnorm(graph):
    g = graph.copy()
    producers = g.producers()
    consumers = g.consumers()
    outputs = set(g.output_names)
    replaced = {}   # conv node name -> new conv node
    dropped = set()
    for n in g.nodes:
        if n.op != "BatchNormalization" or len([o for o in n.outputs if o]) != 1:
            continue
        conv = producers.get(n.inputs[0])
        if conv is None or conv.op not in ("Conv", "ConvTranspose") or conv.name in replaced:
            continue
        if len(consumers.get(n.inputs[0], [])) != 1 or n.inputs[0] in outputs:
            continue
        wname = conv.inputs[1]
        if wname not in g.initializers or (len(conv.inputs) > 2 and conv.inputs[2]
                                            and conv.inputs[2] not in g.initializers):
            continue
        w = g.initializers[wname]
        if w.dtype != np.float32:
            continue
        params = _bn_params(g, n)
        if params is None:
            continue
        s, shift = params
        cout = _out_channels(conv, w)
        if cout is None or s.shape[0] != cout:
            continue
        w2 = _scale_out_channels(conv, w.astype(np.float64), s)
        b = (g.initializers[conv.inputs[2]].astype(np.float64)
             if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(cout))
        b2 = b * s + shift
        new_w, new_b = f"{wname}__bnfold_{n.name}", f"{conv.name}__bias_bnfold"
        g.initializers[new_w] = w2.astype(np.float32)
        g.initializers[new_b] = b2.astype(np.float32)
        replaced[conv.name] = conv.replace(inputs=(conv.inputs[0], new_w, new_b), outputs=(n.outputs[0],))
        dropped.add(n.name)
    if not replaced:
        return graph
    g.nodes = [replaced.get(n.name, n) for n in g.nodes if n.name not in dropped]
    return g.remove_unused()


# ----------------------------------------------------------------------------- affine folding
def _scalar_or_channel(arr, cout, rank):
    """The constant as a per-output-channel vector [cout] if it broadcasts that way over a conv output
    of rank ``rank`` (N, C, spatial...), else None."""
    a = np.asarray(arr)
    if a.size == 1:
        return np.full(cout, float(a.reshape(-1)[0]))
    if a.ndim > rank:
        return None
    shape = (1,) * (rank - a.ndim) + a.shape
    if shape[0] != 1 or shape[1] != cout or any(d != 1 for d in shape[2:]):
        return None
    return a.reshape(cout).astype(np.float64)


def fold_affine_into_conv(graph):
    """Conv / ConvTranspose followed by Mul / Div / Add / Sub with a per-channel or scalar constant
    -> one Conv / ConvTranspose.

    Exports often spell BatchNorm or a learnable affine as separate Mul and Add nodes (Paddle's
    PP-LCNet, TF's fused BN split by converters); folding them removes full passes over the output.
    """
    g = graph.copy()
    changed = True
    while changed:
        changed = False
        producers = g.producers()
        consumers = g.consumers()
        outputs = set(g.output_names)
        for idx, n in enumerate(g.nodes):
            if n.op not in ("Mul", "Div", "Add", "Sub") or len(n.inputs) != 2:
                continue
            const_pos = [k for k, i in enumerate(n.inputs) if i in g.initializers]
            if len(const_pos) != 1:
                continue
            k = const_pos[0]
            if n.op in ("Div", "Sub") and k != 1:
                continue
            x = n.inputs[1 - k]
            conv = producers.get(x)
            if (conv is None or conv.op not in ("Conv", "ConvTranspose") or x in outputs
                    or len(consumers.get(x, [])) != 1):
                continue
            wname = conv.inputs[1]
            w = g.initializers.get(wname)
            bname = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2] else None
            if w is None or w.dtype != np.float32 or (bname and bname not in g.initializers):
                continue
            c = g.initializers[n.inputs[k]]
            if c.dtype != np.float32:
                continue
            cout = _out_channels(conv, w)
            if cout is None:
                continue
            vec = _scalar_or_channel(c, cout, w.ndim)
            if vec is None:
                continue
            # the result must keep the conv output's shape (a constant of higher rank would broadcast)
            if c.ndim > w.ndim:
                continue
            b = g.initializers[bname].astype(np.float64) if bname else np.zeros(cout)
            w64 = w.astype(np.float64)
            if n.op in ("Mul", "Div"):
                s = vec if n.op == "Mul" else 1.0 / vec
                if not np.all(np.isfinite(s)):
                    continue
                w64 = _scale_out_channels(conv, w64, s)
                b = b * s
            else:
                b = b + (vec if n.op == "Add" else -vec)
            new_w = f"{wname}__affine_{n.name}"
            new_b = f"{conv.name}__bias_affine_{n.name}"
            g.initializers[new_w] = w64.astype(np.float32)
            g.initializers[new_b] = b.astype(np.float32)
            new_conv = conv.replace(inputs=(conv.inputs[0], new_w, new_b), outputs=(n.outputs[0],))
            g.nodes = [new_conv if m is conv else m for m in g.nodes if m is not n]
            changed = True
            break
    return g.remove_unused() if g.nodes != graph.nodes else graph


# ----------------------------------------------------------------------------- HardSwish
def _const_value(g, name):
    a = g.initializers.get(name)
    if a is None or a.size != 1 or a.dtype.kind != "f":
        return None
    return float(a.reshape(-1)[0])


def fuse_hardswish(graph):
    """x * clip(x + 3, 0, 6) / 6  and  x * HardSigmoid(x; 1/6, 1/2)  ->  HardSwish(x).

    (How Paddle, TF and older PyTorch exports spell HardSwish; one pass instead of four.)
    """
    g = graph.copy()
    consumers = g.consumers()
    outputs = set(g.output_names)
    remove = set()
    replace = {}

    def single(name):
        cs = consumers.get(name, [])
        return cs[0] if len(cs) == 1 and name not in outputs else None

    def other(node, name):
        ins = [i for i in node.inputs if i != name]
        return ins[0] if len(ins) == 1 else (name if list(node.inputs) == [name, name] else None)

    for n in g.nodes:
        if n.name in remove:
            continue
        # form 1: Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) | Mul(., 1/6)
        if n.op == "Add" and len(n.inputs) == 2:
            ks = [i for i in n.inputs if _const_value(g, i) == 3.0]
            if len(ks) != 1:
                continue
            x = other(n, ks[0])
            clip = single(n.outputs[0])
            if x is None or clip is None or clip.op != "Clip" or len(clip.inputs) < 3:
                continue
            if _const_value(g, clip.inputs[1]) != 0.0 or _const_value(g, clip.inputs[2]) != 6.0:
                continue
            mul = single(clip.outputs[0])
            if mul is None or mul.op != "Mul" or sorted(mul.inputs) != sorted([x, clip.outputs[0]]):
                continue
            last = single(mul.outputs[0])
            if last is None:
                continue
            if last.op == "Div" and last.inputs[0] == mul.outputs[0] and _const_value(g, last.inputs[1]) == 6.0:
                pass
            elif last.op == "Mul" and any(abs((_const_value(g, i) or 0) - 1 / 6) < 1e-7 for i in last.inputs):
                pass
            else:
                continue
            replace[last.name] = n.replace(op="HardSwish", inputs=(x,), outputs=last.outputs, attrs={},
                                           name=last.name)
            remove.update({n.name, clip.name, mul.name})
        # form 2: HardSigmoid(x; alpha=1/6, beta=0.5) -> Mul(x, .)
        elif n.op == "HardSigmoid":
            if abs(n.attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(n.attrs.get("beta", 0.5) - 0.5) > 1e-6:
                continue
            x = n.inputs[0]
            mul = single(n.outputs[0])
            if mul is None or mul.op != "Mul" or sorted(mul.inputs) != sorted([x, n.outputs[0]]):
                continue
            replace[mul.name] = n.replace(op="HardSwish", inputs=(x,), outputs=mul.outputs, attrs={},
                                          name=mul.name)
            remove.add(n.name)
    if not replace:
        return graph
    g.nodes = [replace.get(n.name, n) for n in g.nodes if n.name not in remove]
    return g.remove_unused()


# ----------------------------------------------------------------------------- epilogues
#: activation codes of the kernels' fused epilogue (kernels/include/qinfer/common.h), shared by the
#: float and int8 kernels
ACT_CODES = {"Relu": 1, "Clip": 2, "HardSwish": 3, "Sigmoid": 4, "HardSigmoid": 5}
_F32_MAX = 3.4028234663852886e38


def epilogue_activation(node, consts):
    """``(code, a, b)`` when ``node`` is an activation a conv / GEMM epilogue can apply (Clip only
    with constant bounds), else None. Clip: a, b = min, max; HardSigmoid: a, b = alpha, beta."""
    code = ACT_CODES.get(node.op)
    if code is None:
        return None
    if node.op == "Clip":
        lo = node.inputs[1] if len(node.inputs) > 1 else ""
        hi = node.inputs[2] if len(node.inputs) > 2 else ""
        if (lo and lo not in consts) or (hi and hi not in consts):
            return None
        a = float(consts[lo]) if lo else -_F32_MAX
        b = float(consts[hi]) if hi else _F32_MAX
        return (code, a, b)
    if node.op == "HardSigmoid":
        return (code, float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))
    return (code, 0.0, 0.0)


def epilogue_chain(node, consts, consumers, outputs):
    """What a weighted node's fused epilogue can absorb: ``(bias, absorbed nodes, activation)``.

    A MatMul with a constant 2-D weight absorbs a following ``Add`` of a constant ``[N]`` bias
    (PyTorch's Linear on 3-D inputs); then any weighted node absorbs one following activation
    (``epilogue_activation``). Each absorbed node must be the only reader of the value before it,
    which must not be a graph output. ``bias`` is that Add's constant, else None (the node's own
    bias input is the caller's business). Used by the float planner and by the quantizer alike.
    """
    def single(name):
        cs = consumers.get(name, [])
        return cs[0] if len(cs) == 1 and name not in outputs else None

    bias, absorbed = None, []
    last = node.outputs[0]
    w = consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op == "MatMul" and w is not None and w.ndim == 2:
        nxt = single(last)
        if nxt is not None and nxt.op == "Add" and len(nxt.inputs) == 2:
            other = nxt.inputs[1] if nxt.inputs[0] == last else nxt.inputs[0]
            cb = consts.get(other)
            if cb is not None and cb.dtype == np.float32 and cb.shape == (w.shape[1],):
                bias = cb
                absorbed.append(nxt)
                last = nxt.outputs[0]
    act = (0, 0.0, 0.0)
    nxt = single(last)
    if nxt is not None and nxt.inputs and nxt.inputs[0] == last:
        a = epilogue_activation(nxt, consts)
        if a is not None:
            act = a
            absorbed.append(nxt)
    return bias, absorbed, act
