"""From a Graph to something that runs fast: kernel choice, fusion, liveness, per-shape plans.

Design:
- ``Program`` (one per session): every node becomes a step ``(fn, input slots, output slots)``
  with values numbered into slots of a flat list (no dict lookups in the run loop). Heavy float ops
  get the fast kernels of ``float_ops`` and absorb what their epilogue can apply (a MatMul's bias
  Add, one activation: ``ir.passes.fuse.epilogue_chain``, shared with the quantizer; a Conv also
  a following constant Mul / Add, scalars in its epilogue, per channel in place: ``_affine_chain``);
  quantized ops get the int8 kernels (``qops``), a quantized layer also the residual QAdd that
  reads its output (``_residual_add``: each block of the output added while it is in cache, on
  the layer's threads, instead of one more pass); everything else runs its numpy reference op
  (LayerNormalization, Softmax and Erf on float32 run on the C row kernels of ``float_ops``).
  Slots are released after their last reader (liveness), so peak memory follows the live set.
- ``Plan`` (one per input-shape signature, cached): the first run with a new signature executes every
  step and records the values that depend only on shapes and constants (``Shape`` -> ``Gather`` ->
  ``Concat`` -> ``Reshape`` chains); the plan keeps them as constants and drops their steps, so a
  shape-computing subgraph costs nothing after the first call.
"""
import threading

import numpy as np

from .. import reference
from ..errors import (CalibrationError, InvalidInputError, ModelFormatError, QinferError,
                      UnsupportedOperatorError)
from ..ir.ops import SHAPE_ONLY
from ..ir.passes.fuse import epilogue_chain
from ..ir import verify
from ..ir.verify import SIZED_OPS, WINDOWED, output_bytes
from . import float_ops, qops
from .cpu import _kernels

#: the domains of the ops qinfer runs: ONNX's and its own quantized ops
RUNNABLE_DOMAINS = ("", "ai.onnx", "qinfer")
#: ops with fast float32 kernels (constant weights)
FAST_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


#: whether quantized layers run the residual QAdd that reads their output (``_residual_add``);
#: off only to measure what it saves (bench/bench_residual_fusion.py)
FUSE_RESIDUAL = True

#: the most bytes one value may take (ir/verify.py; a name of its own here, which tests lower)
MAX_TENSOR_BYTES = verify.MAX_TENSOR_BYTES


class Step:
    __slots__ = ("node", "fn", "ref", "ins", "outs", "free", "static", "post", "sized", "checked")

    def __init__(self, node, fn, ref, ins, outs, post=None):
        self.node, self.fn, self.ref, self.ins, self.outs = node, fn, ref, ins, outs
        self.post = post      # [(ref fn, node, input slots)] of the absorbed nodes, replayed if fn declines
        self.free = ()
        self.static = False
        self.sized = node.op in SIZED_OPS   # output_bytes checks it before it runs
        # a window op's output size follows its input shapes alone: the last shapes that passed
        self.checked = () if node.op in WINDOWED else None


#: (domain, op) of the ops that decode a stored constant (int8 / int4 rows, quant/constants.py;
#: float16 is a Cast of a float16 constant; packed int8 weights stored compact, quant/storage.py);
#: run once when a program is built, so the layers they feed see plain float32 constants (and
#: take their fast paths) and packed weights
_DECODE_FROM_STORED = frozenset({("", "DequantizeLinear"), ("qinfer", "DequantizeInt4"),
                                 ("qinfer", "PackQC8W")})
#: ops that go on from a decoded value (the original shape, dtype)
_DECODE_THEN = frozenset({"Reshape", "Cast"})


def _decodes(n, consts, done):
    """Whether ``n``, fed only by constants, decodes a stored form or goes on from one that was
    decoded (``done``)."""
    ins = [i for i in n.inputs if i]
    if not ins or not all(i in consts for i in ins):
        return False
    domain = "" if n.domain == "ai.onnx" else n.domain
    if (domain, n.op) in _DECODE_FROM_STORED:
        return True
    return domain == "" and n.op in _DECODE_THEN and (
        ins[0] in done or (n.op == "Cast" and consts[ins[0]].dtype == np.float16))


def _decoded(graph):
    """``graph``, or a copy in which the decode nodes fed only by constants, starting from a stored
    form (DequantizeLinear of int8 rows, DequantizeInt4 of int4 rows, Cast of float16; then
    Reshape / Cast), became initializers."""
    consts, done, keep = dict(graph.initializers), set(), []
    for n in graph.nodes:
        if _decodes(n, consts, done):
            try:
                outs = reference.get(n.op)([consts[i] if i else None for i in n.inputs], n.attrs,
                                           len(n.outputs))
            except QinferError as e:
                raise type(e)(f"node {n.name!r} ({n.op}) decoding stored constants: {e}") from e
            for o, v in zip(n.outputs, outs):
                if o:
                    consts[o] = np.asarray(v)
                    done.add(o)
        else:
            keep.append(n)
    if not done:
        return graph
    g = graph.copy()
    g.nodes, g.initializers = keep, consts
    return g.remove_unused()     # the stored forms the decoded values replaced


def _canonical(a):
    """``a`` with numpy's own instance of its dtype (a view): a constant read from a .qinf file says
    '<f4', an equal but distinct dtype object, and the fast paths test dtypes by identity (a binary
    op with a '<f4' constant declined to the reference op: PP-OCRv4 rec's Mul / Add steps)."""
    if isinstance(a, np.ndarray) and a.dtype.isnative and a.dtype.kind in "biuf":
        canon = np.dtype(a.dtype.type)
        if canon is not a.dtype:
            return a.view(canon)
    return a


class Program:
    def __init__(self, graph, num_threads):
        graph = _decoded(graph)
        self.graph = graph
        self.num_threads = num_threads
        consts = {k: _canonical(v) for k, v in graph.initializers.items()}
        consumers = graph.consumers()
        outputs = set(graph.output_names)
        slots = {}

        def slot(name):
            if name not in slots:
                slots[name] = len(slots)
            return slots[name]

        for v in graph.inputs:
            slot(v.name)
        for name in consts:
            slot(name)
        skip = set()
        steps = []
        made_at = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        for pos, n in enumerate(graph.nodes):
            if id(n) in skip:     # absorbed into a fused step (by identity: names may repeat)
                continue
            ref = reference.get(n.op) if n.domain in RUNNABLE_DOMAINS else None
            if ref is None:
                raise UnsupportedOperatorError(f"node {n.name!r}: op {n.op!r} (domain {n.domain!r}) "
                                               "cannot run", [(n.name, n.op, None, "no implementation")])
            fn, post, out_names, extra = None, None, n.outputs, ()
            fused = (_residual_add(n, pos, consumers, outputs, made_at)
                     if FUSE_RESIDUAL and n.op in qops.RESIDUAL_OPS else None)
            if fused is not None:
                add, other, params = fused
                fn = qops.make_qop(n, consts, num_threads, (len(n.inputs),) + params)
            if fn is not None:   # the add runs in the layer's step, on its other operand
                skip.add(id(add))
                out_names, extra = add.outputs, (slot(other),)
                post = [(reference.get(add.op), add, tuple(slot(i) if i else -1 for i in add.inputs))]
            elif n.op in qops.QOPS:
                fn = qops.make_qop(n, consts, num_threads)
            elif n.op == "MaxPool":
                fn = qops.make_maxpool_f32(n.attrs, num_threads)
            elif n.op == "AveragePool":
                fn = float_ops.make_pool(n.op, n.attrs)
            elif n.op == "Erf" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_erf(num_threads)
            elif n.op == "LayerNormalization" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_layernorm(n.attrs, num_threads)
            elif n.op == "Softmax" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_softmax(n.attrs, num_threads)
            elif n.op in float_ops.BINARY_UFUNCS and n.domain in ("", "ai.onnx") and len(n.inputs) == 2:
                fn = float_ops.make_binary(n.op)
            elif n.op == "Reshape" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_reshape(n, consts)
            elif n.op == "Transpose" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_transpose(n.attrs)
            elif n.op == "Resize" and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_resize(n, consts)
            elif n.op in ("ReduceSum", "ReduceMean") and n.domain in ("", "ai.onnx"):
                fn = float_ops.make_reduce(n, consts)
            if n.op in FAST_OPS and float_ops.is_float32(graph, n):
                fn, absorbed, post = self._fast(n, consts, consumers, outputs, num_threads, slot)
                if absorbed:
                    skip.update(id(a) for a in absorbed)
                    out_names = absorbed[-1].outputs
            ins = tuple(slot(i) if i else -1 for i in n.inputs) + extra
            outs = tuple(slot(o) if o else -1 for o in out_names)
            steps.append(Step(n, fn, ref, ins, outs, post))
        self.steps = steps
        # fast steps that leave floating-point warnings to the run (one errstate per run)
        self.quiet = any(st.fn is not None and st.node.op in float_ops.QUIET_OPS for st in steps)
        self.input_slots = [slots[v.name] for v in graph.inputs]
        self.output_slots = [slot(name) for name in graph.output_names]
        self.slots = slots
        self.num_slots = len(slots)
        self.const_slots = [(slots[k], v) for k, v in consts.items()]
        self._mark_static(consts)
        self._liveness()

    def _fast(self, n, consts, consumers, outputs, num_threads, slot):
        """Fast function for a heavy node, absorbing a following bias Add (MatMul) and activation.

        Returns (fn or None, absorbed nodes, post) where ``post`` replays the absorbed nodes with
        reference ops if the fast function declines at run time.
        """
        w = consts.get(n.inputs[1]) if len(n.inputs) > 1 else None
        third = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
        if w is None or (third is not None and third not in consts):
            return None, [], None
        c = consts.get(third) if third else None
        add_bias, absorbed, act = epilogue_chain(n, consts, consumers, outputs)
        if add_bias is not None:
            c = add_bias

        # a Conv's following constant Mul / Add (its scalar part goes into the kernel's epilogue)
        affine, post_ = (_affine_chain(n, w, absorbed, consts, consumers, outputs) if n.op == "Conv"
                         else ([], (None, None)))

        def build(act_, post=(None, None)):
            if n.op == "Conv":
                return float_ops.make_conv(n.attrs, w, c, act_, num_threads, post)
            if n.op == "ConvTranspose":
                return float_ops.make_conv_transpose(n.attrs, w, c, act_, num_threads)
            if n.op == "Gemm":
                return float_ops.make_gemm(n.attrs, w, c, act_, num_threads)
            return float_ops.make_matmul(w, c.reshape(-1) if c is not None else None, act_, num_threads)

        fn = build(act, post_)
        if fn is None and absorbed and act[0]:
            absorbed, affine = absorbed[:-1], []    # (the affine follows the activation)
            fn = build(float_ops.NO_ACT)
        if fn is None:
            return None, [], None
        if affine:
            in_epilogue = any(p is not None for p in post_)   # all scalars; else all in place
            fn = _in_place_affine(fn, [] if in_epilogue else [(a.op, ac) for a, ac in affine])
            absorbed = absorbed + [a for a, _ in affine]
        post = [(reference.get(a.op), a, tuple(slot(i) if i else -1 for i in a.inputs)) for a in absorbed]
        return fn, absorbed, post

    def _mark_static(self, consts):
        known = {self.slots[k] for k in consts}
        for s in self.steps:
            if s.node.op in SHAPE_ONLY or all(i < 0 or i in known for i in s.ins):
                s.static = True
                known.update(o for o in s.outs if o >= 0)

    def _liveness(self):
        keep = set(self.output_slots) | {i for i, _ in self.const_slots} | set(self.input_slots)
        last = {}
        for idx, s in enumerate(self.steps):
            for i in s.ins + tuple(j for p in (s.post or ()) for j in p[2]):
                if i >= 0:
                    last[i] = idx
            for o in s.outs:   # outputs never read are freed right after their step
                if o >= 0:
                    last.setdefault(o, idx)
        frees = [[] for _ in self.steps]
        for sl, idx in last.items():
            if sl not in keep:
                frees[idx].append(sl)
        for s, f in zip(self.steps, frees):
            s.free = tuple(f)


def _residual_add(n, pos, consumers, outputs, made_at):
    """The QAdd that quantized layer ``n`` (at ``pos`` in the node order) can run in its own step:
    the only reader of n's single output (which is not a graph output), an add of two different
    values whose other operand is ready before n runs (a graph input, a constant, or made by an
    earlier node). The layer's kernel then adds each block of its output while the block is in
    cache, on its own threads (QLayerCall's ``residual``). Returns (the QAdd node, its other
    operand, ``qops.residual_params``), or None when there is none."""
    outs = [o for o in n.outputs if o]
    if len(outs) != 1 or outs[0] != n.outputs[0] or outs[0] in outputs:
        return None
    readers = consumers.get(outs[0], [])
    if len(readers) != 1:
        return None
    add = readers[0]
    if (add.op != "QAdd" or add.domain != "qinfer" or len(add.inputs) != 2
            or add.inputs.count(outs[0]) != 1 or not all(add.inputs)):
        return None
    other = add.inputs[0] if add.inputs[1] == outs[0] else add.inputs[1]
    params = qops.residual_params(n, add)
    if made_at.get(other, -1) >= pos or params is None:
        return None
    return add, other, params


def _affine_const(node, last, consts, w):
    """The constant of a Mul / Add reading ``last`` that scales / shifts a conv's output per
    channel or as a whole without changing its shape (a size-1 constant, or [C, 1, ...] with
    leading 1s, of rank <= the output's): float32, or None"""
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2 or last not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] == last else node.inputs[0]
    c = consts.get(other)
    if c is None or other == last or c.dtype != np.float32 or c.ndim > w.ndim:
        return None
    per_channel = (w.shape[0],) + (1,) * (w.ndim - 2)
    tail = c.shape[max(0, c.ndim - len(per_channel)):]
    if c.size == 1 or (tail == per_channel and c.size == w.shape[0]):
        return c
    return None


def _affine_chain(n, w, absorbed, consts, consumers, outputs):
    """What a float Conv step absorbs after its activation: a following Mul by a constant and / or
    Add of a constant, scalar or per channel (the learnable affine of PP-LCNetV3-style blocks,
    y = a * act(conv) + b), each value read by that one node and not a graph output. Returns
    ([(node, constant)], (scale, shift)): the scalars, or None, for the kernel's epilogue (a
    multiply, then an add, rounded apart as the two nodes would be)."""
    last = (absorbed[-1] if absorbed else n).outputs[0]
    chain = []
    for want in ("Mul", "Add"):
        cs = consumers.get(last, [])
        if len(cs) != 1 or last in outputs or cs[0].op != want:
            continue
        c = _affine_const(cs[0], last, consts, w)
        if c is None:
            break
        chain.append((cs[0], c))
        last = cs[0].outputs[0]
    if chain and all(c.size == 1 for _, c in chain):
        scalars = {a.op: c.reshape(()) for a, c in chain}
        return chain, (scalars.get("Mul"), scalars.get("Add"))
    return chain, (None, None)


def _in_place_affine(fn, ops):
    """``fn`` followed by per-channel ``ops`` ([("Mul" | "Add", constant)]) in place on its fresh
    output (the reference's a * y, y + b per element: both commute); ``fn`` itself without any"""
    if not ops:
        return fn

    def conv_affine(inputs, attrs, n_out):
        r = fn(inputs, attrs, n_out)
        if r is not None:
            for op, c in ops:
                (np.multiply if op == "Mul" else np.add)(r[0], c, out=r[0])
        return r
    return conv_affine


#: a step's input shapes, as its size check keeps them (shared with the compiled run loop)
_shapes = _kernels.arg_shapes


def _check_size(step, args):
    shapes = None
    if step.checked is not None:
        shapes = _shapes(args)
        if shapes == step.checked:
            return
    size = output_bytes(step.node, args)
    if size is not None and size > MAX_TENSOR_BYTES:
        raise InvalidInputError(
            f"node {step.node.name!r} ({step.node.op}) would make an output of up to {size:.4g} "
            f"bytes from input shapes {[None if a is None else np.shape(a) for a in args]}: more "
            f"than one value may take ({MAX_TENSOR_BYTES:.4g} bytes, half of this machine's memory)")
    if shapes is not None:
        step.checked = shapes     # (threads may race here: the worst is one more check)


def _execute(step, env, declined=False):
    """``step``'s outputs: its fast path, or the reference op where there is none, where it
    declines, or where it has already declined (``declined``: the run loop tried it)."""
    args = [env[i] if i >= 0 else None for i in step.ins]
    if step.sized:
        _check_size(step, args)
    outs = None
    if step.fn is not None and not declined:
        outs = step.fn(args, step.node.attrs, len(step.outs))
    if outs is None:
        # (a step that fused a residual add reads its other operand after the node's own inputs)
        outs = step.ref(args[:len(step.node.inputs)], step.node.attrs, len(step.node.outputs))
        prev = step.node.outputs[0]
        for ref, node, ins in step.post or ():   # the fast path declined: replay the absorbed nodes
            args = [outs[0] if name == prev else (env[i] if i >= 0 else None)
                    for name, i in zip(node.inputs, ins)]
            outs = ref(args, node.attrs, 1)
            prev = node.outputs[0]
    return outs


#: plans kept per session (one per input-shape signature); the oldest is dropped beyond this
MAX_PLANS = 64


class Plan:
    """Steps to run for one input-shape signature, with shape-only values precomputed."""

    def __init__(self, program, env_template, steps):
        self.program = program
        self.env_template = env_template
        self.steps = steps


class Executor:
    def __init__(self, program):
        self.program = program
        self._plans = {}
        self._lock = threading.Lock()
        base = [None] * program.num_slots
        for sl, arr in program.const_slots:
            base[sl] = arr
        self._base_env = base

    def run(self, feeds_by_slot, signature):
        plan = self._plans.get(signature)
        if plan is None:
            return self._first_run(feeds_by_slot, signature)
        env = list(plan.env_template)
        for sl, arr in feeds_by_slot:
            env[sl] = arr
        # the common case (a fast path that takes its inputs, sizes already checked) runs in the
        # compiled loop: the bookkeeping of _execute_checked, or even an interpreted loop, costs a
        # small model about 10% of its run. A fast path that declines or raises goes the checked
        # way (ops are pure: running one again gives the same outputs, or the error named with its
        # node)
        if self.program.quiet:
            with np.errstate(all="ignore"):
                _kernels.run_steps(env, plan.steps, _execute_checked)
        else:
            _kernels.run_steps(env, plan.steps, _execute_checked)
        return [env[o] for o in self.program.output_slots]

    def _first_run(self, feeds_by_slot, signature):
        with np.errstate(all="ignore"):   # (the quiet fast steps run here too)
            return self._first_run_steps(feeds_by_slot, signature)

    def _first_run_steps(self, feeds_by_slot, signature):
        env = list(self._base_env)
        for sl, arr in feeds_by_slot:
            env[sl] = arr
        static_vals = {}
        dynamic_steps = []
        for step in self.program.steps:
            outs = _execute_checked(step, env)
            for o, val in zip(step.outs, outs):
                if o >= 0:
                    val = np.asarray(val)
                    env[o] = val
                    if step.static:
                        static_vals[o] = val
            if not step.static:
                dynamic_steps.append(step)
            for f in step.free:
                if f not in static_vals:
                    env[f] = None
        template = list(self._base_env)
        for o, v in static_vals.items():
            template[o] = v
        # steps now fed by constants still free their non-static inputs; static slots stay alive
        with self._lock:
            if len(self._plans) >= MAX_PLANS:   # bounded: a service fed ever-new shapes must not grow
                self._plans.pop(next(iter(self._plans)))
            self._plans[signature] = Plan(self.program, template, dynamic_steps)
        return [env[o] for o in self.program.output_slots]


def _input_shapes(step, env):
    return [None if i < 0 or env[i] is None else tuple(np.shape(env[i])) for i in step.ins]


def _execute_checked(step, env, declined=False):
    try:
        outs = _execute(step, env, declined)
    except InvalidInputError:
        raise
    except UnsupportedOperatorError as e:
        # the node was accepted at import: failing now depends on the input shapes or values
        raise InvalidInputError(f"node {step.node.name!r} ({step.node.op}) cannot run on input shapes "
                                f"{_input_shapes(step, env)}: {e}") from None
    except (ModelFormatError, CalibrationError):
        raise
    except (QinferError, ValueError, IndexError, ZeroDivisionError, OverflowError, MemoryError,
            TypeError, AttributeError) as e:
        # (a kernel's own error class, such as the sparse kernels' SparseKernelError, and numpy's
        # complaints about values a hostile file chose (a float pad width, a missing input)
        # included: a run that fails names the node and the input shapes, as an InvalidInputError)
        raise InvalidInputError(f"node {step.node.name!r} ({step.node.op}) failed on input shapes "
                                f"{_input_shapes(step, env)}: {e}") from None
    return [np.asarray(v) for v in outs]
