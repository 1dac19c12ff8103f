"""int4 weights end to end, one run: qinfer int4 against onnxruntime's int4 (MatMulNBits) and fp32
on the digits MLP (784-1024-1024-10) and the small transformer, batch 1, with file sizes.

onnxruntime's int4 model is built in this run with ``onnxruntime.quantization.
matmul_nbits_quantizer.MatMulNBitsQuantizer`` (4 bits, symmetric, block 64 as qinfer's default,
default accuracy level); its quantizer takes MatMul only, so each Gemm with constant weights is
first rewritten as the equivalent MatMul (+ Add) -- what a user of it does. qinfer int4 is built
with ``qinfer.quantize(weights="int4", rounding=...)`` on calibration samples, static int8
activations (the MLP's layers then pass uint8 between them) and, for the transformer, dynamic
ones too. All engines run interleaved (the order rotates every round) in this process; the script
prints median / p90 latency, the ratio of each to qinfer int4, the files' sizes against the
float ONNX, and every int4 model's worst output cosine against float on held-out inputs.

    python bench/bench_int4.py                         # both models, 1 thread
    python bench/bench_int4.py --threads 1,2 --rounds 40 --models mlp
"""
import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402


def gemm_as_matmul(model):
    """A copy of an ONNX model with each Gemm of constant weights (alpha = beta = 1, no transA)
    rewritten as MatMul (+ Add of the bias): MatMulNBitsQuantizer quantizes MatMul only."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or a.get("transA", 0)
                or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = np.ascontiguousarray(w.T if a.get("transB", 0) else w)
        m.graph.initializer.append(numpy_helper.from_array(w, n.input[1] + "__kn"))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "__mm" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1] + "__kn"], [mm_out],
                                      name=n.name + "__matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]],
                                          name=n.name + "__bias"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def ort_int4(path, block):
    """onnxruntime's MatMulNBits int4 model of the ONNX file (serialized bytes)."""
    import onnx
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:   # it imports onnx_ir, which onnxruntime does not depend on
        raise SystemExit(f"onnxruntime's MatMulNBits quantizer cannot be imported ({e}); "
                         "pip install onnx_ir") from None
    logging.disable(logging.INFO)   # the quantizer logs a line per node
    q = MatMulNBitsQuantizer(gemm_as_matmul(onnx.load(path)), bits=4, block_size=block,
                             is_symmetric=True)
    q.process()
    logging.disable(logging.NOTSET)
    proto = getattr(q.model, "model", q.model)
    return proto.SerializeToString()


def ort_session(model, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def interleaved(runs, rounds, per_round):
    """{name: per-call times}: every round runs each engine ``per_round`` times, order rotating."""
    names = list(runs)
    for f in runs.values():   # warm-up
        for _ in range(10):
            f()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            f = runs[n]
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - t0)
    return times


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def setup(name, rounding, block):
    """(onnx path, input name, calibration feeds, held-out feeds, {variant: qinfer Model})."""
    rng = np.random.default_rng(0)
    if name == "mlp":
        d = models.digits_mlp()
        calib = models.digits_28(models.digits_split()[0][:128])
        test = [d.x_test[i:i + 1] for i in range(32)]
        path, inp = d.path, "input"
        variants = {"int4": dict(activations="int8")}
    else:
        path, inp = models.transformer(), "x"
        calib = [models.transformer_input(rng, 1, 16) for _ in range(32)]
        test = [models.transformer_input(rng, 1, 16) for _ in range(16)]
        variants = {"int4": dict(activations="int8"), "int4-dyn": dict(activations="dynamic")}
    m = qinfer.convert(path)
    built = {k: qinfer.quantize(m, calib, weights="int4", rounding=rounding, group_size=block,
                                progress=False, **kw) for k, kw in variants.items()}
    return path, inp, test, m, built


def run_model(name, args, out_dir):
    path, inp, test, fmodel, built = setup(name, args.rounding, args.block)
    onnx_size = os.path.getsize(path)
    nbits = ort_int4(path, args.block)
    sizes = {"onnx fp32": onnx_size, "ort int4": len(nbits)}
    for k, q in built.items():
        p = os.path.join(out_dir, f"{name}-{k}.qinf")
        q.save(p)
        sizes[f"qinfer {k}"] = os.path.getsize(p)
    print(f"\n== {name}: {os.path.basename(path)}, batch 1, int4 block {args.block}, qinfer rounding "
          f"{args.rounding}")
    print("  files: " + ", ".join(f"{k} {v:,} B ({v / onnx_size:.3f}x)" for k, v in sizes.items()))
    ref = qinfer.InferenceSession(fmodel, num_threads=1)
    onx = ort_session(nbits, 1)
    for k, q in built.items():
        sess = qinfer.InferenceSession(q, num_threads=1)
        worst = min(_cos(a, b) for x in test for a, b in zip(ref.run(None, {inp: x}),
                                                             sess.run(None, {inp: x})))
        print(f"  qinfer {k}: worst output cosine vs float {worst:.5f}; "
              f"{q.graph.metadata['quantization'].get('int4_layers')} int4 layers, "
              f"{q.graph.metadata['quantization'].get('int8_layers')} int8")
    worst = min(_cos(a, b) for x in test for a, b in zip(ref.run(None, {inp: x}), onx.run(None, {inp: x})))
    print(f"  ort int4: worst output cosine vs float {worst:.5f}")
    x = {inp: test[0]}
    rows = {}
    for nt in args.threads:
        runs = {f"qinfer {k}": (lambda s=qinfer.InferenceSession(q, num_threads=nt): s.run(None, x))
                for k, q in built.items()}
        runs["ort int4"] = lambda s=ort_session(nbits, nt): s.run(None, x)
        runs["ort fp32"] = lambda s=ort_session(path, nt): s.run(None, x)
        times = interleaved(runs, args.rounds, args.per_round)
        base = np.median(times["qinfer int4"])
        print(f"  {nt} thread(s), load average {os.getloadavg()[0]:.2f}:")
        for k, t in times.items():
            med, p90 = np.median(t), np.percentile(t, 90)
            print(f"    {k:<16} p50 {med * 1e6:9.1f} us  p90 {p90 * 1e6:9.1f} us  "
                  f"{med / base:6.2f}x qinfer int4's time")
        rows[nt] = {k: float(np.median(t)) for k, t in times.items()}
    return sizes, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp,transformer", help="comma list: mlp,transformer")
    ap.add_argument("--threads", default="1", help="comma list of thread counts")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--rounding", default="gptq", choices=["nearest", "gptq"])
    ap.add_argument("--block", type=int, default=64, choices=[32, 64, 128])
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    print(f"qinfer {qinfer.__version__}; load average {os.getloadavg()[0]:.2f} (2 cores: rerun when "
          f"another process holds one)")
    verdicts = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name in args.models.split(","):
            sizes, rows = run_model(name, args, out_dir)
            ratio = sizes["qinfer int4"] / sizes["onnx fp32"]
            verdicts.append((ratio <= 0.17, f"{name} int4 .qinf <= 0.17x its float ONNX: {ratio:.3f}x"))
            if name == "mlp":
                for nt, r in rows.items():
                    verdicts.append((r["qinfer int4"] < r["ort int4"],
                                     f"MLP batch 1, {nt} thread(s): qinfer int4 faster than "
                                     f"onnxruntime MatMulNBits int4: {r['qinfer int4'] * 1e6:.1f} vs "
                                     f"{r['ort int4'] * 1e6:.1f} us ({r['ort int4'] / r['qinfer int4']:.2f}x)"))
    print()
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in verdicts) else 2


if __name__ == "__main__":
    sys.exit(main())
