"""Batch inference on Ray Data: one memory-mapped ``.qinf`` per actor, outputs as columns.

Design:

* **What travels, and what does not.** ``QinferPredictor`` is a callable class for
  ``ray.data.Dataset.map_batches``. Ray pickles the class (by reference: every worker imports qinfer)
  and its constructor arguments: the model path and a few options (threads, column names). Each
  actor then opens the model itself with ``InferenceSession(path)``: a ``.qinf`` file is
  memory-mapped, so the actors of one node share its pages through the page cache, and nothing of a
  session (plans, packed float weights, the mapping) is ever pickled. Pickling a predictor object
  pickles the same arguments (``__reduce__``): it is rebuilt, not copied, where it lands.
* **Threads multiply with actors.** Each actor asks Ray for ``num_threads`` CPUs and runs its session
  with that many OpenMP threads, so a node with C cores fits ``C // num_threads`` actors.
* **Columns in, columns out.** A batch is ``{column: ndarray}`` (``batch_format="numpy"``). Each model
  input reads one column, its own name unless ``input_columns`` maps it elsewhere; rows stored
  flattened (Parquet lists, ``[rows, n]`` arrays) are reshaped to the input's fixed dimensions. Each
  output becomes a column ``[rows, ...]``; ``keep_columns`` are copied through (ids, keys).
* **Batching and results.** The int8 kernels compute each row on its own in integer arithmetic, so a
  statically quantized model gives the outputs of one ``InferenceSession`` run however Ray cuts the
  data. Float layers may differ in the last bits between batch sizes (BLAS picks other code paths
  for other row counts), and dynamic quantization (``activations="dynamic"``) quantizes per batch:
  where bit-identical files matter, ``qinfer batch`` fixes the batches itself.
* **Ray is imported lazily**: importing this module needs numpy and qinfer only; ``predict`` and
  ``connect`` raise ``RayNotInstalledError`` (a ``QinferError``) when Ray is missing.
"""
import contextlib
import logging
import os
import socket
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InvalidInputError, QinferError
from ..model import open_graph
from ..runtime.session import InferenceSession

INSTALL_HINT = "pip install 'qinfer[ray]'"


class RayNotInstalledError(QinferError):
    """Ray (with Ray Data) is needed for this and cannot be imported."""


def require_ray():
    """The ``ray`` module with ``ray.data`` imported, or ``RayNotInstalledError`` saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayNotInstalledError(f"Ray is not installed ({e}); install it with: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connect(address: str = "local"):
    """Yield ``ray`` connected to a cluster; disconnect at the end if this call connected.

    ``address``: ``"local"`` starts a Ray instance on this machine (no dashboard) for the duration;
    ``"auto"``, ``"HOST:PORT"`` (a head node's GCS address) or ``"ray://HOST:10001"`` (Ray Client)
    join a running cluster. A process already connected to Ray keeps its connection and ``address`` is
    not used.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address not in ("local", "auto"):
        _check_reachable(address)
    try:
        if address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as e:   # Ray raises ConnectionError, ValueError, RuntimeError... by cause
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QinferError(f"Ray address {address!r}: cannot start or join a Ray cluster ({first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address, timeout_s=10.0):
    """A quick TCP check of ``HOST:PORT`` / ``ray://HOST:PORT``: ``ray.init`` retries an address that
    refuses connections for minutes before it gives up."""
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise QinferError(f"Ray address {address!r}: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise QinferError(f"Ray address {address!r}: cannot reach it ({e.strerror or e}); is a Ray head node "
                          f"running there (ray start --head)?") from None


def _positive(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise QinferError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_names(graph, input_columns, output_columns):
    inputs = [v.name for v in graph.inputs]
    outputs = [v.name for v in graph.outputs]
    for given, names, what in ((input_columns, inputs, "input"), (output_columns, outputs, "output")):
        unknown = [k for k in (given or {}) if k not in names]
        if unknown:
            raise InvalidInputError(f"{what}_columns names {unknown}, which the model does not have; "
                                    f"its {what}s are {names}")


def _row_shape(value):
    """The fixed dimensions of a sample (all but the first axis), or None if any is symbolic."""
    if value.shape is None or len(value.shape) == 0:
        return None
    rest = tuple(value.shape[1:])
    return rest if all(isinstance(d, int) for d in rest) else None


class QinferPredictor:
    """A callable class for ``ray.data.Dataset.map_batches``: runs a qinfer model on batches of rows.

    ``model_path``: a ``.qinf`` file (memory-mapped; an ``.onnx`` path works too but is converted on
    every actor), at the same path on every node. ``num_threads``: OpenMP threads of this actor's
    session (ask Ray for as many CPUs: ``num_cpus=num_threads``). ``input_columns``: ``{model input:
    column}`` where a column is not named like its input. ``output_columns``: ``{model output:
    column}``; when given, only these outputs are returned. ``keep_columns``: columns copied from the
    input batch to the output unchanged.

    Use with ``batch_format="numpy"``::

        ds.map_batches(QinferPredictor, fn_constructor_kwargs={"model_path": "m.qinf"},
                       batch_size=256, batch_format="numpy", num_cpus=1,
                       compute=ray.data.ActorPoolStrategy(size=4))

    or let ``predict(ds, "m.qinf")`` write that call.
    """

    def __init__(self, model_path, num_threads: int = 1, input_columns: Optional[Mapping[str, str]] = None,
                 output_columns: Optional[Mapping[str, str]] = None, keep_columns: Sequence[str] = ()):
        self._init_kwargs = dict(model_path=os.fspath(model_path), num_threads=num_threads,
                                 input_columns=dict(input_columns or {}),
                                 output_columns=None if output_columns is None else dict(output_columns),
                                 keep_columns=tuple(keep_columns))
        self.model_path = os.fspath(model_path)
        self.session = InferenceSession(self.model_path, num_threads=_positive(num_threads, "num_threads"))
        graph = self.session.graph
        _check_names(graph, input_columns, output_columns)
        self._inputs = list(graph.inputs)
        self._input_columns = {v.name: (input_columns or {}).get(v.name, v.name) for v in self._inputs}
        names = [v.name for v in graph.outputs]
        self._output_columns = ({n: n for n in names} if output_columns is None
                                else {n: output_columns[n] for n in names if n in output_columns})
        self._keep_columns = tuple(keep_columns)
        fixed = [v.shape[0] for v in self._inputs if v.shape and isinstance(v.shape[0], int)]
        self._fixed_batch = fixed[0] if fixed else None

    def __reduce__(self):
        # only the path and the options travel: the session is opened again where this lands
        return _rebuild, (type(self), self._init_kwargs)

    def __repr__(self):
        return f"{type(self).__name__}({self.model_path!r}, num_threads={self.session.num_threads})"

    # ------------------------------------------------------------------------------------ running
    def __call__(self, batch):
        if not isinstance(batch, Mapping):
            raise InvalidInputError(f"{type(self).__name__} takes batches as {{column: ndarray}}; got "
                                    f"{type(batch).__name__} (call map_batches with batch_format='numpy')")
        feeds = {}
        for v in self._inputs:
            column = self._input_columns[v.name]
            if column not in batch:
                raise InvalidInputError(
                    f"model input {v.name!r} reads column {column!r}, which the batch does not have; its "
                    f"columns are {sorted(batch)} (map inputs to columns with input_columns={{...}})")
            feeds[v.name] = _as_input(batch[column], v, column)
        outs = dict(zip([v.name for v in self.session.graph.outputs], self.run(feeds)))
        result = {}
        for column in self._keep_columns:
            if column not in batch:
                raise InvalidInputError(f"keep_columns names {column!r}, which the batch does not have; its "
                                        f"columns are {sorted(batch)}")
            result[column] = batch[column]
        for name, column in self._output_columns.items():
            result[column] = outs[name]
        return result

    def run(self, feeds: Mapping[str, np.ndarray]):
        """All outputs for ``feeds`` (``{input name: [rows, ...]}``), as ``InferenceSession.run``.

        A model whose batch dimension is fixed (exported for batch 1) runs the rows in slices of that
        size; the row count must be a multiple of it."""
        step = self._fixed_batch
        rows = len(next(iter(feeds.values()))) if feeds else 0
        if step is None or rows == step:
            return self.session.run(None, feeds)
        if rows % step:
            raise InvalidInputError(f"the model's batch dimension is fixed at {step}, and a batch of {rows} "
                                    f"rows does not split into batches of {step}; use a batch size that "
                                    f"is a multiple of {step}")
        parts = [self.session.run(None, {k: x[i:i + step] for k, x in feeds.items()})
                 for i in range(0, rows, step)]
        return [np.concatenate(outs) for outs in zip(*parts)]


def _rebuild(cls, kwargs):
    return cls(**kwargs)


def _as_input(column, value, column_name):
    """A batch column as the array input ``value`` takes: object rows stacked, flattened rows reshaped
    to the input's fixed dimensions. Dtype and shape mismatches are left to the session's checks."""
    x = column if isinstance(column, np.ndarray) else np.asarray(column)
    if x.dtype == object:   # Ray hands list / variable-shaped columns over as arrays of arrays
        try:
            x = np.stack([np.asarray(r) for r in x])
        except ValueError as e:
            raise InvalidInputError(f"column {column_name!r} (model input {value.name!r}): rows of "
                                    f"different shapes cannot form a batch ({e})") from None
    row = _row_shape(value)
    if row is not None and x.ndim >= 1 and tuple(x.shape[1:]) != row:
        per_row = int(np.prod(x.shape[1:], dtype=np.int64))
        if per_row == int(np.prod(row, dtype=np.int64)):
            x = x.reshape((x.shape[0],) + row)
    return x


def predict(dataset, model_path, *, batch_size: Optional[int] = 256, num_threads: int = 1,
            actors: Union[int, Tuple[int, int]] = 1, input_columns: Optional[Mapping[str, str]] = None,
            output_columns: Optional[Mapping[str, str]] = None, keep_columns: Iterable[str] = (),
            **map_batches_args):
    """``dataset`` with the model's outputs as columns: ``map_batches`` with ``QinferPredictor``.

    ``actors``: a fixed pool size, or ``(min, max)`` for an autoscaling pool; each actor reserves
    ``num_threads`` CPUs and runs its session with that many threads. ``batch_size``: rows per
    ``session.run``. ``input_columns`` / ``output_columns`` / ``keep_columns``: as
    ``QinferPredictor``. Other keyword arguments go to ``map_batches`` (``memory``, ``resources``,
    ``runtime_env``...). The model is opened here once to check names and paths before any actor
    starts; the path is made absolute, and must hold the same file on every node. Lazy, as
    ``map_batches``: nothing runs until the result is consumed.
    """
    ray = require_ray()
    num_threads = _positive(num_threads, "num_threads")
    if isinstance(actors, tuple):
        lo, hi = (_positive(a, "actors") for a in actors)
        compute = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    else:
        compute = ray.data.ActorPoolStrategy(size=_positive(actors, "actors"))
    if batch_size is not None:
        batch_size = _positive(batch_size, "batch_size")
    path = os.path.abspath(os.fspath(model_path))
    _check_names(open_graph(path), input_columns, output_columns)
    kwargs = dict(model_path=path, num_threads=num_threads, input_columns=input_columns,
                  output_columns=output_columns, keep_columns=tuple(keep_columns))
    return dataset.map_batches(QinferPredictor, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                               batch_format="numpy", compute=compute, num_cpus=num_threads,
                               **map_batches_args)


__all__ = ["QinferPredictor", "predict", "connect", "require_ray", "RayNotInstalledError"]
