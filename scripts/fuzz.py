"""Fuzzing campaign of the .qinf reader and the ONNX importer: mutated files, each loaded, planned
and run in a worker subprocess under a timeout; the only allowed outcomes are success and a
``qinfer.QinferError`` subclass.

    python scripts/fuzz.py --cases 100000 --seed 1                 # .qinf and ONNX files, 2 workers
    python scripts/fuzz.py --cases 20000 --kind onnx --workers 2 --timeout 60
    python scripts/fuzz.py --replay '{"model": "smallnet-int8", "edits": [...], "bytes": []}'
    python scripts/fuzz.py --replay failures.json                  # every plan of a --json report

The corpus (tests/fuzzing.py) is built first: float and int8 .qinf files of the digits CNN, the
digits MLP and two small synthetic models, and their ONNX files plus the transformer's. Plans are
drawn by Hypothesis from ``--seed``; a failure prints its plan, which replays alone (``--replay``
runs it in this process, so a debugger or a sanitizer sees it). Exit status 1 when a case failed.
"""
import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import fuzzing  # noqa: E402
import models  # noqa: E402


def _model(builder, what):
    try:
        return builder()
    except models.ModelUnavailable as e:
        print(f"(no {what}: {e})")
        return None


def corpus(with_mlp=True):
    return fuzzing.build_corpus(
        _model(models.digits_cnn, "digits CNN"),
        _model(models.digits_mlp, "digits MLP") if with_mlp else None,
        _model(models.transformer, "transformer"))


def replay(plans, entries):
    import tempfile
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for plan in plans:
            try:
                stage, outcome = fuzzing.run_case(entries[plan["model"]], plan, tmp)
                print(f"{outcome} (reached: {stage}): {json.dumps(plan)}")
            except Exception:  # noqa: BLE001 - the finding: show it whole
                bad += 1
                traceback.print_exc()
                print(f"FAILED: {json.dumps(plan)}")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10000, help="cases in all (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the plans")
    ap.add_argument("--kind", choices=("both", "qinf", "onnx"), default="both")
    ap.add_argument("--onnx-share", type=float, default=0.25,
                    help="share of the cases on ONNX files with --kind both (default 0.25)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a case may take")
    ap.add_argument("--mem-limit-mb", type=int, default=2048,
                    help="address space a case may add to a worker (default 2048)")
    ap.add_argument("--no-mlp", action="store_true", help="leave the 7 MB digits MLP out")
    ap.add_argument("--json", help="write the summary and the failures (with plans) here")
    ap.add_argument("--replay", help="a plan (JSON) or a --json report: run its plans here")
    args = ap.parse_args(argv)

    entries = corpus(with_mlp=not args.no_mlp)
    if args.replay:
        src = args.replay
        text = open(src).read() if os.path.exists(src) else src
        doc = json.loads(text)
        plans = [f["plan"] for f in doc["failures"]] if isinstance(doc, dict) and "failures" in doc \
            else doc if isinstance(doc, list) else [doc]
        return 1 if replay(plans, entries) else 0

    from hypothesis import strategies as st
    kinds = {"qinf": args.cases, "onnx": 0} if args.kind == "qinf" else \
        {"qinf": 0, "onnx": args.cases} if args.kind == "onnx" else \
        {"qinf": args.cases - round(args.cases * args.onnx_share),
         "onnx": round(args.cases * args.onnx_share)}
    print(f"corpus: {', '.join(f'{e.name} ({len(e.data):,} B)' for e in entries.values())}")
    t0 = time.perf_counter()
    with fuzzing.Campaign(entries, workers=args.workers, timeout=args.timeout,
                          mem_limit=args.mem_limit_mb << 20) as c:

        def submit(plan):
            c.submit(plan)
            if c.count % 10000 == 0:
                print(f"  {c.count} cases, {time.perf_counter() - t0:.0f} s, "
                      f"{len(c.failures)} failures", flush=True)

        for kind, n in kinds.items():
            if n:
                plans = fuzzing.qinf_plans(st, entries) if kind == "qinf" else \
                    fuzzing.onnx_plans(st, entries)
                fuzzing.draw_plans(plans, n, args.seed, submit)
        c.finish()
        secs = time.perf_counter() - t0
        summary = c.summary()
        failures = list(c.failures)
        count = c.count
    print(f"{count} cases in {secs:.0f} s ({count / secs:.0f}/s), {args.workers} workers, "
          f"seed {args.seed}")
    for kind, s in sorted(summary.items()):
        errs = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items(), key=lambda kv: -kv[1]))
        print(f"  {kind}: {s['cases']} cases, {s['loaded']} loaded, {s['ran']} ran to the end; {errs}")
    print(f"failures: {len(failures)} (crashes {sum(f.kind == 'crash' for f in failures)}, hangs "
          f"{sum(f.kind == 'hang' for f in failures)}, other exceptions "
          f"{sum(f.kind == 'exception' for f in failures)})")
    for f in failures:
        print(f.report(args.seed))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"cases": count, "seconds": secs, "seed": args.seed, "summary": summary,
                       "failures": [f._asdict() for f in failures]}, out, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
