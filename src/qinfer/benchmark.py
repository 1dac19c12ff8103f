"""``qinfer benchmark``: the timing harness, the variants table, SPEC section 4 JSON and the plot.

Design:

* **Everything timed runs in one process, interleaved.** After an interleaved warm-up, each round
  runs every engine (each qinfer variant, and onnxruntime when compared) once, in an order that
  rotates every round, so clock changes and neighbours' noise hit all of them alike and none always
  runs right after the same other one. The timed region is only ``session.run(None, feeds)``
  between two ``time.perf_counter()`` calls: feeds are built once, the progress bar and the budget
  check run between calls. ``bench/bench_harness_bias.py`` checks that this adds no bias against a
  plain timing loop.
* **Iterations or a time budget.** ``--iterations N`` runs N rounds; ``--time S`` (the default,
  ``DEFAULT_TIME_S``) runs rounds until S seconds per engine have passed (at least
  ``MIN_ITERATIONS`` rounds), so every engine gets the same number of samples.
* **Peak RSS is measured in a fresh process per row.** The peak resident set (``VmHWM``, or
  ``ru_maxrss`` where /proc is missing) is a high-water mark of the whole process: in the timing
  process it would include every variant loaded so far, the ONNX importer and the calibration
  data. So after timing, each row's engine runs alone in a child process that imports only numpy and
  that engine, loads that one model file and runs it ``PROBE_RUNS`` times on the same inputs; the
  row's ``peak_rss_mb`` is that child's peak, and ``baseline_rss_mb`` is its peak before loading the
  model (interpreter + numpy + engine import), so the difference is what the model costs.
* **Variants plug in as the library grows.** ``VARIANTS`` maps a name to the public API functions it
  needs (``qinfer.quantize``, ``qinfer.prune``) and how to build it. A variant whose functions this
  qinfer does not have is refused with a one-line error when asked for by name, and left out with a
  note line when it is only a default. Quantized variants calibrate on ``--data`` (its first
  ``CALIB_SAMPLES`` samples), on the demo's bundled calibration split, or on synthesized inputs, and
  the output says which.
* **Accuracy next to speed (SPEC section 7).** With labels (``--data`` holding ``labels`` or ``y``,
  or the demo's test split): test-set accuracy. Otherwise, against the qinfer float model on the
  same inputs: top-1 agreement for classifiers (an output ``[batch, classes]``), else the smallest
  cosine similarity over the outputs. Without ``--data`` those inputs are synthesized, which says
  little about real accuracy; the output says so.
* Every row's ``model_bytes`` is the size of the file that row loads: the variant's ``.qinf``, or
  the ONNX file for onnxruntime.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .errors import QinferError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEMO_MODEL = os.path.join(DATA_DIR, "digits_cnn.onnx")
DEMO_TEST = os.path.join(DATA_DIR, "digits_test.npz")      # input [450, 1, 8, 8] float32, labels [450] int64
DEMO_CALIB = os.path.join(DATA_DIR, "digits_calib.npz")    # input: 128 images of the training split
DEMO_TITLE = "the bundled demo, a CNN trained on scikit-learn digits by scripts/train_demo_model.py"

ALL_VARIANTS = ("float", "int8", "int4", "sparse-int8")
DEFAULT_VARIANTS = ("float", "int8")        # with a MODEL; the demo runs ALL_VARIANTS
ORT_VARIANT = "onnxruntime-fp32"
COMPARE_CHOICES = ("onnxruntime",)

DEFAULT_TIME_S = 2.0          # per engine, when neither --iterations nor --time is given
DEFAULT_WARMUP = 5
MIN_ITERATIONS = 10           # a time budget never yields fewer rounds than this
PROBE_RUNS = 3                # runs of the memory probe child
PROBE_TIMEOUT_S = 300
CALIB_SAMPLES = 128           # samples of --data used for calibration
SYNTH_CALIB_SAMPLES = 32      # synthesized calibration samples when there is no --data
SYNTH_EVAL_SAMPLES = 16       # synthesized samples for accuracy vs float when there is no --data
EVAL_CHUNK = 64               # samples per run when evaluating accuracy on --data (dynamic batch)
SPARSITY = 0.8                # sparse-int8: fraction of weights pruned, block4 pattern
LABEL_KEYS = ("labels", "y")
SEED = 0


class BenchmarkError(QinferError):
    """A user error in ``qinfer benchmark`` (bad option, model, data, or missing optional package)."""


# ----------------------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    name: str
    needs: tuple           # public qinfer functions this variant needs
    calibrated: bool
    what: str

    def missing(self):
        return [f for f in self.needs if not _has_capability(f)]

    def available(self):
        return not self.missing()

    def build(self, model, calibration, progress):
        import qinfer
        if self.name == "float":
            return model
        if self.name == "int8":
            return qinfer.quantize(model, calibration, weights="int8", activations="int8",
                                   progress=progress)
        if self.name == "int4":
            return qinfer.quantize(model, calibration, weights="int4", activations="int8",
                                   progress=progress)
        if self.name == "sparse-int8":
            # the calibration data also drive the pruning (SparseGPT): magnitude pruning alone
            # loses a quarter of the demo's accuracy at this sparsity
            pruned = qinfer.prune(model, sparsity=SPARSITY, pattern="block4", calibration=calibration,
                                  progress=progress)
            return qinfer.quantize(pruned, calibration, weights="int8", activations="int8",
                                   progress=progress)
        raise AssertionError(self.name)


VARIANTS = {
    "float": Variant("float", (), False, "float32 weights and activations"),
    "int8": Variant("int8", ("quantize",), True, "int8 weights (per channel), int8 static activations"),
    "int4": Variant("int4", ("quantize", "int4 weights"), True, "int4 weights (groups of 64), int8 activations"),
    "sparse-int8": Variant("sparse-int8", ("prune", "quantize"), True,
                           f"{SPARSITY:.0%} of weights pruned in 1x4 blocks (SparseGPT on the "
                           "calibration data), then int8"),
}


#: ISA tier names as SPEC section 4's JSON spells them
JSON_ISA = {"avx512vnni": "avx512_vnni", "avx2": "avx2", "scalar": "scalar"}

def parse_variants(text):
    """``"float,int8"`` -> ``["float", "int8"]``; unknown names are a one-line error."""
    if isinstance(text, (list, tuple)):
        text = ",".join(text)
    names = []
    for part in str(text).split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name in ("onnxruntime", ORT_VARIANT, "ort"):
            raise BenchmarkError(f"--variants {text!r}: onnxruntime is not a qinfer variant; "
                                 f"add --compare onnxruntime")
        if name not in VARIANTS:
            raise BenchmarkError(f"--variants {text!r}: unknown variant {name!r}; choose from "
                                 + ", ".join(ALL_VARIANTS))
        if name not in names:
            names.append(name)
    if not names:
        raise BenchmarkError(f"--variants {text!r}: no variant named; choose from " + ", ".join(ALL_VARIANTS))
    return names


def _has_capability(what):
    """A public function of qinfer ("quantize", "prune") or a weight format ("int4 weights")."""
    import qinfer
    if what.endswith(" weights"):
        from .quant.quantize import WEIGHT_FORMATS
        return what.split()[0] in WEIGHT_FORMATS
    return hasattr(qinfer, what)


def _not_built(names):
    """One phrase saying which API functions (or weight formats) the given variants miss."""
    funcs = sorted({f for n in names for f in VARIANTS[n].missing()})
    return " / ".join(f if " " in f else f"qinfer.{f}" for f in funcs)


# ------------------------------------------------------------------------------------------ inputs

def _fmt_shape(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def parse_input_shapes(specs, inputs):
    """``["input:1x3x224x224", ...]`` -> {name: shape tuple}, checked against the model's inputs.

    A spec without ``NAME:`` is allowed for single-input models. Dims are positive integers
    separated by ``x`` (or ``,``); fixed dims of the model must be matched.
    """
    by_name = {v.name: v for v in inputs}
    names = [v.name for v in inputs]
    shapes = {}
    for spec in specs or ():
        if ":" in spec:
            name, dims = spec.rsplit(":", 1)
        elif len(inputs) == 1:
            name, dims = names[0], spec
        else:
            raise BenchmarkError(f"--input-shape {spec!r}: name the input (NAME:1x3x224x224); "
                                 f"the model's inputs are {names}")
        parts = dims.replace(",", "x").lower().split("x")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise BenchmarkError(f"--input-shape {spec!r}: expected NAME:DIMS with positive integer dims "
                                 f"separated by 'x', e.g. {names[0]}:1x3x224x224")
        if name not in by_name:
            raise BenchmarkError(f"--input-shape {spec!r}: the model has no input {name!r}; "
                                 f"its inputs are {names}")
        want = by_name[name].shape
        if want is not None:
            if len(want) != len(shape):
                raise BenchmarkError(f"--input-shape {spec!r}: input {name!r} has rank {len(want)} "
                                     f"{_fmt_shape(want)}, got {len(shape)} dims")
            for axis, (w, g) in enumerate(zip(want, shape)):
                if isinstance(w, int) and w != g:
                    raise BenchmarkError(f"--input-shape {spec!r}: dimension {axis} of input {name!r} is "
                                         f"fixed at {w} by the model {_fmt_shape(want)}, got {g}")
        shapes[name] = shape
    return shapes


_SEQ_HINTS = ("seq", "len", "token", "time", "step")
_SPATIAL_HINTS = ("height", "width", "h", "w", "size", "y", "x")


def _default_dim(v, axis, dim, batch):
    """A sensible size for a symbolic dim: batch on axis 0, 224 for image sides, 128 for sequences."""
    name = str(dim or "").lower()
    rank = len(v.shape)
    if axis == 0:
        return batch
    if any(h in name for h in _SEQ_HINTS):
        return 128
    if name in _SPATIAL_HINTS or "height" in name or "width" in name:
        return 224
    if rank == 4 and axis in (2, 3):
        return 224
    if rank == 3 and axis == 1:
        return 128
    if rank == 2 and axis == 1 and v.dtype and v.dtype.startswith("int"):
        return 128
    return 1


def resolve_shapes(inputs, given, batch):
    """{name: concrete shape} and, per input, the symbolic dims that got a default (to print).

    ``batch`` (``--batch``, None = not given) fills symbolic axis 0; a fixed batch that differs, or an
    ``--input-shape`` that disagrees with ``--batch``, is an error.
    """
    shapes, defaulted = {}, {}
    if batch is None:   # a batch chosen by --input-shape for one input applies to the others
        batch = next((given[v.name][0] for v in inputs if v.name in given and given[v.name]
                      and (not v.shape or not isinstance(v.shape[0], int))), None)
    for v in inputs:
        if v.shape is None:
            if v.name not in given:
                raise BenchmarkError(f"input {v.name!r} has an unknown rank: give its shape with "
                                     f"--input-shape {v.name}:DIMS")
            shapes[v.name] = given[v.name]
            continue
        if v.name in given:
            shape = given[v.name]
            if batch is not None and shape and shape[0] != batch:
                raise BenchmarkError(f"--input-shape {v.name}:{'x'.join(map(str, shape))} has batch {shape[0]}, "
                                     f"but --batch is {batch}")
            shapes[v.name] = shape
            continue
        shape, notes = [], []
        for axis, d in enumerate(v.shape):
            if isinstance(d, int):
                if axis == 0 and batch is not None and d != batch:
                    raise BenchmarkError(f"input {v.name!r} has a fixed batch of {d} {_fmt_shape(v.shape)}; "
                                         f"--batch {batch} does not fit")
                shape.append(d)
            else:
                size = _default_dim(v, axis, d, batch if batch is not None else 1)
                shape.append(size)
                if axis != 0:
                    notes.append(f"{d if d else 'dim %d' % axis}={size}")
        shapes[v.name] = tuple(shape)
        if notes:
            defaulted[v.name] = notes
    return shapes, defaulted


def _gather_bound(graph, name):
    """If integer input ``name`` indexes a constant table (Gather indices), the table's length."""
    for n in graph.nodes:
        if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] == name:
            table = graph.initializers.get(n.inputs[0])
            if table is not None:
                axis = int(n.attrs.get("axis", 0))
                return int(table.shape[axis])
    return None


def synthesize(graph, v, shape, rng):
    """Inputs of the right dtype and range: floats ~ N(0, 1) (normalised data), uint8 0..255
    (images), token ids below the embedding table's length, masks of ones, bools at random."""
    dtype = np.dtype(v.dtype or "float32")
    lname = v.name.lower()
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if "mask" in lname:
        return np.ones(shape, dtype)
    if "type" in lname or "segment" in lname:
        return np.zeros(shape, dtype)
    info = np.iinfo(dtype)
    high = _gather_bound(graph, v.name)
    if high is None:
        high = 256 if dtype == np.uint8 else 100
    return rng.integers(max(0, info.min), min(high, int(info.max) + 1), shape).astype(dtype)


def _is_labels_key(k):
    return k in LABEL_KEYS


def load_data(path, inputs):
    """Read ``--data``: {input name: [samples, ...]} and labels (``labels``/``y``) or None.

    For a single-input model, one unlabelled array under any name is that input (an ``x`` with a
    ``y`` works as well as the demo's ``input`` and ``labels``).
    """
    if not os.path.exists(path):
        raise BenchmarkError(f"--data {path}: no such file")
    if os.path.isdir(path):
        raise BenchmarkError(f"--data {path}: is a directory, expected an .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise BenchmarkError(f"--data {path}: a .npy file; save an .npz with one array per input "
                                     f"name (and 'labels' for accuracy)")
            arrays = {k: z[k] for k in z.files}
    except BenchmarkError:
        raise
    except Exception as e:   # zip / format errors of all kinds: the file is not a numpy .npz
        raise BenchmarkError(f"--data {path}: not a numpy .npz file ({type(e).__name__}: {e})") from None
    names = [v.name for v in inputs]
    label_key = next((k for k in LABEL_KEYS if k in arrays and k not in names), None)
    labels = arrays.pop(label_key) if label_key else None
    if all(n in arrays for n in names):
        feeds = {n: arrays[n] for n in names}
    elif len(names) == 1 and len(arrays) == 1:
        feeds = {names[0]: next(iter(arrays.values()))}
    else:
        raise BenchmarkError(f"--data {path}: holds arrays {sorted(arrays)}; expected one per model input "
                             f"{names} (first axis = samples), plus optional 'labels'")
    counts = set()
    by_name = {v.name: v for v in inputs}
    for n, x in feeds.items():
        v = by_name[n]
        if x.ndim == 0:
            raise BenchmarkError(f"--data {path}: array for input {n!r} is a scalar; the first axis must "
                                 f"be samples")
        want = np.dtype(v.dtype or "float32")
        if x.dtype != want:
            if x.dtype.kind == want.kind or (x.dtype.kind in "iu" and want.kind in "iu"):
                x = x.astype(want)
            else:
                raise BenchmarkError(f"--data {path}: input {n!r} is {x.dtype}, the model expects {want}")
        if v.shape is not None:
            if x.ndim != len(v.shape):
                raise BenchmarkError(f"--data {path}: input {n!r} is {list(x.shape)} (rank {x.ndim}); the "
                                     f"model expects rank {len(v.shape)} {_fmt_shape(v.shape)} with samples "
                                     f"on the first axis")
            for axis, (w, g) in enumerate(zip(v.shape[1:], x.shape[1:]), 1):
                if isinstance(w, int) and w != g:
                    raise BenchmarkError(f"--data {path}: input {n!r} has dimension {axis} = {g}, the "
                                         f"model needs {w} {_fmt_shape(v.shape)}")
        feeds[n] = np.ascontiguousarray(x)
        counts.add(x.shape[0])
    if len(counts) != 1:
        raise BenchmarkError(f"--data {path}: inputs have different numbers of samples {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise BenchmarkError(f"--data {path}: holds 0 samples")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:          # one-hot
            labels = labels.argmax(1)
        if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iub":
            raise BenchmarkError(f"--data {path}: '{label_key}' must be {n} integer class labels, got "
                                 f"{labels.dtype} {list(labels.shape)}")
    return feeds, labels, n


def _take(arrays, idx):
    return {k: np.ascontiguousarray(x[idx]) for k, x in arrays.items()}


def _chunks(arrays, n, chunk, fixed):
    """Feeds of ``chunk`` samples over the ``n`` samples; with a fixed batch the last chunk is
    padded by repeating samples. Yields (feeds, number of real samples)."""
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        real = len(idx)
        if fixed and real < chunk:
            idx = np.resize(idx, chunk)
        yield _take(arrays, idx), real


# ------------------------------------------------------------------------------------------ timing

def _stats(seconds):
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min()),
            "max": float(ms.max()), "stdev": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0}


def _progress_enabled(progress):
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(enabled, total, desc, unit):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except Exception:
        return None
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s" if unit == "s" else None
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                bar_format=fmt)


def measure(engines, warmup=DEFAULT_WARMUP, iterations=None, time_s=None, progress=False):
    """Time ``engines`` ([(name, session, feeds)]) interleaved; returns {name: [seconds, ...]}.

    Warm-up rounds first; then rounds until ``iterations`` (or, with ``time_s``, until
    ``time_s * len(engines)`` seconds have passed and at least ``MIN_ITERATIONS`` rounds ran). Each
    round runs every engine once; the starting engine rotates every round.
    """
    if iterations is None and time_s is None:
        time_s = DEFAULT_TIME_S
    runs = [(s.run, f) for _, s, f in engines]
    k = len(runs)
    for w in range(warmup):
        for j in range(k):
            run, feeds = runs[(w + j) % k]
            run(None, feeds)
    times = [[] for _ in runs]
    perf = time.perf_counter
    budget = None if time_s is None else time_s * k
    bar = _bar(progress, iterations if iterations is not None else round(budget, 1), "benchmarking",
               "round" if iterations is not None else "s")
    start = last = perf()
    i = 0
    try:
        while True:
            if iterations is not None:
                if i >= iterations:
                    break
            elif i >= MIN_ITERATIONS and last - start >= budget:
                break
            for j in range(k):
                idx = (i + j) % k
                run, feeds = runs[idx]
                t0 = perf()
                run(None, feeds)
                t1 = perf()
                times[idx].append(t1 - t0)
            i += 1
            now = perf()
            if bar is not None:
                bar.update(1 if iterations is not None else now - last)
            last = now
    finally:
        if bar is not None:
            bar.close()
    return {name: t for (name, _, _), t in zip(engines, times)}


# ------------------------------------------------------------------------------------ peak memory

# Run by ``python -c`` in a fresh process: imports only numpy and the engine, so the peak is the
# engine's, not the benchmark's. argv: engine model feeds.npz names.json threads runs
PROBE_SCRIPT = r"""
import json, sys
def hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # kB on Linux
engine, model, feeds_path, names, threads, runs = sys.argv[1:7]
names, threads, runs = json.loads(names), int(threads), int(runs)
import numpy as np
with np.load(feeds_path, allow_pickle=False) as z:
    feeds = {n: z["arr_%d" % i] for i, n in enumerate(names)}
if engine == "onnxruntime":
    import onnxruntime as ort
    base = hwm_mb()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
else:
    import qinfer
    base = hwm_mb()
    sess = qinfer.InferenceSession(model, num_threads=threads)
for _ in range(runs):
    sess.run(None, feeds)
print(json.dumps({"peak_rss_mb": hwm_mb(), "baseline_rss_mb": base}))
"""


def probe_memory(engine, model_path, feeds, threads, workdir, runs=PROBE_RUNS):
    """(peak RSS MB, baseline MB) of a fresh process running ``model_path`` alone; (None, None)
    with the reason if the probe fails."""
    names = list(feeds)
    feeds_path = os.path.join(workdir, "probe-feeds.npz")
    np.savez(feeds_path, *[feeds[n] for n in names])
    cmd = [sys.executable, "-c", PROBE_SCRIPT, engine, model_path, feeds_path, json.dumps(names),
           str(threads), str(runs)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        if r.returncode == 0:
            got = json.loads(r.stdout.strip().splitlines()[-1])
            return got["peak_rss_mb"], got["baseline_rss_mb"], None
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["exit %d" % r.returncode]
        return None, None, tail[0]
    except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, IndexError) as e:
        return None, None, f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------ machine

def machine_info():
    from .runtime import cpu, threads
    return {"cpu": cpu.cpu_name(), "isa": JSON_ISA.get(cpu.isa(), cpu.isa()), "cores": threads.physical_cores(),
            "logical_cpus": os.cpu_count()}


# --------------------------------------------------------------------------------------- onnxruntime

def require_onnxruntime():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BenchmarkError("onnxruntime is not installed: pip install onnxruntime") from None


def onnxruntime_session(path, threads):
    """onnxruntime fp32 on the CPU with ``threads`` intra-op threads, one inter-op thread, and no
    thread spinning: a spinning pool keeps burning the cores the interleaved qinfer run needs."""
    require_onnxruntime()
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BenchmarkError(f"onnxruntime cannot load {path}: {_first_line(e)}") from None


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------ accuracy

def _classifier_output(outputs):
    """Index of the first output shaped [samples, classes >= 2] with a float dtype, else None."""
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] >= 2 and o.dtype.kind == "f":
            return i
    return None


def _cosine(a, b):
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def accuracy(outputs, reference, labels):
    """SPEC section 7: {"metric", "value"} of ``outputs`` vs labels or vs the float ``reference``."""
    ci = _classifier_output(outputs)
    if labels is not None and ci is not None:
        return {"metric": "accuracy", "value": float((outputs[ci].argmax(1) == labels).mean())}
    if ci is not None:
        return {"metric": "top1_agreement",
                "value": float((outputs[ci].argmax(1) == reference[ci].argmax(1)).mean())}
    return {"metric": "cosine_similarity",
            "value": min(_cosine(o, r) for o, r in zip(outputs, reference))}


def _evaluate(session, chunks):
    """Outputs of ``session`` over the evaluation chunks, concatenated along the sample axis."""
    parts = None
    for feeds, real in chunks:
        outs = session.run(None, feeds)
        outs = [np.asarray(o) for o in outs]
        if parts is None:
            parts = [[] for _ in outs]
        for p, o in zip(parts, outs):
            p.append(o[:real] if o.ndim else o[None])
    return [np.concatenate(p) for p in parts]


# ---------------------------------------------------------------------------------------- printing

def _fmt_ms(v):
    if v is None:
        return "-"
    if v < 1:
        return f"{v:.4f}"
    if v < 100:
        return f"{v:.3f}"
    return f"{v:.1f}"


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


_METRIC_SHORT = {"accuracy": "test acc", "top1_agreement": "top-1 agr", "cosine_similarity": "cosine"}


def format_table(rows, reference="float"):
    """The variants table: one line per row of the report."""
    ref = next((r for r in rows if r["variant"] == reference), None)
    head = (f"{'variant':<17} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'min ms':>9} "
            f"{'samples/s':>10} {'speedup':>8} {'peak RSS':>9} {'model':>9}  accuracy")
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = r["latency_ms"]
        speed = f"{ref['latency_ms']['p50'] / lat['p50']:.2f}x" if ref else "-"
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f} MB"
        acc = r["accuracy"]
        note = " (ref)" if r.get("accuracy_is_reference") else ""
        lines.append(f"{r['variant']:<17} {_fmt_ms(lat['p50']):>9} {_fmt_ms(lat['p90']):>9} "
                     f"{_fmt_ms(lat['p99']):>9} {_fmt_ms(lat['mean']):>9} {_fmt_ms(lat['min']):>9} "
                     f"{r['throughput_per_s']:>10.1f} {speed:>8} {rss:>9} {_fmt_bytes(r['model_bytes']):>9}  "
                     f"{acc['value']:.4f} {_METRIC_SHORT.get(acc['metric'], acc['metric'])}{note}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- plot

def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchmarkError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None


def plot(rows, path, title=""):
    """Latency p50 (x) vs accuracy (y), marker area ~ model bytes, one labelled point per row.

    Returns the plotted points [{"label", "latency_ms", "accuracy", "model_bytes"}] (the JSON
    records them, so a reader can check the figure against the numbers).
    """
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    points = [{"label": r["variant"], "latency_ms": r["latency_ms"]["p50"], "accuracy": r["accuracy"]["value"],
               "model_bytes": r["model_bytes"]} for r in rows]
    biggest = max(p["model_bytes"] for p in points) or 1
    metrics = sorted({r["accuracy"]["metric"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for p, r in zip(points, rows):
        lat = r["latency_ms"]
        size = 60 + 900 * p["model_bytes"] / biggest
        colour = "tab:gray" if p["label"] == ORT_VARIANT else None
        ax.errorbar([p["latency_ms"]], [p["accuracy"]],
                    xerr=[[p["latency_ms"] - lat["min"]], [lat["p90"] - p["latency_ms"]]],
                    fmt="none", ecolor="0.6", elinewidth=1, capsize=3, zorder=1)
        ax.scatter([p["latency_ms"]], [p["accuracy"]], s=size, alpha=0.7, color=colour,
                   edgecolors="black", zorder=2)
        ax.annotate(f"{p['label']}\n{_fmt_bytes(p['model_bytes'])}", (p["latency_ms"], p["accuracy"]),
                    textcoords="offset points", xytext=(10, 6), fontsize=9)
    ax.set_xlabel("latency p50 (ms); bars: min .. p90")
    ax.set_ylabel(" / ".join(m.replace("_", " ") for m in metrics))
    ax.set_title(title or "qinfer benchmark", fontsize=10)
    lo, hi = ax.get_xlim()
    ax.set_xlim(0, hi * 1.25)
    values = [p["accuracy"] for p in points]
    span = max(max(values) - min(values), 0.02)
    ax.set_ylim(min(values) - 0.6 * span, min(max(values) + 0.6 * span, 1.0 + 0.15 * span))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise BenchmarkError(f"--plot {path}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return points


# ------------------------------------------------------------------------------------------ driver

def _check_int(value, what, low):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise BenchmarkError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _first_run(name, session, feeds, shapes, is_ort=False):
    """Run once (this also checks that the inputs fit the model); returns seconds taken."""
    t0 = time.perf_counter()
    try:
        session.run(None, feeds)
    except QinferError as e:
        raise BenchmarkError(f"{name}: inputs {_shapes_text(shapes)} do not fit the model: {_first_line(e)} "
                             f"(choose shapes with --input-shape NAME:DIMS)") from None
    except Exception as e:
        if not is_ort and not isinstance(e, (ValueError, IndexError)):
            raise
        raise BenchmarkError(f"{name}: inputs {_shapes_text(shapes)} do not fit the model: {_first_line(e)} "
                             f"(choose shapes with --input-shape NAME:DIMS)") from None
    return time.perf_counter() - t0


def _span(values):
    lo, hi = round(min(values)), round(max(values))
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _shapes_text(shapes):
    return ", ".join(f"{k}:{'x'.join(map(str, s))}" for k, s in shapes.items())


def run(model=None, *, variants=None, batch=None, threads=None, iterations=None, time_s=None,
        warmup=None, input_shapes=(), data=None, compare=(), json_path=None, plot_path=None,
        progress=None, measure_memory=True, out=None):
    """Benchmark ``model`` (an .onnx or float .qinf path; None = the bundled demo) and print the table.

    Returns the report (the SPEC section 4 document written by ``json_path``). Raises
    ``BenchmarkError`` (or another ``QinferError``) on user errors.
    """
    import qinfer
    from .runtime import threads as _threads

    out = out or sys.stdout
    progress = _progress_enabled(progress)

    def say(text=""):
        print(text, file=out, flush=True)

    # ---- options
    batch = _check_int(batch, "--batch", 1)
    iterations = _check_int(iterations, "--iterations", 1)
    warmup = DEFAULT_WARMUP if warmup is None else _check_int(warmup, "--warmup", 0)
    if iterations is not None and time_s is not None:
        raise BenchmarkError("give either --iterations or --time, not both")
    if time_s is not None and not (isinstance(time_s, (int, float)) and np.isfinite(time_s) and time_s > 0):
        raise BenchmarkError(f"--time must be a positive number of seconds, got {time_s!r}")
    if iterations is None and time_s is None:
        time_s = DEFAULT_TIME_S
    n_threads = _threads.resolve_num_threads(_check_int(threads, "--threads", 1))
    compare = [c.strip().lower() for c in (compare or ()) if c and c.strip()]
    for c in compare:
        if c not in COMPARE_CHOICES:
            raise BenchmarkError(f"--compare {c!r}: can compare with {', '.join(COMPARE_CHOICES)} only")
    compare_ort = "onnxruntime" in compare
    if compare_ort:
        require_onnxruntime()
    if plot_path:
        require_matplotlib()
    for opt, target in (("--json", json_path), ("--plot", plot_path)):
        folder = os.path.dirname(os.path.abspath(os.fspath(target))) if target else None
        if folder and not os.path.isdir(folder):   # fail now, not after minutes of timing
            raise BenchmarkError(f"{opt} {target}: folder {folder} does not exist")

    demo = model is None
    explicit = variants is not None
    names = parse_variants(variants) if explicit else list(ALL_VARIANTS if demo else DEFAULT_VARIANTS)
    unavailable = [n for n in names if not VARIANTS[n].available()]
    if unavailable and explicit:
        n = unavailable[0]
        have = [v for v in ALL_VARIANTS if VARIANTS[v].available()]
        raise BenchmarkError(f"variant {n!r} is not available in qinfer {qinfer.__version__}: "
                             f"{_not_built([n])} is not built yet (available: {', '.join(have)})")
    names = [n for n in names if n not in unavailable]

    # ---- model
    path = DEMO_MODEL if demo else os.fspath(model)
    if demo and data is None:
        data = DEMO_TEST
    if not os.path.exists(path):
        raise BenchmarkError(f"{path}: no such file" + (" (the package data is missing: reinstall qinfer)"
                                                        if demo else ""))
    if os.path.isdir(path):
        raise BenchmarkError(f"{path}: is a directory, expected a .onnx or .qinf file")
    from .model import is_qinf_path
    is_qinf = is_qinf_path(path)
    if is_qinf:
        if compare_ort:
            raise BenchmarkError(f"{path}: --compare onnxruntime needs the .onnx file (onnxruntime cannot "
                                 f"read .qinf)")
        float_model = qinfer.load(path)
        # a quantized .qinf cannot be the float reference the variants are built from and compared to
        quantized = [(k, w.dtype) for k, w in float_model.graph.initializers.items()
                     if w.dtype in (np.int8, np.uint8)]
        if quantized:
            raise BenchmarkError(f"{path}: already quantized ({quantized[0][0]!r} holds {quantized[0][1]} weights); "
                                 f"qinfer benchmark builds its variants from a float model: pass the float "
                                 f".onnx or .qinf")
    else:
        float_model = qinfer.convert(path)
    graph = float_model.graph
    inputs = list(graph.inputs)
    rng = np.random.default_rng(SEED)

    # ---- inputs: shapes, timing feeds, evaluation set, calibration set
    given = parse_input_shapes(input_shapes, inputs)
    labels = None
    data_arrays = None
    if data is not None:
        data = os.fspath(data)
        data_arrays, labels, n_data = load_data(data, inputs)
        for name, shape in given.items():
            if tuple(data_arrays[name].shape[1:]) != tuple(shape[1:]):
                raise BenchmarkError(f"--input-shape {name}:{'x'.join(map(str, shape))} does not match the "
                                     f"samples of --data {data}: {list(data_arrays[name].shape[1:])}")
            if batch is None:
                batch = shape[0]
    shapes, defaulted = resolve_shapes(inputs, given, batch)
    first = inputs[0]
    batch_n = shapes[first.name][0] if shapes[first.name] else 1
    fixed_batch = first.shape is not None and len(first.shape) > 0 and isinstance(first.shape[0], int)

    if data_arrays is not None:
        feeds = _take(data_arrays, np.resize(np.arange(min(batch_n, n_data)), batch_n))
        eval_arrays, n_eval = data_arrays, n_data
        if demo:
            with np.load(DEMO_CALIB, allow_pickle=False) as z:
                calib_arrays = {first.name: z["input"]}
            calib_what = f"{os.path.basename(DEMO_CALIB)} ({len(calib_arrays[first.name])} training images)"
        else:
            n_cal = min(n_data, CALIB_SAMPLES)
            calib_arrays = _take(data_arrays, np.arange(n_cal))
            calib_what = (f"the first {n_cal} samples of {os.path.basename(data)} (the data accuracy is "
                          f"measured on, too)")
        inputs_what = f"from {os.path.basename(data)}"
    else:
        feeds = {v.name: synthesize(graph, v, shapes[v.name], rng) for v in inputs}

        def synth_set(n):
            return {v.name: synthesize(graph, v, (n,) + tuple(shapes[v.name][1:]), rng) for v in inputs}

        n_eval = SYNTH_EVAL_SAMPLES
        eval_arrays = synth_set(n_eval)
        calib_arrays = synth_set(SYNTH_CALIB_SAMPLES)
        calib_what = (f"{SYNTH_CALIB_SAMPLES} synthesized random inputs (no --data: quantized accuracy may "
                      f"suffer; pass --data DATA.npz to calibrate on real inputs)")
        inputs_what = "synthesized (seeded random, dtype-aware; pass --data for real inputs)"
    # Synthesized evaluation runs at the timed shape (no new plan, no big batch on a big model);
    # a data set is evaluated EVAL_CHUNK samples per run where the batch dim allows.
    chunk = batch_n if fixed_batch or data_arrays is None else max(batch_n, EVAL_CHUNK)

    def eval_chunks():
        return _chunks(eval_arrays, n_eval, chunk, fixed_batch)

    # ---- header
    m = machine_info()
    title = os.path.basename(path) + (f" ({DEMO_TITLE})" if demo else "")
    say(f"qinfer {qinfer.__version__} benchmark: {title}")
    say(f"machine: {m['cpu']}, {m['cores']} physical cores, isa {m['isa']}; threads {n_threads}, batch {batch_n}")
    for v in inputs:
        extra = ""
        if v.name in defaulted:
            extra = (f"; symbolic dims defaulted: {', '.join(defaulted[v.name])} "
                     f"(set with --input-shape {v.name}:{'x'.join(map(str, shapes[v.name]))})")
        say(f"input {v.name!r}: {v.dtype} {list(shapes[v.name])} {inputs_what}{extra}")

    # ---- build variants, sessions
    rows_meta = []
    engines = []
    with tempfile.TemporaryDirectory(prefix="qinfer-bench-") as tmp:
        calib_feeds = [f for f, _ in _chunks(calib_arrays, len(next(iter(calib_arrays.values()))), chunk,
                                               fixed_batch)]
        built_calibrated = False
        for name in names:
            spec = VARIANTS[name]
            if spec.calibrated and not built_calibrated:
                say(f"calibration: {calib_what}")
                built_calibrated = True
            vmodel = spec.build(float_model, calib_feeds, progress)
            vpath = os.path.join(tmp, f"{name}.qinf")
            try:
                vmodel.save(vpath)
            except OSError as e:
                raise BenchmarkError(f"cannot write the {name} variant to {tmp}: {e}") from None
            t0 = time.perf_counter()
            sess = qinfer.InferenceSession(vpath, num_threads=n_threads)
            load_s = time.perf_counter() - t0
            first_s = _first_run(name, sess, feeds, shapes)
            rows_meta.append({"variant": name, "path": vpath, "engine": "qinfer", "session": sess,
                              "model_bytes": os.path.getsize(vpath), "load_ms": load_s * 1e3,
                              "first_run_ms": first_s * 1e3,
                              "calibration": calib_what if spec.calibrated else None})
            engines.append((name, sess, feeds))
        if compare_ort:
            t0 = time.perf_counter()
            sess = onnxruntime_session(path, n_threads)
            load_s = time.perf_counter() - t0
            first_s = _first_run(ORT_VARIANT, sess, feeds, shapes, is_ort=True)
            rows_meta.append({"variant": ORT_VARIANT, "path": path, "engine": "onnxruntime", "session": sess,
                              "model_bytes": os.path.getsize(path), "load_ms": load_s * 1e3,
                              "first_run_ms": first_s * 1e3, "calibration": None})
            engines.append((ORT_VARIANT, sess, feeds))

        # ---- accuracy (also a check that every engine runs the evaluation set)
        ref_sess = next((r["session"] for r in rows_meta if r["variant"] == "float"), None)
        if ref_sess is None:
            ref_sess = qinfer.InferenceSession(float_model, num_threads=n_threads)
        reference = _evaluate(ref_sess, eval_chunks())
        for r in rows_meta:
            outs = reference if r["variant"] == "float" else _evaluate(r["session"], eval_chunks())
            r["accuracy"] = accuracy(outs, reference, labels)
            r["accuracy_is_reference"] = r["variant"] == "float" and r["accuracy"]["metric"] != "accuracy"

        # ---- timing
        if iterations is not None:
            plan = f"{iterations} rounds"
        else:
            plan = f"{time_s:g} s per engine (>= {MIN_ITERATIONS} rounds)"
        each = (f"each round runs {', '.join(e[0] for e in engines)} once, interleaved, the first one rotating"
                if len(engines) > 1 else f"{engines[0][0]} alone")
        say(f"timing: {warmup} warm-up rounds, then {plan}; {each}")
        times = measure(engines, warmup=warmup, iterations=iterations, time_s=time_s, progress=progress)

        # ---- peak memory, each row alone in a fresh process
        probe_errors = []
        for r in rows_meta:
            if measure_memory:
                peak, base, err = probe_memory(r["engine"], r["path"], feeds, n_threads, tmp)
                if err:
                    probe_errors.append(f"{r['variant']}: {err}")
            else:
                peak = base = None
            r["peak_rss_mb"], r["baseline_rss_mb"] = peak, base

    # ---- rows, table, notes
    model_label = "digits_cnn (demo)" if demo else path
    results = []
    for r in rows_meta:
        lat = _stats(times[r["variant"]])
        row = {"model": model_label, "variant": r["variant"], "batch": batch_n, "threads": n_threads,
               "latency_ms": lat, "throughput_per_s": batch_n / (lat["mean"] / 1e3),
               "peak_rss_mb": r["peak_rss_mb"], "model_bytes": r["model_bytes"], "accuracy": r["accuracy"],
               "iterations": len(times[r["variant"]]), "warmup": warmup,
               "load_ms": r["load_ms"], "first_run_ms": r["first_run_ms"],
               "baseline_rss_mb": r["baseline_rss_mb"],
               "input_shapes": {k: list(s) for k, s in shapes.items()}}
        row["accuracy"] = dict(row["accuracy"], samples=int(n_eval),
                               data="labelled" if row["accuracy"]["metric"] == "accuracy" else
                               ("--data" if data_arrays is not None else "synthesized"))
        if r["calibration"]:
            row["calibration"] = r["calibration"]
        if r["accuracy_is_reference"]:
            row["accuracy_is_reference"] = True
        results.append(row)

    say()
    say(format_table(results))
    say()
    n_iter = results[0]["iterations"]
    metric = results[0]["accuracy"]["metric"]
    if metric == "accuracy":
        say(f"accuracy: test-set accuracy on {n_eval} labelled samples of {os.path.basename(data)}")
    elif data_arrays is not None:
        say(f"accuracy: {metric.replace('_', ' ')} with qinfer float on {n_eval} samples of "
            f"{os.path.basename(data)} (no labels in it: add 'labels' for real accuracy)")
    else:
        say(f"accuracy: {metric.replace('_', ' ')} with qinfer float on {n_eval} synthesized inputs "
            f"(random data says little about real accuracy: pass --data DATA.npz with 'labels')")
    say(f"latency: {n_iter} timed runs per row after {warmup} warm-up rounds; throughput = batch / mean latency; "
        f"speedup = float p50 / row p50"
        + ("; p99 of fewer than 100 runs is close to the max" if n_iter < 100 else ""))
    if measure_memory:
        bases = [r["baseline_rss_mb"] for r in results if r["baseline_rss_mb"] is not None]
        say("peak RSS: high-water mark of a fresh process that loads only that row's model and runs it "
            f"{PROBE_RUNS} times" + (f" (of which {_span(bases)} MB is the interpreter, numpy and the engine "
                                     f"before loading)" if bases else ""))
        for e in probe_errors:
            say(f"note: peak RSS not measured for {e}")
    noisy = [r["variant"] for r in results if r["latency_ms"]["p90"] > 1.5 * r["latency_ms"]["p50"]]
    if noisy:
        say(f"note: noisy timings for {', '.join(noisy)} (p90 > 1.5 x p50): the machine is busy, or use "
            f"more iterations")
    if unavailable:
        say(f"note: {', '.join(unavailable)} not built yet in qinfer {qinfer.__version__} "
            f"({_not_built(unavailable)} missing); showing {', '.join(names)}")

    report = {"qinfer_version": qinfer.__version__, "machine": m,
              "settings": {"warmup": warmup, "iterations": iterations, "time_s": time_s,
                           "interleaved": True, "input": inputs_what,
                           "peak_rss": "VmHWM of a fresh process per row (loads and runs only that model)"},
              "results": results}
    if unavailable:
        report["unavailable_variants"] = unavailable
    if plot_path:
        points = plot(results, plot_path, title=f"{os.path.basename(path)}: batch {batch_n}, "
                                                f"{n_threads} threads, {m['cpu']}")
        report["plot"] = {"path": os.fspath(plot_path), "points": points}
        say(f"wrote {plot_path} ({len(points)} points)")
    if json_path:
        try:
            with open(json_path, "w") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
        except OSError as e:
            raise BenchmarkError(f"--json {json_path}: cannot write ({e.strerror or e})") from None
        say(f"wrote {json_path}")
    return report


def run_from_args(args):
    """Entry point of ``qinfer benchmark`` (cli.py parses, this runs)."""
    run(args.model, variants=args.variants, batch=args.batch, threads=args.threads,
        iterations=args.iterations, time_s=args.time, warmup=args.warmup,
        input_shapes=args.input_shape or (), data=args.data, compare=args.compare or (),
        json_path=args.json, plot_path=args.plot)
    return 0


def add_arguments(p):
    """The options of ``qinfer benchmark`` (SPEC section 2), added to an argparse (sub)parser."""
    p.add_argument("model", nargs="?", default=None,
                   help="an .onnx or float .qinf file (default: the bundled digits CNN demo)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1, or the model's fixed batch)")
    p.add_argument("--threads", type=int, default=None, help="threads per engine (default: physical cores)")
    p.add_argument("--iterations", type=int, default=None, help="timed rounds (default: a time budget)")
    p.add_argument("--time", type=float, default=None, metavar="SECONDS",
                   help=f"time budget per engine (default {DEFAULT_TIME_S:g} s)")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up rounds (default {DEFAULT_WARMUP})")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="a concrete shape for an input with symbolic dims (repeat per input)")
    p.add_argument("--data", metavar="DATA.npz",
                   help="real inputs: one array per input name (first axis = samples), optional 'labels'")
    p.add_argument("--variants", default=None, metavar="float,int8,...",
                   help="variants to build and compare: " + ", ".join(ALL_VARIANTS)
                   + " (default: " + ",".join(DEFAULT_VARIANTS) + "; the demo: all built in this version)")
    p.add_argument("--compare", action="append", metavar="onnxruntime",
                   help="also measure onnxruntime fp32 on the same ONNX file, interleaved")
    p.add_argument("--json", metavar="OUT.json", help="write the figures (SPEC section 4 schema)")
    p.add_argument("--plot", metavar="OUT.png", help="plot latency vs accuracy vs size (needs matplotlib)")
    return p
