"""Thread settings: OpenMP spin default, BLAS pinned to one thread."""
import os
import subprocess
import sys


def _env_after_import(extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra)
    code = "import os, qinfer; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120).stdout.split()


def test_short_openmp_spin_by_default_and_user_settings_win():
    from qinfer._config import GOMP_SPIN_DEFAULT
    assert _env_after_import({}) == [GOMP_SPIN_DEFAULT, "None"]
    assert _env_after_import({"GOMP_SPINCOUNT": "123"}) == ["123", "None"]
    assert _env_after_import({"OMP_WAIT_POLICY": "ACTIVE"}) == ["None", "ACTIVE"]
