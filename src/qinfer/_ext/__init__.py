"""Compiled kernels (Cython bridge to kernels/). Import ``qinfer.runtime.cpu`` rather than
``_kernels`` directly: it applies the QINFER_ISA cap to the dispatch table.

Before the extension (and with it libgomp) loads, OpenMP's idle threads are told to spin only
briefly (GOMP_SPINCOUNT, unless the user set it or OMP_WAIT_POLICY): with libgomp's default, a
worker spins for milliseconds after each parallel region, and on a machine where another process
holds a core the spinning threads starve the descheduled one -- measured here, a 2-thread
ResNet-18 run went from 65 ms to 240 ms. A short spin still catches back-to-back regions.
"""
import os

from .._config import GOMP_SPIN_DEFAULT

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPIN_DEFAULT
