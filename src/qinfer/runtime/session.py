"""``InferenceSession``: ONNX Runtime's session API over qinfer's planner.

Design: inputs are validated once per call against the graph's declared dtypes and (symbolic) shapes,
so a wrong feed is an ``InvalidInputError`` naming expected vs. got, never a crash in a kernel. All
per-call state lives in the call (the executor copies a slot list), so one session may be shared by
threads. Plans are cached per input-shape signature.
"""
import threading

import numpy as np

from ..errors import InvalidInputError, QinferError
from ..model import open_graph
from . import memory, threads
from .planner import Executor, Program

_ORT_TYPES = {
    "float32": "tensor(float)", "float64": "tensor(double)", "float16": "tensor(float16)",
    "int8": "tensor(int8)", "int16": "tensor(int16)", "int32": "tensor(int32)", "int64": "tensor(int64)",
    "uint8": "tensor(uint8)", "uint16": "tensor(uint16)", "uint32": "tensor(uint32)",
    "uint64": "tensor(uint64)", "bool": "tensor(bool)",
}


class NodeArg:
    """What ``get_inputs()`` / ``get_outputs()`` return (ONNX Runtime's NodeArg fields)."""

    def __init__(self, name, dtype, shape):
        self.name = name
        self.dtype = dtype
        self.type = _ORT_TYPES.get(dtype, f"tensor({dtype})")
        self.shape = list(shape) if shape is not None else None

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class ModelMetadata:
    def __init__(self, meta, graph_name):
        self.producer_name = meta.get("producer_name", "")
        self.graph_name = meta.get("graph_name", graph_name)
        self.domain = meta.get("domain", "")
        self.description = meta.get("doc_string", "")
        self.graph_description = meta.get("graph_doc_string", "")
        self.version = int(meta.get("model_version", 0) or 0)
        self.custom_metadata_map = dict(meta.get("custom_metadata_map", {}))


class InferenceSession:
    """Run a qinfer model; a drop-in for ``onnxruntime.InferenceSession`` where applications use it.

    ``model``: a ``.qinf`` or ``.onnx`` path, ONNX bytes, an ``onnx.ModelProto`` or a ``qinfer.Model``.
    ``num_threads``: None = physical cores (or ``QINFER_NUM_THREADS``); ONNX Runtime's ``sess_options``
    (its ``intra_op_num_threads``) is honoured when ``num_threads`` is not given.
    """

    def __init__(self, model, sess_options=None, providers=None, provider_options=None,
                 num_threads=None, **kwargs):
        if num_threads is None and sess_options is not None:
            n = int(getattr(sess_options, "intra_op_num_threads", 0) or 0)
            num_threads = n if n > 0 else None
        self._num_threads = threads.resolve_num_threads(num_threads)
        memory.keep_freed_memory()    # (once per process: a run's tensors reuse the last run's pages)
        self._graph = open_graph(model)
        self._program = Program(self._graph, self._num_threads)
        self._executor = Executor(self._program)
        self._inputs = [NodeArg(v.name, v.dtype, v.shape) for v in self._graph.inputs]
        self._outputs = [NodeArg(v.name, v.dtype, v.shape) for v in self._graph.outputs]
        self._input_index = {v.name: i for i, v in enumerate(self._graph.inputs)}
        self._output_index = {v.name: i for i, v in enumerate(self._graph.outputs)}
        self._lock = threading.Lock()
        self._in_slots = [(v.name, self._program.input_slots[i])
                          for i, v in enumerate(self._graph.inputs)]
        self._valid = set()   # input signatures (shapes, dtypes) that passed _validate

    # -------------------------------------------------------------- ONNX Runtime surface
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_overridable_initializers(self):
        return []

    def get_modelmeta(self):
        return ModelMetadata(self._graph.metadata, self._graph.name)

    def get_providers(self):
        return ["QinferCPUExecutionProvider"]

    def get_provider_options(self):
        return {"QinferCPUExecutionProvider": {"num_threads": str(self._num_threads)}}

    def get_session_options(self):
        return None

    @property
    def num_threads(self):
        return self._num_threads

    @property
    def graph(self):
        return self._graph

    def run(self, output_names, input_feed, run_options=None):
        if not isinstance(input_feed, dict):
            raise InvalidInputError(f"feeds must be a dict {{input name: array}}, got {type(input_feed).__name__}")
        feeds, signature = self._validate(input_feed)
        if output_names is None:
            picks = None
        else:
            if isinstance(output_names, str):
                output_names = [output_names]
            picks = []
            for name in output_names:
                if name not in self._output_index:
                    raise InvalidInputError(
                        f"unknown output {name!r}; the model's outputs are {list(self._output_index)}")
                picks.append(self._output_index[name])
        threads.blas.set_threads(1)   # BLAS only serves small products here; OpenMP does the rest
        outs = self._executor.run(feeds, signature)
        result = []
        consts = self._graph.initializers
        for i, (v, arr) in enumerate(zip(self._graph.outputs, outs)):
            if picks is not None and i not in picks:
                result.append(None)
                continue
            arr = np.asarray(arr)
            if v.name in consts or not arr.flags.writeable or not arr.flags.owndata:
                arr = np.array(arr)    # never hand out views of weights or of other buffers
            result.append(arr)
        if picks is not None:
            return [result[i] for i in picks]
        return result

    # -------------------------------------------------------------- validation
    #: input signatures remembered as valid (a service fed ever-new shapes validates the others)
    MAX_VALID = 256

    def _validate(self, input_feed):
        """(feeds by slot, signature). The checks depend only on the inputs' names, shapes and
        dtypes, so C-contiguous arrays whose signature passed them once skip them (about 4 us of
        a small model's 26 us run)."""
        if len(input_feed) == len(self._in_slots):
            feeds, sig = [], []
            for name, slot in self._in_slots:
                x = input_feed.get(name)
                if type(x) is not np.ndarray or not x.flags.c_contiguous:
                    break
                feeds.append((slot, x))
                sig.append((x.shape, x.dtype.str))
            else:
                sig = tuple(sig)
                if sig in self._valid:
                    return feeds, sig
        feeds, sig = self._validate_full(input_feed)
        if len(self._valid) < self.MAX_VALID:
            self._valid.add(sig)
        return feeds, sig

    def _validate_full(self, input_feed):
        unknown = [k for k in input_feed if k not in self._input_index]
        if unknown:
            raise InvalidInputError(
                f"unknown input name(s) {unknown}; the model's inputs are {list(self._input_index)}")
        missing = [v.name for v in self._graph.inputs if v.name not in input_feed]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; the model's inputs are {list(self._input_index)}")
        feeds = []
        sig = []
        for v in self._graph.inputs:
            x = input_feed[v.name]
            if not isinstance(x, np.ndarray):
                try:
                    x = np.asarray(x)
                except Exception as e:
                    raise InvalidInputError(f"input {v.name!r}: cannot convert to an array ({e})") from None
            if x.dtype == object:
                raise InvalidInputError(f"input {v.name!r}: expected {v.dtype}, got an object array")
            if v.dtype is not None and x.dtype.name != v.dtype:
                raise InvalidInputError(
                    f"input {v.name!r}: expected dtype {v.dtype}, got {x.dtype.name} "
                    f"(convert with x.astype(np.{v.dtype}))")
            if v.shape is not None:
                if x.ndim != len(v.shape):
                    raise InvalidInputError(
                        f"input {v.name!r}: expected rank {len(v.shape)} with shape {_fmt(v.shape)}, "
                        f"got rank {x.ndim} with shape {list(x.shape)}")
                for axis, (want, got) in enumerate(zip(v.shape, x.shape)):
                    if isinstance(want, int) and want != got:
                        raise InvalidInputError(
                            f"input {v.name!r}: dimension {axis} must be {want} (shape {_fmt(v.shape)}), "
                            f"got {got} (shape {list(x.shape)})")
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            feeds.append((self._program.input_slots[self._input_index[v.name]], x))
            sig.append((x.shape, x.dtype.str))
        return feeds, tuple(sig)


def _fmt(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


__all__ = ["InferenceSession", "NodeArg", "ModelMetadata", "QinferError"]
