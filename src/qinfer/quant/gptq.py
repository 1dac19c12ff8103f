"""int4 weight rounding: round-to-nearest and GPTQ, with the layer statistics they need (numpy).

Design: the "compute" step for int4 weights (observe / compute / pack). A layer's weight is seen as
``w [N, K]``: output channels by the reduction axis in the order the kernels reduce it (a GEMM's
``[K, N]`` transposed; a conv's ``[Cout, Cin/g, KH, KW]`` as ``[Cout, (ky, kx, c)]`` per conv
group, ``reference.int4.conv_matrix``). Blocks of ``block`` consecutive k share one float32 scale
per channel, and q is in [-8, 7] (docs/formats.md 2.2).

- Scale of a block: its largest-magnitude weight ``e`` maps to -8 (``s = e / -8``, so s carries e's
  sign and all 16 codes are used), then shrunk by the factor in ``SHRINK`` that minimises the
  block's squared weight error (clipping a few outliers can lower the error of all the others).
- Round to nearest: ``q = clamp(rint(w / s), -8, 7)``.
- GPTQ (Frantar et al. 2022): quantize the columns k = 0, 1, ... in order; after each, spread its
  error over the columns not yet quantized through the inverse Hessian of the layer's
  reconstruction loss ``|X w - X q s|^2``, ``H = 2 X^T X / rows + damp * mean(diag) * I`` from the
  layer's calibration inputs X (patches for a conv). The upper Cholesky factor of ``H^-1`` gives the
  updates; columns are processed in lazy batches of ``LAZY`` (a multiple of the block) with one
  matrix product per batch for the columns after it. Each block's scale is chosen when the block's
  first column comes up, from the weights as updated so far (GPTQ's per-group scales). Inputs that
  are always zero (diagonal 0) get their weights zeroed: nothing can read them.
- ``sqnr_db``: the layer's output SQNR on its calibration inputs, computed from X^T X alone:
  ``tr(W^T G W) / tr(E^T G E)`` with E the weight error, so no activation is kept around.
"""
from __future__ import annotations

import numpy as np

from ..reference import int4 as r4

QMIN, QMAX = r4.QMIN, r4.QMAX
#: factors tried on each block's scale (weight-space squared error, per channel and block)
SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
#: GPTQ dampening, as a fraction of the mean diagonal of H (the paper's 1%)
DAMP = 0.01
#: columns per lazy batch (rounded up to a multiple of the block)
LAZY = 128
#: patch rows of one calibration sample that enter X^T X at most (a random, seeded subset beyond)
MAX_ROWS_PER_SAMPLE = 4096


def block_scales(wb):
    """Scales [N] of one block ``wb [N, len]``: the extreme weight at -8, shrunk where it helps."""
    wb = np.asarray(wb, np.float64)
    idx = np.argmax(np.abs(wb), axis=1)
    e = wb[np.arange(wb.shape[0]), idx]
    base = np.where(e == 0, 1.0, e / float(QMIN))
    best_s, best_err = base, None
    for f in SHRINK:
        s = base * f
        q = np.clip(np.rint(wb / s[:, None]), QMIN, QMAX)
        err = ((wb - q * s[:, None]) ** 2).sum(axis=1)
        if best_err is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s, best_err = np.where(better, s, best_s), np.where(better, err, best_err)
    return best_s.astype(np.float32)


def _round(w, s):
    """q = clamp(rint(w / s), -8, 7), s float32 (the scale the kernels will multiply by)."""
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(np.asarray(w, np.float64) / np.asarray(s, np.float32).astype(np.float64))
    return np.clip(np.nan_to_num(q), QMIN, QMAX)


def quantize_rtn(w, block):
    """Round to nearest: ``w [N, K]`` -> (q int8 [N, K], scales float32 [N, nblk])."""
    w = np.asarray(w, np.float64)
    N, K = w.shape
    nb = r4.nblocks(K, block)
    q = np.empty((N, K), np.int8)
    s = np.empty((N, nb), np.float32)
    for b in range(nb):
        sl = slice(b * block, min(K, (b + 1) * block))
        s[:, b] = block_scales(w[:, sl])
        q[:, sl] = _round(w[:, sl], s[:, b:b + 1])
    return q, s


def dequantize(q, s, block):
    """float64 [N, K] of q * s per block."""
    return np.asarray(q, np.float64) * np.repeat(np.asarray(s, np.float64), block, axis=1)[:, :q.shape[1]]


def hessian_factor(H, damp=DAMP):
    """(U, dead) for the OBS updates of a layer whose inputs have ``H [K, K]`` (X^T X, any positive
    multiple): ``U`` the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (so
    ``H^-1 = U^T U``; None when H is numerically singular) and ``dead`` the inputs that are always
    zero (diagonal 0; their diagonal is set to 1 so the rest can be factored)."""
    H = np.array(H, np.float64)
    K = H.shape[0]
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H += damp * float(np.mean(np.diag(H))) * np.eye(K)
    try:
        return np.linalg.cholesky(np.linalg.inv(H)).T, dead
    except np.linalg.LinAlgError:
        return None, dead


def obs_sweep(W, U, step, lazy=LAZY, on_batch=None):
    """The column sweep of GPTQ / SparseGPT over ``W [N, K]`` (float64, updated in place).

    Columns k = 0, 1, ... are fixed in order: ``step(k, i, W1, U1)`` returns column k's final values
    (rounded, or with pruned weights zeroed) given ``W1``, the current batch of columns as updated so
    far (column k is ``W1[:, i]``), and ``U1``, the batch's block of ``U``; the column's error is then
    spread over the columns not yet fixed through ``U``'s row k. Columns go in lazy batches of
    ``lazy`` with one matrix product per batch for the columns after it; ``on_batch(i1, i2, W1, U1)``
    is called as a batch starts (SparseGPT chooses its mask there). Returns W.
    """
    K = W.shape[1]
    for i1 in range(0, K, lazy):
        i2 = min(K, i1 + lazy)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        if on_batch is not None:
            on_batch(i1, i2, W1, U1)
        for i in range(i2 - i1):
            new = step(i1 + i, i, W1, U1)
            err = (W1[:, i] - new) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W


def quantize_gptq(w, H, block, damp=DAMP, keep_zero=None):
    """GPTQ: ``w [N, K]``, ``H [K, K]`` (X^T X of the layer inputs, any positive multiple) ->
    (q int8 [N, K], scales float32 [N, nblk]).

    ``keep_zero`` (bool [N, K], optional): weights that must stay exactly 0 (pruned ones,
    quant/prune.py); their q is 0 whatever the updates bring, the error that makes is spread like
    any other, and they take no part in choosing their block's scale."""
    W = np.array(w, np.float64)
    N, K = W.shape
    U, dead = hessian_factor(H, damp)
    if U is None:                                  # (H numerically singular: no statistics)
        return quantize_rtn(w, block)
    W[:, dead] = 0.0
    keep = None if keep_zero is None else ~np.asarray(keep_zero, bool)
    nb = r4.nblocks(K, block)
    Q = np.zeros((N, K), np.int8)
    S = np.zeros((N, nb), np.float32)

    def step(col, i, W1, U1):
        if col % block == 0:
            wb = W1[:, i:i + block]
            S[:, col // block] = block_scales(wb if keep is None else wb * keep[:, col:col + wb.shape[1]])
        s = S[:, col // block].astype(np.float64)
        q = _round(W1[:, i], s)
        if keep is not None:
            q = q * keep[:, col]
        Q[:, col] = q
        return q * s

    obs_sweep(W, U, step, -(-LAZY // block) * block)
    return Q, S


def energy(m, G):
    """tr(M G M^T): the output energy of weights ``m [N, K]`` on inputs with ``G = X^T X``."""
    m = np.asarray(m, np.float64)
    return float(((m @ G) * m).sum())


def to_db(signal, noise):
    """10 log10(signal / noise); inf when the noise is 0."""
    return float("inf") if noise <= 0 else 10.0 * np.log10(max(signal, 1e-300) / noise)


def sqnr_db(w, wq, G):
    """Output SQNR (dB) of a layer whose weight ``w [N, K]`` becomes ``wq``, on inputs with
    ``G = X^T X``: 10 log10(tr(W G W^T) / tr(E G E^T)) with E = W - Wq."""
    return to_db(energy(w, G), energy(np.asarray(w, np.float64) - np.asarray(wq, np.float64), G))


# ----------------------------------------------------------------------------- layer statistics

def patches_nhwc(x_nchw, kh, kw, strides, pads, dilations):
    """float [N, C, H, W] -> patch rows [N*OH*OW, kh*kw*C] in (ky, kx, c) order, zero padding."""
    x = np.asarray(x_nchw, np.float64).transpose(0, 2, 3, 1)
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    N, H, W, C = x.shape
    OH = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.empty((N, OH, OW, kh, kw, C))
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, :, ky, kx] = xp[:, ky * dh:ky * dh + sh * (OH - 1) + 1:sh,
                                      kx * dw:kx * dw + sw * (OW - 1) + 1:sw]
    return out.reshape(N * OH * OW, kh * kw * C)


class LayerStats:
    """X^T X of one layer's inputs (per conv group), accumulated over calibration samples.

    ``conv``: None for a GEMM (inputs [..., K]), else (groups, (kh, kw), strides, pads, dilations)
    of a conv on NCHW inputs."""

    def __init__(self, k, conv=None, seed=0):
        self.k, self.conv = int(k), conv
        self.groups = 1 if conv is None else int(conv[0])
        self.rng = np.random.default_rng(seed)
        self.H = np.zeros((self.groups, self.k, self.k))
        self.rows = 0

    def update(self, x):
        if self.conv is None:
            rows = np.asarray(x, np.float64).reshape(-1, self.k)[None]
        else:
            groups, (kh, kw), strides, pads, dil = self.conv
            cg = x.shape[1] // groups
            rows = np.stack([patches_nhwc(x[:, g * cg:(g + 1) * cg], kh, kw, strides, pads, dil)
                             for g in range(groups)])
        if rows.shape[1] > MAX_ROWS_PER_SAMPLE:
            pick = self.rng.choice(rows.shape[1], MAX_ROWS_PER_SAMPLE, replace=False)
            rows = rows[:, pick]
        self.H += rows.transpose(0, 2, 1) @ rows
        self.rows += rows.shape[1]

    def gram(self, g=0):
        """X^T X / rows of conv group g (0 for a GEMM)."""
        return self.H[g] / max(self.rows, 1)


__all__ = ["block_scales", "quantize_rtn", "quantize_gptq", "hessian_factor", "obs_sweep", "dequantize", "energy", "to_db", "sqnr_db",
           "patches_nhwc", "LayerStats"]
