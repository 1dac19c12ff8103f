"""pytest-benchmark suite: qinfer's kernels on representative shapes (run: pytest bench/ --benchmark-only).

Timings are not asserted; each case checks its result against numpy once so a broken kernel cannot
look fast. Compare runs with ``--benchmark-autosave`` and ``pytest-benchmark compare``.
"""
import numpy as np
import pytest

from qinfer.reference import quantized as qref
from qinfer.runtime.cpu import _kernels as k

GEMM_SHAPES = [(1, 1024, 1024), (16, 1024, 1024), (196, 1024, 1024), (3136, 256, 256)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,kk,n", GEMM_SHAPES, ids=lambda v: str(v))
def test_gemm_f32(benchmark, m, kk, n, threads):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, kk)).astype(np.float32)
    b = rng.standard_normal((kk, n)).astype(np.float32)
    out = benchmark(k.gemm_f32, a, b, None, None, 0, 0, 0.0, 0.0, threads)
    np.testing.assert_allclose(out, a @ b, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,kk,n", GEMM_SHAPES, ids=lambda v: str(v))
def test_qgemm_u8s8(benchmark, m, kk, n, threads):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (m, kk), dtype=np.uint8)
    w = rng.integers(-127, 128, (kk, n), dtype=np.int8)
    packed = qref.pack_gemm_qc8w(w, None, 128)
    scale = np.full(n, 1e-3, np.float32)
    out = benchmark(k.qgemm_u8s8, x, packed, scale, out_dtype=np.float32, num_threads=threads)
    np.testing.assert_array_equal(out, qref.qgemm(x, w, scale, None, 128, out_u8=False))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c,hw,stride", [(32, 112, 1), (144, 56, 2), (960, 7, 1)], ids=lambda v: str(v))
def test_dwconv_f32(benchmark, c, hw, stride, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((c, 3, 3)).astype(np.float32)
    benchmark(k.dwconv2d_f32, x, w, None, None, (stride, stride), (1, 1, 1, 1), (1, 1), 0, 0.0, 0.0, threads)
