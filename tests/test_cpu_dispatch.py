"""CPU feature detection, the QINFER_ISA cap and the kernel list (kernels/ukernels.inc)."""
import os
import re
import subprocess
import sys

import pytest

from qinfer import errors
from qinfer._config import ISA_ENV
from qinfer._ext import _kernels as K
from qinfer.runtime import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UKERNELS_INC = os.path.join(ROOT, "kernels", "ukernels.inc")
ISAS = cpu.supported_isas()


def _inc_lines():
    if not os.path.exists(UKERNELS_INC):
        pytest.skip("kernels/ukernels.inc not found (tests run outside the source tree)")
    text = open(UKERNELS_INC).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    slots = re.findall(r"^QI_SLOT\((\w+),\s*(\w+)\)", text, flags=re.M)
    kernels = re.findall(r"^QI_UKERNEL\((\w+),\s*(\w+),\s*(\w+),\s*(\w+)\)", text, flags=re.M)
    return slots, kernels


def _run_with_env(value, code):
    env = dict(os.environ)
    env[ISA_ENV] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


# ----------------------------------------------------------------------------- features

def test_cpu_features_are_bools_and_consistent():
    f = cpu.cpu_features()
    expected = {"sse41", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                "avx512vnni", "avx512bf16", "avxvnni", "os_ymm", "os_zmm"}
    assert set(f) == expected
    assert all(isinstance(v, bool) for v in f.values())
    # a feature needing ymm / zmm state counts only when the OS saves it
    for name in ("avx", "avx2", "fma", "f16c", "avxvnni"):
        assert not f[name] or f["os_ymm"], name
    for name in ("avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16"):
        assert not f[name] or (f["avx512f"] and f["os_zmm"]), name
    assert not f["os_zmm"] or f["os_ymm"]


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only")
def test_cpu_features_agree_with_proc_cpuinfo():
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("no flags line in /proc/cpuinfo")
    f = cpu.cpu_features()
    # the kernel only lists AVX features the OS enabled, so the two must agree
    for ours, linux in [("sse41", "sse4_1"), ("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"),
                        ("avx512f", "avx512f"), ("avx512bw", "avx512bw"), ("avx512vl", "avx512vl"),
                        ("avx512dq", "avx512dq"), ("avx512vnni", "avx512_vnni"),
                        ("avx512bf16", "avx512_bf16"), ("avxvnni", "avx_vnni")]:
        assert f[ours] == (linux in flags), f"{ours}: cpuid says {f[ours]}, /proc/cpuinfo {linux in flags}"


def test_tiers_follow_features():
    f = cpu.cpu_features()
    assert ISAS[0] == "scalar"
    assert ISAS == [t for t in cpu.TIERS if t in ISAS]  # lowest first, no gaps needed
    if "avx2" in ISAS:
        assert f["avx2"] and f["fma"] and f["f16c"]
    if "avx512vnni" in ISAS:
        assert all(f[k] for k in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni"))
    assert cpu.best_isa() == ISAS[-1]


# ----------------------------------------------------------------------------- dispatch

@pytest.mark.skipif(bool(os.environ.get(ISA_ENV)), reason=f"{ISA_ENV} is set for this run")
def test_default_tier_is_best():
    assert cpu.isa() == cpu.best_isa()


@pytest.mark.parametrize("isa", ISAS)
def test_set_isa_caps_every_slot(isa):
    rank = cpu.TIERS.index
    with cpu.isa_cap(isa):
        assert cpu.isa() == isa
        table = cpu.kernel_table()
        for slot, name in table.items():
            assert name.startswith(f"qi_{slot}__"), (slot, name)
            assert rank(name.rsplit("__", 1)[1]) <= rank(isa), (slot, name)
        # the best variant <= the cap is chosen: every kernel of this tier is in the table
        for k_isa, name, slot in K.kernel_list():
            if k_isa == isa:
                assert table[slot] == name
    assert cpu.isa() == cpu.best_isa() or os.environ.get(ISA_ENV)


def test_set_isa_errors():
    before = cpu.isa()
    with pytest.raises(errors.QinferError, match="unknown ISA tier 'sse9'.*avx512vnni, avx2, scalar"):
        cpu.set_isa("sse9")
    assert cpu.isa() == before


def test_unsupported_tier_error_message(monkeypatch):
    """A tier the CPU (or build) cannot run is refused with the reason and the best tier."""
    monkeypatch.setattr(K, "tier_supported", lambda t: t == 0)
    with pytest.raises(errors.QinferError, match="cannot run here.*best this machine runs"):
        cpu.set_isa("avx2")


def test_kernel_list_matches_ukernels_inc():
    slots, kernels = _inc_lines()
    slot_names = [f"{op}_{dt}" for op, dt in slots]
    assert list(cpu.kernel_table()) == slot_names
    built = K.kernel_list()
    built_set = set(built)
    for isa, name, op, dt in kernels:
        slot = f"{op}_{dt}"
        assert slot in slot_names, f"{name}: slot {slot} has no QI_SLOT line"
        assert name == f"qi_{slot}__{isa}", f"{name}: name must be qi_<op>_<dtypes>__<isa>"
        path = os.path.join(ROOT, "kernels", isa, f"{op.replace('_', '-')}-{dt}-{isa}.c")
        assert os.path.exists(path), f"{name}: expected its source in {path}"
        assert name in open(path).read()
        if isa in ISAS:
            assert (isa, name, slot) in built_set, f"{name} is not compiled into this build"
    for slot in slot_names:
        assert ("scalar", f"qi_{slot}__scalar", slot) in built_set, f"{slot} has no scalar kernel"


def test_runtime_info_and_threads():
    info = cpu.runtime_info()
    for slot, name in cpu.kernel_table().items():
        assert slot in info and name in info
    assert f"isa tier:       {cpu.isa()}" in info
    assert isinstance(cpu.openmp_enabled(), bool)
    assert cpu.max_threads() >= 1
    assert ("openmp:         yes" in info) == cpu.openmp_enabled()


# ----------------------------------------------------------------------------- QINFER_ISA

PRINT = "import qinfer.runtime.cpu as c; print(c.isa()); print(sorted(set(n.rsplit('__', 1)[1] " \
        "for n in c.kernel_table().values())))"


@pytest.mark.parametrize("isa", ISAS)
def test_env_var_selects_tier(isa):
    r = _run_with_env(isa, PRINT)
    assert r.returncode == 0, r.stderr
    got_isa, tiers = r.stdout.splitlines()[-2:]
    assert got_isa == isa
    assert all(cpu.TIERS.index(t) <= cpu.TIERS.index(isa) for t in eval(tiers))


def test_env_var_is_case_and_space_insensitive():
    r = _run_with_env(" SCALAR ", PRINT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2] == "scalar"


def test_env_var_unknown_value_is_a_clear_error():
    r = _run_with_env("avx9000", "import qinfer.runtime.cpu")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "QinferError" in last and ISA_ENV in last and "avx9000" in last
    assert "expected one of avx512vnni, avx2, scalar" in last


@pytest.mark.skipif(len(ISAS) == len(cpu.TIERS), reason="this machine runs every tier")
def test_env_var_tier_cpu_lacks_is_a_clear_error():
    missing = cpu.TIERS[len(ISAS)]
    r = _run_with_env(missing, "import qinfer.runtime.cpu")
    assert r.returncode != 0
    assert "cannot run here" in r.stderr and ISA_ENV in r.stderr
