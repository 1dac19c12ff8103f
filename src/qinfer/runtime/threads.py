"""Thread-count resolution, and control of the BLAS library numpy calls into.

Design: ``num_threads=None`` resolves once, the way scikit-learn does: ``QINFER_NUM_THREADS`` if set,
else the number of physical cores available to this process (affinity mask, cgroup CPU quota).
Heavy ops run on qinfer's own OpenMP kernels, which take their thread count per call. numpy's
OpenBLAS still serves small products (batch-1 dense layers, attention matmuls of the reference ops):
sessions pin it to one thread, so its pool never competes with OpenMP's for the cores and its
results do not depend on a thread count.
"""
import ctypes
import math
import os
import re
import threading

from .._config import NUM_THREADS_ENV, env_str
from ..errors import QinferError


def _cgroup_cpu_limit():
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return None


def physical_cores():
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    n = len(cores) or 1
    lim = _cgroup_cpu_limit()
    return min(n, lim) if lim else n


def resolve_num_threads(num_threads=None):
    if num_threads is None:
        env = env_str(NUM_THREADS_ENV)
        if env is not None:
            try:
                num_threads = int(env)
            except ValueError:
                raise QinferError(f"{NUM_THREADS_ENV}={env!r} is not an integer") from None
            if num_threads < 1:
                raise QinferError(f"{NUM_THREADS_ENV}={env!r}: the thread count must be >= 1")
            return num_threads
        return physical_cores()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise QinferError(f"num_threads must be a positive int or None, got {num_threads!r}")
    if num_threads < 1:
        raise QinferError(f"num_threads must be >= 1 (or None for the number of cores), got {num_threads}")
    return num_threads


class _Blas:
    """Set the thread count of the OpenBLAS that numpy loaded (no-op if none is found)."""

    def __init__(self):
        self._set = None
        self._current = None
        self._lock = threading.Lock()
        try:
            import numpy  # noqa: F401  (make sure its BLAS is loaded)
            with open("/proc/self/maps") as f:
                libs = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
        except OSError:
            libs = []
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                        "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int]
                    fn.restype = None
                    self._set = fn
                    self.library = path
                    return
        self.library = None

    def set_threads(self, n):
        if self._set is None or self._current == n:
            return
        with self._lock:
            self._set(int(n))
            self._current = n


blas = _Blas()
