"""Every QINFER_* environment knob, declared once."""
import os

#: Cap the kernel ISA tier: "avx512vnni" | "avx2" | "scalar" (read once, when the extension loads).
ISA_ENV = "QINFER_ISA"
#: Default thread count of sessions created with ``num_threads=None``.
NUM_THREADS_ENV = "QINFER_NUM_THREADS"
#: Where test fixtures cache downloaded / exported models.
CACHE_DIR_ENV = "QINFER_CACHE_DIR"
#: Run the IR verifier after every pass (debug).
VERIFY_ENV = "QINFER_VERIFY"
#: "default" leaves glibc's malloc settings alone (sessions otherwise keep freed tensor memory for
#: the next run: runtime/memory.py).
MALLOC_ENV = "QINFER_MALLOC"


def env_str(name, default=None):
    v = os.environ.get(name)
    return default if v is None or v == "" else v


def verify_enabled():
    return env_str(VERIFY_ENV, "0") not in ("0", "false", "no")


def cache_dir():
    d = env_str(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "qinfer")
    os.makedirs(d, exist_ok=True)
    return d

#: GOMP_SPINCOUNT qinfer sets before libgomp loads, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set
#: (see qinfer/_ext/__init__.py for why)
GOMP_SPIN_DEFAULT = "10000"
