"""PP-OCRv4 recognition in int8: the share of rendered text lines read exactly as the float model
reads them (greedy CTC), per activation observer, with and without bias correction, in one run.

    python bench/bench_rec_lines.py [--methods minmax percentile] [--seeds 1 2 3] [--lines 100]

Calibration: 16 rendered lines (seed 100), as tests/test_quantize.py; each seed renders another
set of lines (seed 1 is the test's). Bias correction (qinfer.quant.quantize.BIAS_CORRECTION) is
switched off for the second model of each method; both come from the same precision search,
so the rows differ by the correction alone where it was applied.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402
from qinfer.quant import quantize as Q  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--lines", type=int, default=100)
    args = ap.parse_args()
    path = models.BUILDERS["ppocr_rec"]()
    path = getattr(path, "path", path)
    m = qinfer.convert(path)
    name = m.graph.input_names[0]
    chars = models.rec_characters(path)
    xc, _ = models.rendered_rec_input(16, seed=100)
    calib = [xc[i:i + 1] for i in range(16)]
    sets = {s: models.rendered_rec_input(args.lines, seed=s)[0] for s in args.seeds}
    sf = qinfer.InferenceSession(m)
    want = {s: models.ctc_decode(sf.run(None, {name: x})[0], chars) for s, x in sets.items()}
    print(f"PP-OCRv4 rec int8: lines read exactly as float (of {args.lines} per seed)")
    print(f"{'observer':12s} {'bias correction':42s} " + " ".join(f"seed {s:>3d}" for s in args.seeds)
          + "   float layers  error")
    for method in args.methods:
        for bc in (True, False):
            Q.BIAS_CORRECTION = bc
            try:
                q = qinfer.quantize(m, calib, method=method, progress=False)
            finally:
                Q.BIAS_CORRECTION = True
            info = q.graph.metadata["quantization"]
            note = info.get("bias_correction", "off")
            sq = qinfer.InferenceSession(q)
            rates = []
            for s, x in sets.items():
                got = models.ctc_decode(sq.run(None, {name: x})[0], chars)
                rates.append(float(np.mean([a == b for a, b in zip(want[s], got)])))
            kept = sum(r["precision"] == "float32" for r in q.graph.metadata["precision_report"])
            print(f"{method:12s} {note[:42]:42s} " + " ".join(f"{r:8.0%}" for r in rates)
                  + f"   {kept:12d}  {info['output_error']:.4f}", flush=True)


if __name__ == "__main__":
    main()
