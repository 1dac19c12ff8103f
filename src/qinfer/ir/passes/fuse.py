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
        group = int(conv.attrs.get("group", 1))
        if conv.op == "Conv":
            cout = w.shape[0]
            w2 = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        else:  # ConvTranspose weights: [Cin, Cout/group, k...]
            cin, cog = w.shape[0], w.shape[1]
            cout = cog * group
            wg = w.astype(np.float64).reshape((group, cin // group, cog) + w.shape[2:])
            wg = wg * s.reshape((group, 1, cog) + (1,) * (w.ndim - 2))
            w2 = wg.reshape(w.shape)
        if s.shape[0] != cout:
            continue
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
