"""Which kernels run on this CPU: feature detection, the QINFER_ISA cap, and a runtime report.

The C side (kernels/cpu.c, kernels/dispatch.c) detects features once with cpuid + xgetbv and picks
the best kernel variant per slot. This module reads ``QINFER_ISA`` once, at import, and caps the
dispatch tier with it: ``avx512vnni`` | ``avx2`` | ``scalar``. Asking for a tier this CPU (or this
build) cannot run, or an unknown name, raises :class:`qinfer.errors.QinferError` at import.
"""
from contextlib import contextmanager

from .._config import ISA_ENV, env_str
from .._ext import _kernels
from ..errors import QinferError

#: tier names, lowest first; a tier allows every tier below it
TIERS = tuple(_kernels.TIERS)


#: CPU features each tier's kernels are compiled with (for the error message; C decides)
_TIER_FEATURES = {
    "scalar": (),
    "avx2": ("avx2", "fma", "f16c", "os_ymm"),
    "avx512vnni": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "fma", "os_zmm"),
}


def _tier_number(name, source):
    key = str(name).strip().lower()
    if key not in TIERS:
        raise QinferError(f"{source}: unknown ISA tier {name!r}; expected one of "
                          f"{', '.join(reversed(TIERS))}")
    t = TIERS.index(key)
    if not _kernels.tier_supported(t):
        best = TIERS[_kernels.best_tier()]
        missing = [f for f in _TIER_FEATURES[key] if not _kernels.cpu_features().get(f)]
        why = (f"this CPU lacks {', '.join(missing)}" if missing
               else "this build of qinfer was compiled without that tier")
        raise QinferError(f"{source}: ISA tier {key!r} cannot run here ({why}); the best this "
                          f"machine runs is {best!r}. Unset {ISA_ENV} or pick a lower tier.")
    return t


def _apply_env():
    value = env_str(ISA_ENV)
    if value is None:
        return _kernels.set_isa_cap(_kernels.best_tier())
    return _kernels.set_isa_cap(_tier_number(value, f"environment variable {ISA_ENV}={value!r}"))


_apply_env()


def isa():
    """Name of the ISA tier the kernels now run at ("avx512vnni", "avx2" or "scalar")."""
    return TIERS[_kernels.isa_tier()]


def best_isa():
    """Highest tier this CPU and build can run, whatever the cap."""
    return TIERS[_kernels.best_tier()]


def supported_isas():
    """Tiers this machine can run, lowest first (what tests parametrize over)."""
    return [t for i, t in enumerate(TIERS) if _kernels.tier_supported(i)]


def set_isa(name):
    """Cap the kernel tier at ``name`` (same names and errors as QINFER_ISA); returns the previous
    tier's name. Meant for tests and benchmarks: not safe while kernels run in other threads."""
    prev = isa()
    _kernels.set_isa_cap(_tier_number(name, "set_isa"))
    return prev


@contextmanager
def isa_cap(name):
    """``with isa_cap("avx2"): ...`` runs the block at that tier, then restores the previous one."""
    prev = set_isa(name)
    try:
        yield name
    finally:
        set_isa(prev)


def cpu_features():
    """{feature: bool}: sse41, avx, avx2, fma, f16c, avx512f/bw/vl/dq, avx512vnni, avx512bf16,
    avxvnni, and os_ymm / os_zmm (the OS saves those registers; features needing them count only
    when it does)."""
    return _kernels.cpu_features()


def kernel_table():
    """{slot: name of the kernel chosen for it}, e.g. {"dwconv2d_f32": "qi_dwconv2d_f32__avx512vnni"}."""
    return _kernels.kernel_names()


def openmp_enabled():
    """Whether the kernels were built with OpenMP (else they run single-threaded)."""
    return _kernels.openmp_enabled()


def max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return _kernels.max_threads()


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo, else the platform module)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def runtime_info():
    """Multi-line report for ``qinfer info`` / ``qinfer.show_runtime()``: CPU, features, tier,
    kernel per slot, OpenMP and threads."""
    feats = cpu_features()
    env = env_str(ISA_ENV)
    lines = [
        f"cpu:            {cpu_name()}",
        "features:       " + (" ".join(k for k, v in feats.items() if v) or "(none detected)"),
        "missing:        " + (" ".join(k for k, v in feats.items() if not v) or "-"),
        f"isa tier:       {isa()} (best {best_isa()}; {ISA_ENV}={env if env else 'unset'})",
        f"openmp:         {'yes' if openmp_enabled() else 'no'}, max threads {max_threads()}",
        "kernels:",
    ]
    table = kernel_table()
    width = max((len(s) for s in table), default=0)
    lines += [f"  {slot:<{width}}  {name}" for slot, name in table.items()]
    return "\n".join(lines)
