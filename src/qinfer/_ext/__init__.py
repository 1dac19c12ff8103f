"""Compiled kernels (Cython bridge to kernels/). Import ``qinfer.runtime.cpu`` rather than
``_kernels`` directly: it applies the QINFER_ISA cap to the dispatch table."""
