"""``qinfer batch``: run a model over files of samples, on a local thread pool or on a Ray cluster.

Formats (docs/scale-out.md says the same for users):

* **Input** (``--input``): a directory, or one file, of
  - ``.npz``: one array per model input, keyed by the input's name, first axis = samples (the
    ``DATA.npz`` convention of ``qinfer quantize`` and ``evaluate``; other arrays are ignored);
  - ``.npy``: one array ``[samples, ...]`` (single-input models);
  - ``.parquet``: one column per model input, named like it, one row per sample holding the sample's
    values flattened in C order (a list column; a plain column where a sample is one value); each row
    is reshaped to the input's shape without its first axis, whose other dimensions must be fixed.
  A directory is read in file-name order; files with other endings and hidden files are skipped.
  Arrays must have the input's dtype (no silent casts).
* **Output** (``--output DIR``): one ``.npz`` per input *shard*, holding one array per model output
  (the model's output order), first axis = the shard's samples in input order. A ``.npy`` or
  ``.npz`` file is one shard, written as ``<stem>.npz``; each row group of a Parquet file is one shard,
  written as ``<stem>-<row group, 5 digits>.npz``.

Design:

* **One plan, two executors.** Each shard is cut into batches of ``batch_size`` rows from its start;
  the plan is the list of ``(shard, start, stop)``. Locally, ``actors`` threads (each with its own
  ``ShardRunner``, i.e. its own session over the same memory-mapped model) run the plan; on Ray, the
  plan becomes a ``ray.data`` dataset of those triples, mapped by ``ShardRunner`` actors
  (``map_batches``, one triple per call), which read their rows from the files themselves, so the
  input never passes through the driver. Both make exactly the same ``session.run`` calls on the
  same rows, so the files are byte-identical whatever the executor, the number of actors or threads:
  float layers (whose last bits can depend on the batch size) and dynamic quantization (per batch)
  see the same batches either way.
* **Checks first.** Every file's header (``.npy`` headers, ``.npz`` members, the Parquet schema) is
  checked against the model's inputs (names, dtypes, ranks, fixed dimensions, sample counts) before
  any sample runs: a wrong file is a one-line error naming file and input, not a failure an hour
  into a cluster job. Row lengths of Parquet lists are checked as row groups are read.
* **Deterministic files.** The driver collects each shard's outputs (by shard and row number, so the
  order results arrive in does not matter) and writes the shard's ``.npz`` when it is complete:
  uncompressed, members in output order, a fixed zip timestamp (``np.savez`` stamps the current
  time, which would make two runs of the same job differ), atomically (a hidden temporary file,
  then rename). Ray runs keep Ray Data's ``preserve_order`` on, so shards complete in order and the
  driver holds about one shard's outputs at a time.
"""
import logging
import os
import sys
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple

import numpy as np

from ..errors import InvalidInputError, QinferError
from ..model import open_graph
from ..runtime.session import _fmt
from .ray import QinferPredictor, _positive, _row_shape

INPUT_SUFFIXES = (".npy", ".npz", ".parquet")
DEFAULT_BATCH_SIZE = 256
SHARD_COLUMN = "__qinfer_shard"
ROW_COLUMN = "__qinfer_row"
#: the plan's blocks on Ray: enough for every actor to get work, few enough to stay cheap to create
RAY_BLOCKS_PER_ACTOR = 16
RAY_MIN_BLOCKS = 64
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_RAY_RETRY_NOTE = "\nFailed to "     # what Ray Data appends to a failed map's exception


class Shard(NamedTuple):
    path: str        # absolute path of the input file
    row_group: int   # Parquet row group; -1 for .npy / .npz
    rows: int        # samples
    output: str      # file name written in the output directory


# ------------------------------------------------------------------------------------------ input

def scan(path, inputs) -> List[Shard]:
    """The shards of ``path`` (a directory or one file), each checked against the model ``inputs``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidInputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith(".") and n.lower().endswith(INPUT_SUFFIXES)
                       and os.path.isfile(os.path.join(path, n)))
        if not names:
            raise InvalidInputError(f"{path}: no .npy, .npz or .parquet files in this directory")
        files = [os.path.join(path, n) for n in names]
    elif path.lower().endswith(INPUT_SUFFIXES):
        files = [path]
    else:
        raise InvalidInputError(f"{path}: expected a directory or a .npy, .npz or .parquet file")
    shards, writer_of = [], {}
    for f in files:
        for shard in _scan_file(os.path.abspath(f), inputs):
            if shard.output in writer_of:
                raise InvalidInputError(f"{f} and {writer_of[shard.output]} would both be written to "
                                        f"{shard.output}; rename one of them")
            writer_of[shard.output] = f
            shards.append(shard)
    return shards


def _scan_file(path, inputs):
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower()
    try:
        if ext == ".parquet":
            return _scan_parquet(path, stem, inputs)
        headers = _npz_headers(path, inputs) if ext == ".npz" else _npy_headers(path, inputs)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InvalidInputError(f"{path}: cannot read it as a {ext} file ({e})") from None
    rows = None
    for v in inputs:
        shape, dtype = headers[v.name]
        where = f"{path}: input {v.name!r}"
        if dtype.hasobject:
            raise InvalidInputError(f"{where}: holds Python objects, which qinfer never unpickles")
        if v.dtype is not None and dtype.name != v.dtype:
            raise InvalidInputError(f"{where}: expected dtype {v.dtype}, got {dtype.name} "
                                    f"(save it with x.astype(np.{v.dtype}))")
        if len(shape) == 0:
            raise InvalidInputError(f"{where}: a scalar; expected [samples, ...]")
        if v.shape is not None:
            if len(shape) != len(v.shape):
                raise InvalidInputError(f"{where}: expected rank {len(v.shape)} (input shape {_fmt(v.shape)}, "
                                        f"first axis = samples), got shape {list(shape)}")
            for axis, (want, got) in enumerate(zip(v.shape[1:], shape[1:]), 1):
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(f"{where}: dimension {axis} must be {want} (input shape "
                                            f"{_fmt(v.shape)}), got shape {list(shape)}")
        if rows is not None and shape[0] != rows:
            raise InvalidInputError(f"{where}: {shape[0]} samples, but the file's other inputs have {rows}")
        rows = shape[0]
    if not rows:
        raise InvalidInputError(f"{path}: holds 0 samples")
    return [Shard(path, -1, rows, stem + ".npz")]


def _npy_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), dtype


def _npy_headers(path, inputs):
    if len(inputs) != 1:
        raise InvalidInputError(f"{path}: a .npy file holds one array, and the model has {len(inputs)} inputs "
                                f"{[v.name for v in inputs]}: store them in a .npz, one array per input name")
    with open(path, "rb") as f:
        return {inputs[0].name: _npy_header(f)}


def _npz_headers(path, inputs):
    with zipfile.ZipFile(path) as z:
        arrays = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        headers = {}
        for v in inputs:
            if v.name not in arrays:
                raise InvalidInputError(f"{path}: no array named {v.name!r} (the file holds {arrays}); the "
                                        f"model's inputs are {[u.name for u in inputs]}")
            with z.open(v.name + ".npy") as f:
                headers[v.name] = _npy_header(f)
    return headers


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise QinferError("reading Parquet needs pyarrow: pip install pyarrow (or 'qinfer[ray]')") from None
    return pyarrow


def _is_list(pa, t):
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _scan_parquet(path, stem, inputs):
    pa = _pyarrow()
    try:
        pf = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInputError(f"{path}: cannot read it as a Parquet file ({e})") from None
    with pf:
        schema = pf.schema_arrow
        for v in inputs:
            if v.name not in schema.names:
                raise InvalidInputError(f"{path}: no column named {v.name!r} (its columns are {schema.names}); "
                                        f"the model's inputs are {[u.name for u in inputs]}")
            if _row_shape(v) is None:
                raise InvalidInputError(f"{path}: input {v.name!r} has shape {_fmt(v.shape)}: Parquet rows are "
                                        f"flattened, so every dimension but the first must be fixed; use .npz")
            t = schema.field(v.name).type
            values = t.value_type if _is_list(pa, t) else t
            try:
                dtype = np.dtype(values.to_pandas_dtype())
            except (NotImplementedError, TypeError):
                dtype = np.dtype(object)
            if dtype.name != v.dtype:
                raise InvalidInputError(f"{path}: column {v.name!r}: expected {v.dtype} values, got {t} "
                                        f"(write the column with {v.dtype} values)")
        meta = pf.metadata
        shards = [Shard(path, i, meta.row_group(i).num_rows, f"{stem}-{i:05d}.npz")
                  for i in range(meta.num_row_groups)]
    empty = [s.row_group for s in shards if s.rows == 0]
    if not shards or empty:
        raise InvalidInputError(f"{path}: holds 0 samples" + (f" in row group {empty[0]}" if shards else ""))
    return shards


def _read_parquet(shard, inputs):
    pa = _pyarrow()
    with pa.parquet.ParquetFile(shard.path) as pf:
        table = pf.read_row_group(shard.row_group, columns=[v.name for v in inputs])
    return {v.name: _parquet_column(pa, table.column(v.name).combine_chunks(), v, shard) for v in inputs}


def _parquet_column(pa, arr, value, shard):
    row = _row_shape(value)
    size = int(np.prod(row, dtype=np.int64))
    where = f"{shard.path}: row group {shard.row_group}, column {value.name!r}"
    if arr.null_count:
        bad = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise InvalidInputError(f"{where}: row {bad} is null")
    if _is_list(pa, arr.type):
        if pa.types.is_fixed_size_list(arr.type):
            lengths = np.full(len(arr), arr.type.list_size)
        else:
            lengths = np.diff(np.asarray(arr.offsets))
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            raise InvalidInputError(f"{where}: row {bad[0]} holds {lengths[bad[0]]} values; the input's "
                                    f"samples {list(row)} need {size}")
        flat = arr.flatten()
    elif size != 1:
        raise InvalidInputError(f"{where}: one value per row; the input's samples {list(row)} need {size} "
                                f"(store each sample as a list of its values, flattened)")
    else:
        flat = arr
    if flat.null_count:
        raise InvalidInputError(f"{where}: holds null values")
    return flat.to_numpy(zero_copy_only=False).reshape((len(arr),) + row)


class ShardReader:
    """Rows ``[start, stop)`` of a shard as feeds; keeps the last shard it read (the plan's batches of
    one shard are consecutive), ``.npy`` files memory-mapped."""

    def __init__(self, shards, inputs):
        self.shards = shards
        self.inputs = inputs
        self._index = None
        self._arrays = None

    def read(self, index, start, stop):
        if index != self._index:
            self._arrays = self._load(self.shards[index])
            self._index = index
        return {name: a[start:stop] for name, a in self._arrays.items()}

    def _load(self, shard):
        if shard.row_group >= 0:
            return _read_parquet(shard, self.inputs)
        try:
            if shard.path.lower().endswith(".npy"):
                return {self.inputs[0].name: np.load(shard.path, mmap_mode="r", allow_pickle=False)}
            with np.load(shard.path, allow_pickle=False) as z:
                return {v.name: z[v.name] for v in self.inputs}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InvalidInputError(f"{shard.path}: cannot read ({e})") from None


# ------------------------------------------------------------------------------------------ running

class ShardRunner(QinferPredictor):
    """``QinferPredictor`` over the plan: reads its rows from the input files and runs them.

    ``run_rows(shard, start, stop)`` -> ``{output name: array}`` (the local thread pool calls it). As a
    ``map_batches`` callable, a batch is ``{"shard", "start", "stop"}`` columns and the result holds
    the outputs of those rows plus ``SHARD_COLUMN`` and ``ROW_COLUMN`` saying where each row belongs.
    What Ray pickles: the model path, the thread count and the shard list (paths and row counts).
    """

    def __init__(self, model_path, num_threads, shards):
        super().__init__(model_path, num_threads=num_threads)
        self._init_kwargs = dict(model_path=self.model_path, num_threads=num_threads, shards=list(shards))
        self._reader = ShardReader(list(shards), self._inputs)
        self._names = [v.name for v in self.session.graph.outputs]

    def run_rows(self, index, start, stop):
        outs = self.run(self._reader.read(index, start, stop))
        for name, y in zip(self._names, outs):
            if y.ndim == 0 or len(y) != stop - start:
                raise InvalidInputError(f"output {name!r} has shape {list(y.shape)} for {stop - start} samples: "
                                        f"qinfer batch needs outputs whose first axis is the sample")
        return dict(zip(self._names, outs))

    def __call__(self, batch):
        plan = list(zip(*(np.asarray(batch[k]).tolist() for k in ("shard", "start", "stop"))))
        parts = [self.run_rows(s, a, b) for s, a, b in plan]
        result = {name: np.concatenate([p[name] for p in parts]) for name in self._names}
        result[SHARD_COLUMN] = np.concatenate([np.full(b - a, s, dtype=np.int64) for s, a, b in plan])
        result[ROW_COLUMN] = np.concatenate([np.arange(a, b, dtype=np.int64) for s, a, b in plan])
        return result


def make_plan(shards, batch_size):
    """``[(shard index, start, stop)]``: each shard cut into batches of ``batch_size`` from its start."""
    return [(i, start, min(start + batch_size, s.rows))
            for i, s in enumerate(shards) for start in range(0, s.rows, batch_size)]


def run_local(model_path, shards, plan, threads, workers):
    """Yield ``(shard index, rows, {output: array})`` for the plan, in order, from ``workers`` threads
    that each run a ``ShardRunner`` with ``threads`` threads."""
    local = threading.local()

    def work(item):
        runner = getattr(local, "runner", None)
        if runner is None:
            runner = local.runner = ShardRunner(model_path, threads, shards)
        index, start, stop = item
        return index, slice(start, stop), runner.run_rows(index, start, stop)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qinfer-batch")
    try:
        window = deque()
        for item in plan:
            window.append(pool.submit(work, item))
            if len(window) > 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(model_path, shards, plan, threads, actors, address):
    """As ``run_local``, on a Ray cluster (see ``qinfer.integrations.ray.connect`` for ``address``):
    ``actors`` ``ShardRunner`` actors of ``threads`` CPUs each."""
    from .ray import connect
    with connect(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < actors * threads:
            raise QinferError(f"--actors {actors} x --threads {threads} need {actors * threads} CPUs; the Ray "
                              f"cluster has {cpus:g}: ask for fewer actors or threads")
        # Ray Data's own progress and error log lines would repeat what the bar and the one-line error
        # say; the actors' errors come back as themselves (not wrapped in UserCodeException)
        ctx = ray.data.DataContext.get_current()
        log = logging.getLogger("ray.data")
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception,
                 log.level)
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
        ctx.raise_original_map_exception = True
        log.setLevel(logging.CRITICAL)
        try:
            items = [{"shard": s, "start": a, "stop": b} for s, a, b in plan]
            blocks = min(len(items), max(RAY_MIN_BLOCKS, RAY_BLOCKS_PER_ACTOR * actors))
            ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
                ShardRunner, fn_constructor_kwargs=dict(model_path=model_path, num_threads=threads, shards=shards),
                batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=threads)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                where, rows = np.asarray(batch.pop(SHARD_COLUMN)), np.asarray(batch.pop(ROW_COLUMN))
                for index in np.unique(where):
                    mask = where == index
                    yield int(index), rows[mask], {k: np.asarray(v)[mask] for k, v in batch.items()}
        except Exception as e:
            cause = qinfer_cause(e)
            if cause is None or cause is e:
                raise
            raise cause from None
        finally:
            (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception,
             level) = saved
            log.setLevel(level)


def qinfer_cause(exc):
    """The ``QinferError`` an actor raised, out of the exceptions Ray wraps it in (or None), without
    the retry advice Ray Data appends to its message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)   # RayTaskError: the exception raised on the worker
        if isinstance(exc, QinferError) and not isinstance(inner, BaseException):
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (exc.args[0].split(_RAY_RETRY_NOTE, 1)[0],) + exc.args[1:]
            return exc
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
    return None


# ------------------------------------------------------------------------------------------ output

def write_npz(path, arrays):
    """``np.savez`` with a fixed timestamp, so the same arrays always give the same bytes; atomic."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for key, a in arrays.items():
                with z.open(zipfile.ZipInfo(key + ".npy", date_time=_ZIP_TIME), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise QinferError(f"{path}: cannot write ({e.strerror or e})") from None


class ShardWriter:
    """Collects outputs by shard and row; writes a shard's ``.npz`` as soon as all its rows are in."""

    def __init__(self, shards, output_dir, output_names):
        self.shards = shards
        self.output_dir = output_dir
        self.names = output_names
        self.written = 0
        self._open = {}      # shard index -> [arrays, rows filled]

    def add(self, index, rows, outs):
        shard = self.shards[index]
        entry = self._open.get(index)
        if entry is None:
            entry = self._open[index] = [{n: np.empty((shard.rows,) + outs[n].shape[1:], outs[n].dtype)
                                          for n in self.names}, 0]
        arrays = entry[0]
        for n in self.names:
            y, dst = outs[n], arrays[n]
            if y.shape[1:] != dst.shape[1:] or y.dtype != dst.dtype:
                raise QinferError(f"{shard.path}: output {n!r} is {y.dtype} {list(y.shape[1:])} per sample in one "
                                  f"batch and {dst.dtype} {list(dst.shape[1:])} in another; qinfer batch needs "
                                  f"the same output shape for every sample")
            dst[rows] = y
        entry[1] += len(outs[self.names[0]])
        if entry[1] == shard.rows:
            write_npz(os.path.join(self.output_dir, shard.output), arrays)
            del self._open[index]
            self.written += 1

    def close(self):
        if self._open or self.written != len(self.shards):
            missing = [self.shards[i].output for i in range(len(self.shards)) if i in self._open]
            raise QinferError(f"{len(self.shards) - self.written} output files incomplete ({missing[:3]}); "
                              f"the run lost rows")


def _output_dir(output_dir, input_path):
    folder = input_path if os.path.isdir(input_path) else os.path.dirname(os.path.abspath(input_path))
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise QinferError(f"--output {output_dir}: exists and is not a directory")
        if os.path.samefile(output_dir, folder):
            raise QinferError(f"--output {output_dir}: is the input's directory; outputs are named after the "
                              f"inputs and would overwrite them: choose another directory")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise QinferError(f"--output {output_dir}: cannot create the directory ({e.strerror or e})") from None


def run_batch(model, input_path, output_dir, *, ray_address=None, batch_size=DEFAULT_BATCH_SIZE, threads=None,
              actors=1, progress=None):
    """Run ``model`` over ``input_path`` and write one ``.npz`` per shard into ``output_dir``.

    ``ray_address``: None runs on a local thread pool of ``actors`` workers; else on Ray (``"local"``,
    ``"auto"``, ``"HOST:PORT"``) with ``actors`` actors. ``threads``: threads per worker / actor
    (default: on Ray 1, locally the physical cores divided among the workers). Returns a summary dict.
    """
    from ..benchmark import _bar, _progress_enabled
    from ..runtime.threads import resolve_num_threads
    batch_size = _positive(batch_size, "--batch-size")
    actors = _positive(actors, "--actors")
    if threads is None:
        threads = 1 if ray_address else max(1, resolve_num_threads(None) // actors)
    threads = _positive(threads, "--threads")
    model_path = os.path.abspath(os.fspath(model))
    graph = open_graph(model_path)
    shards = scan(input_path, list(graph.inputs))
    _output_dir(os.fspath(output_dir), os.fspath(input_path))
    plan = make_plan(shards, batch_size)
    if ray_address:
        pieces = run_ray(model_path, shards, plan, threads, actors, ray_address)
    else:
        pieces = run_local(model_path, shards, plan, threads, actors)
    total = sum(s.rows for s in shards)
    writer = ShardWriter(shards, os.fspath(output_dir), [v.name for v in graph.outputs])
    bar = _bar(_progress_enabled(progress), total, "qinfer batch", "sample")
    t0 = time.perf_counter()
    try:
        for index, rows, outs in pieces:
            writer.add(index, rows, outs)
            if bar is not None:
                bar.update(len(outs[writer.names[0]]))
    finally:
        pieces.close()
        if bar is not None:
            bar.close()
    writer.close()
    return dict(files=writer.written, samples=total, seconds=time.perf_counter() - t0, output_dir=output_dir,
                executor=f"Ray at {ray_address}" if ray_address else "local", actors=actors, threads=threads)


# ------------------------------------------------------------------------------------------ command

def add_arguments(p):
    """The options of ``qinfer batch``, added to an argparse (sub)parser."""
    p.add_argument("model", help="the model: a .qinf file (or .onnx)")
    p.add_argument("--input", required=True, metavar="DIR_OR_PARQUET",
                   help="a directory of .npz (one array per input name) / .npy (single input) / .parquet "
                        "(one column per input, rows flattened) files, or one such file")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="directory for the outputs: one .npz per input file (per Parquet row group)")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="run on Ray: 'local' (start Ray on this machine), 'auto', or a head node's HOST:PORT; "
                        "default: a thread pool in this process")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"samples per run (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads per actor / worker (default: 1 on Ray; locally the cores divided among workers)")
    p.add_argument("--actors", type=int, default=1, metavar="N",
                   help="Ray actors, or local worker threads, each with its own session (default 1)")
    return p


def run_from_args(args):
    r = run_batch(args.model, args.input, args.output, ray_address=args.ray_address, batch_size=args.batch_size,
                  threads=args.threads, actors=args.actors)
    rate = r["samples"] / r["seconds"] if r["seconds"] > 0 else float("inf")
    print(f"wrote {r['files']} files ({r['samples']:,} samples) to {r['output_dir']} in {r['seconds']:.2f} s, "
          f"{rate:,.0f} samples/s ({r['executor']}: {r['actors']} x {r['threads']} threads)", file=sys.stdout)
    return r


__all__ = ["run_batch", "scan", "make_plan", "run_local", "run_ray", "write_npz", "Shard", "ShardReader",
           "ShardRunner", "ShardWriter", "add_arguments", "run_from_args"]
