"""The ``qinfer`` command (SPEC section 2).

Every command exits 0 on success and 1 on a user error with a one-line message naming the file, node
or input at fault; ``--debug`` shows the traceback instead.
"""
import argparse
import os
import sys

import numpy as np

from .errors import QinferError


class UserError(QinferError):
    """A mistake on the command line (missing file, bad option value)."""


def _load_model(path):
    from .model import open_model
    return open_model(path)


def _compress_argument(c):
    c.add_argument("--compress", action="store_true",
                   help="store the packed int8 weights of narrow layers without their panel padding "
                        "(packed again at load) and deflate the weights that shrink: a smaller file, "
                        "whose smaller weights are built at load, not memory-mapped")


def cmd_convert(args):
    model = _load_model(args.model)
    out = args.output or os.path.splitext(args.model)[0] + ".qinf"
    try:
        model.save(out, compress=args.compress)
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    size = os.path.getsize(out)
    print(f"wrote {out} ({size:,} bytes, {len(model.graph.nodes)} nodes)")


def cmd_inspect(args):
    model = _load_model(args.model)
    print(model.summary())


def _parse_inputs(specs, sess):
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
        elif len(names) == 1:
            name, path = names[0], spec
        else:
            raise UserError(f"--input {spec!r}: name the input (NAME=FILE.npy); the model's inputs are {names}")
        if not os.path.exists(path):
            raise UserError(f"--input {name}: {path}: no such file")
        try:
            if path.endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    if name in z.files:
                        feeds[name] = z[name]
                    else:
                        for k in z.files:
                            feeds[k] = z[k]
            else:
                feeds[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"--input {name}: {path}: not a numpy .npy/.npz file ({e})") from None
    return feeds


def cmd_run(args):
    import qinfer
    model = _load_model(args.model)
    sess = qinfer.InferenceSession(model, num_threads=args.threads)
    feeds = _parse_inputs(args.input or [], sess)
    outs = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    result = dict(zip(names, outs))
    if args.output:
        np.savez(args.output, **result)
        print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in result.items()))
    else:
        for k, v in result.items():
            print(f"{k}: {v.dtype} {list(v.shape)}")
            print(np.array2string(v, threshold=20, edgeitems=3))


def cmd_quantize(args):
    import qinfer
    model = _load_model(args.model)
    if args.activations != "dynamic" and not args.calib:
        raise UserError("--calib DATA.npz is needed for int8 activations (or use --activations dynamic)")
    if args.calib and not os.path.exists(args.calib):
        raise UserError(f"--calib {args.calib}: no such file")
    if args.sparsity is not None or args.pattern is not None:
        # excluded nodes stay as they are: neither pruned nor quantized
        model = qinfer.prune(model, sparsity=args.sparsity, pattern=args.pattern or "block4",
                             exclude=tuple(args.exclude or ()), calibration=args.calib)
        _print_pruning(model)
    q = qinfer.quantize(model, args.calib, weights=args.weights, activations=args.activations,
                        method=args.method, rounding=args.rounding, group_size=args.group_size,
                        max_error=args.max_error, exclude=tuple(args.exclude or ()), progress=True)
    try:
        q.save(args.output, compress=args.compress)
    except OSError as e:
        raise UserError(f"{args.output}: cannot write ({e.strerror or e})") from None
    rep = q.graph.metadata.get("precision_report", [])
    kept = [r for r in rep if r["precision"] == "float32"]
    info = q.graph.metadata.get("quantization", {})
    err = info.get("output_error")
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes): "
          f"{len(rep) - len(kept)} of {len(rep)} layers quantized"
          + (f", output error {err:.2e} (1 - cosine, budget {info.get('max_error'):g})" if err is not None else ""))
    for r in kept:
        print(f"  kept float: {r['layer']} ({r['op']}): {r['reason']}")
    if info.get("weights") == "int4":
        print(f"  int4 weights (block {info['group_size']}, {info['rounding']}): {info['int4_layers']} "
              f"layers; int8: {info['int8_layers']}")
        for r in rep:
            if r["precision"].startswith("int8"):
                print(f"  {r['layer']} ({r['op']}): {r['reason']}")


def _print_pruning(model):
    info = model.graph.metadata.get("sparsity", {})
    print(f"pruned {len(info.get('layers', []))} layers to {info.get('sparsity', 0.0):.1%} zero weights "
          f"({info.get('pattern')}, {info.get('method')}); "
          f"{len(info.get('dense', []))} left dense")
    for r in info.get("dense", []):
        print(f"  dense: {r['layer']} ({r['op']}): {r['reason']}")


def cmd_prune(args):
    import qinfer
    model = _load_model(args.model)
    if args.calib and not os.path.exists(args.calib):
        raise UserError(f"--calib {args.calib}: no such file")
    p = qinfer.prune(model, sparsity=args.sparsity, pattern=args.pattern, scope=args.scope,
                     exclude=tuple(args.exclude or ()), calibration=args.calib)
    try:
        p.save(args.output, compress=args.compress)
    except OSError as e:
        raise UserError(f"{args.output}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    _print_pruning(p)


def cmd_info(args):
    from .runtime import cpu, threads
    print(cpu.runtime_info())
    print(f"BLAS for float matmul: {threads.blas.library or 'numpy default'}")
    print(f"default threads: {threads.resolve_num_threads(None)}")


def cmd_benchmark(args):
    from . import benchmark
    benchmark.run_from_args(args)


def cmd_evaluate(args):
    from .evaluate import run_from_args as _evaluate_from_args
    _evaluate_from_args(args)


def cmd_batch(args):
    from .integrations.batch import run_from_args as _batch_from_args
    _batch_from_args(args)


def build_parser():
    p = argparse.ArgumentParser(prog="qinfer", description="Small, fast CPU inference for ONNX models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    c = sub.add_parser("convert", help="convert an ONNX model to a .qinf file")
    c.add_argument("model")
    c.add_argument("-o", "--output", help="output .qinf path (default: MODEL with .qinf)")
    _compress_argument(c)
    c.set_defaults(fn=cmd_convert)

    c = sub.add_parser("inspect", help="print a model's layers, dtypes and sizes")
    c.add_argument("model")
    c.set_defaults(fn=cmd_inspect)

    c = sub.add_parser("run", help="run a model on .npy inputs")
    c.add_argument("model")
    c.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input (repeat per input)")
    c.add_argument("-o", "--output", help="write outputs to this .npz (default: print them)")
    c.add_argument("--threads", type=int, default=None)
    c.set_defaults(fn=cmd_run)

    c = sub.add_parser("quantize", help="quantize a model to int8 (or int4 weights) with calibration data")
    c.add_argument("model")
    c.add_argument("-o", "--output", required=True, help="output .qinf path")
    c.add_argument("--calib", metavar="DATA.npz", help="calibration samples (one array per input name)")
    c.add_argument("--weights", default="int8", choices=["int8", "int4"])
    c.add_argument("--activations", default="int8", choices=["int8", "dynamic"])
    c.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    c.add_argument("--rounding", default="nearest", choices=["nearest", "gptq"],
                   help="int4 weight rounding: to nearest, or GPTQ (error-compensating, from --calib)")
    c.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128],
                   help="int4 weights: one scale per this many weights along the reduction axis")
    c.add_argument("--max-error", type=float, default=None,
                   help="output budget, 1 - cosine similarity per output (default 0.01)")
    c.add_argument("--sparsity", type=float, default=None,
                   help="prune first: the fraction of weights set to zero (with --calib: SparseGPT)")
    c.add_argument("--pattern", default=None, choices=["unstructured", "block4", "2:4"],
                   help="pruning pattern (default block4 when --sparsity is given)")
    c.add_argument("--exclude", nargs="*", metavar="NODE", help="nodes to keep in float (and dense)")
    _compress_argument(c)
    c.set_defaults(fn=cmd_quantize)

    c = sub.add_parser("prune", help="set a fraction of a float model's weights to zero (block4 for the "
                                     "sparse int8 kernels)")
    c.add_argument("model")
    c.add_argument("-o", "--output", required=True, help="output .qinf path")
    c.add_argument("--sparsity", type=float, default=None,
                   help="fraction of each layer's weights set to zero, in [0, 1) (default 0.8; 2:4 is 0.5)")
    c.add_argument("--pattern", default="block4", choices=["unstructured", "block4", "2:4"])
    c.add_argument("--scope", default="layer", choices=["layer", "global"])
    c.add_argument("--exclude", nargs="*", metavar="NODE", help="nodes to leave dense")
    c.add_argument("--calib", metavar="DATA.npz",
                   help="calibration samples: compensate the pruned weights (SparseGPT)")
    _compress_argument(c)
    c.set_defaults(fn=cmd_prune)

    c = sub.add_parser("info", help="print CPU features, ISA tier, kernels and threads")
    c.set_defaults(fn=cmd_info)

    from .benchmark import add_arguments as _benchmark_arguments
    c = sub.add_parser("benchmark", help="time a model's variants (and onnxruntime) with their accuracy; "
                                         "no MODEL: the bundled demo")
    _benchmark_arguments(c)
    c.set_defaults(fn=cmd_benchmark)

    from .evaluate import add_arguments as _evaluate_arguments
    c = sub.add_parser("evaluate", help="compare a model's outputs (and layers) with its float reference: "
                                        "top-1 agreement, cosine, SQNR, accuracy/precision/recall/F1")
    _evaluate_arguments(c)
    c.set_defaults(fn=cmd_evaluate)

    from .integrations.batch import add_arguments as _batch_arguments
    c = sub.add_parser("batch", help="run a model over a directory of .npz/.npy/.parquet samples, one .npz "
                                     "of outputs per input file, on local threads or a Ray cluster")
    _batch_arguments(c)
    c.set_defaults(fn=cmd_batch)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(f"qinfer {__version__}")
        return 0
    if not getattr(args, "fn", None):
        parser.print_help()
        return 1
    try:
        args.fn(args)
    except QinferError as e:
        if args.debug:
            raise
        parts = [p.strip() for p in str(e).strip().splitlines() if p.strip()] or [type(e).__name__]
        line = parts[0] + (" " + "; ".join(parts[1:]) if len(parts) > 1 else "")
        if len(line) > 600:
            line = line[:600] + "... (--debug for all)"
        print(f"qinfer {args.command}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qinfer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
