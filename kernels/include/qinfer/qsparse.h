/* qinfer kernels: sparse int8 GEMM / conv (uint8 activations x int8 per-channel weights pruned in
 * blocks of 4 along K), the plain-C parts every ISA variant shares (no intrinsics): the packed
 * weight header, the slot function type, the conv problem and the driver.
 *
 * Design (DESIGN.md "Kernels", sparse): the arithmetic is the int8 scheme of qinfer/qint8.h
 * unchanged -- acc = bias[n] + sum_k x[m, k] * w[k, n] in int32 with the activation zero point
 * folded into the bias at pack time, then the int8 epilogue (qi_q_store1 and its SIMD copies) --
 * computed over the non-zero 1x4 blocks of each output channel only. A block is 4 consecutive k of
 * one channel (k = 4 kb .. 4 kb + 3, the K order of the dense int8 kernels: (ky, kx, c) for a conv),
 * i.e. exactly one vpdpbusd lane: the kernel broadcasts the block's 4 weights and multiplies them
 * with the same 4 K bytes of 16 rows at once (activations re-packed K-group-major, 16 rows x 4 bytes
 * = one 64-byte load), accumulating 16 rows of one output channel per register. Integer sums are
 * exact, so the block order, the row / K blocking and the thread split change no bit, and the
 * result equals the dense int8 kernels' on the same (zero-filled) weights.
 *
 * Weights per channel: a list of (kb, 4 int8) records sorted by kb, cut by a pointer table into
 * K segments of `seg` groups (seg * 4 K bytes), so a kernel that blocks K (to keep its re-packed
 * activations in L1) finds each channel's blocks of a K block without searching.
 *
 * Hostile bytes: the loader (qinfer.ir.verify) rejects out-of-range block indices, unsorted lists
 * and a pointer table that is not monotone; the kernels do not rely on it for memory safety: they
 * clamp every record range to [0, nnzb] and every kb to [0, kg), so no byte pattern can make them
 * read or write out of bounds (a malformed list only gives wrong numbers).
 */
#ifndef QINFER_QSPARSE_H
#define QINFER_QSPARSE_H

#include "qinfer/common.h"
#include "qinfer/qint8.h" /* qi_qepi, qi_qconv_problem and the scalar epilogue */

/* ---- packed weights (docs/formats.md, "sparse int8 packed weights"); little-endian ---- */
#define QI_SB4W_MAGIC 0x57344253u /* "SB4W" */
#define QI_SB4W_VERSION 1u
#define QI_SB4W_NR 16   /* channels padded to a multiple of 16 (one epilogue vector) */
#define QI_SB4W_SEG 64  /* K groups per pointer segment written by the packer (256 K bytes) */

typedef struct qi_sb4w_header { /* 64 bytes */
  uint32_t magic;   /* QI_SB4W_MAGIC */
  uint32_t version; /* QI_SB4W_VERSION */
  uint32_t groups;  /* conv groups G (GEMM: 1) */
  uint32_t n;       /* output channels per group */
  uint32_t k;       /* reduction length per group, kh*kw*cin */
  uint32_t n_pad;   /* n rounded up to 16 */
  uint32_t kg;      /* K groups: ceil(k / 4) */
  uint32_t seg;     /* K groups per segment (packer: 64) */
  uint32_t nseg;    /* ceil(kg / seg) */
  uint32_t nnzb;    /* non-zero blocks, all channels and groups */
  int32_t zp_x;     /* activation zero point folded into bias */
  uint32_t kh, kw;  /* conv kernel the K axis was packed for (GEMM: 0, 0) */
  uint32_t cin;     /* input channels per group (GEMM: k) */
  uint32_t rec_off; /* byte offset of the records: round_up(64 + 8 G n_pad + 4 (G n_pad nseg + 1), 64) */
  uint32_t reserved;
} qi_sb4w_header;
_Static_assert(sizeof(qi_sb4w_header) == 64, "qi_sb4w_header is 64 bytes (docs/formats.md)");

/* One non-zero block: K group kb (k = 4 kb + t) and its weights w[t], t = 0..3, as 4 int8 bytes
 * (read as one little-endian int32: the vpdpbusd operand). */
typedef struct qi_sb4w_rec {
  uint32_t kb;
  int32_t w;
} qi_sb4w_rec;
/* Then, at byte 64: int32 bias[G * n_pad] (folded as in int8), int32 colsum[G * n_pad], uint32
 * ptr[G * n_pad * nseg + 1]: the blocks of channel c = g * n_pad + j in segment s (kb in
 * [s * seg, (s + 1) * seg)) are records ptr[c * nseg + s] .. ptr[c * nseg + s + 1] - 1; zeros to
 * rec_off; then nnzb records of 8 bytes, by channel, kb ascending. */

/* ---- slot function type ---- */

/* Sparse GEMM block, single-threaded: for rows i < m and columns j in [n_begin, n_end) of one weight
 * group (n_begin a multiple of 16, n_end <= n), with A[i, :k] at a + i*lda:
 *   out[i, j] = epilogue(bias[j] + sum over the blocks of channel j of sum_t A[i, 4 kb + t] w[t])
 * (terms with 4 kb + t >= k read as zero: a K tail). ptr: the group's pointer table (entries
 * j * nseg + s); rec, nnzb: every record of the layer (ranges are clamped to nnzb); kg = ceil(k/4)
 * bounds every kb. Reads exactly k bytes of each A row. scratch: qi_spmm_scratch_bytes(k) bytes,
 * 64-byte aligned, private to the call. */
typedef struct qi_sp_patches qi_sp_patches;
typedef void qi_spmm_qu8_sb4w_fn(size_t m, size_t n_begin, size_t n_end, size_t k,
                                 const uint8_t *a, size_t lda, const qi_sp_patches *pa,
                                 const int32_t *bias, const uint32_t *ptr, size_t nseg, size_t seg,
                                 const qi_sb4w_rec *rec, size_t nnzb, const qi_qepi *ep,
                                 void *scratch);

/* A given as conv patches (a == NULL): row i of A is the patch of output row r0 + i of group g of
 * the conv (what qi_qconv_patches writes: K in (ky, kx, c) order, padding taps zp_x), k = its
 * k_pad. The driver passes patches only when cin is a multiple of 64, so a 64-byte piece of a row
 * never straddles two taps; a variant that does not read them in place builds them with
 * qi_qconv_patches (below) in its own scratch. */
struct qi_sp_patches {
  const struct qi_qconv_problem *conv;
  size_t g, r0;
};
#define QI_SP_PATCH_CIN 64

/* Kernel blocking limits (every variant stays within qi_spmm_scratch_bytes) */
#define QI_SPMM_MR 128 /* rows per re-packed activation block */
#define QI_SPMM_NC 256 /* channels whose partial sums are parked between K blocks */

/* The re-packed activations of QI_SPMM_MR rows (int16 in the AVX2 variant: twice the bytes of the
 * VNNI one; the scalar and AVX2 variants build patch rows in what is left), then the parked sums,
 * then slack for qi_qconv_patches' short moves. */
QI_INLINE size_t qi_spmm_scratch_bytes(size_t k) {
  size_t kg16 = ((k + 3) / 4 + 15) / 16 * 16;
  return (size_t)QI_SPMM_MR * kg16 * 4 * 2 + (size_t)QI_SPMM_NC * QI_SPMM_MR * 4 + 256 + 64;
}

/* Stride-1 convs read in place (qi_sp_patches) may be run from "planes" (the AVX-512 variant):
 * the padded input of a row block's window re-packed once per pixel as [cin/4][rows][wp][4] (wp =
 * padded width), so that the 16 output pixels of a group are, for every tap, 16 consecutive
 * dwords of a plane, at a fixed offset per K group (the tap's shift ky dh wp + kx dw and the
 * plane). Output pixels are walked as virtual rows q = oy wp + ox (the kw - 1 columns with ox >=
 * out_w are computed and dropped). A window covers the padded input rows read by the virtual rows
 * [q0, q0 + QI_SPMM_MR) plus one for a tap's column shift running into the next row; rows past the
 * padded input hold zp_x. Sizes shared by the driver (scratch) and the kernel. */
typedef struct qi_sp_planes_geom {
  size_t wp, rows, ps; /* padded width, rows per window, bytes per plane (64-byte multiple) */
  size_t bytes;        /* planes (cin/4 of them) + the K groups' offset table + the row map */
} qi_sp_planes_geom;

QI_INLINE int qi_sp_planes_geometry(const qi_qconv_problem *c, qi_sp_planes_geom *g) {
  const qi_conv2d_geom *ge = &c->geom;
  if (ge->stride_h != 1 || ge->stride_w != 1 || c->cin % 4 || c->k != ge->k_h * ge->k_w * c->cin)
    return 0;
  g->wp = ge->in_w + ge->pad_left + ge->pad_right;
  g->rows = (QI_SPMM_MR - 1 + (ge->k_w - 1) * ge->dil_w) / g->wp + 2 + (ge->k_h - 1) * ge->dil_h;
  g->ps = (g->rows * g->wp * 4 + 64 + 63) & ~(size_t)63;
  g->bytes = c->cin / 4 * g->ps + ((c->k / 4 * 4 + 63) & ~(size_t)63) + QI_SPMM_MR * 4;
  return 1;
}

/* Pointer segments (seg K groups each) per K block of the kernels' loops: as many as keep a block's
 * re-packed activations (group_bytes per K group) within budget bytes; at least one */
QI_INLINE size_t qi_sp_segs_per_block(size_t budget, size_t group_bytes, size_t seg) {
  const size_t n = budget / (group_bytes * (seg ? seg : 1));
  return n ? n : 1;
}

/* Clamped record range of channel j (local), segments [s0, s1) */
QI_INLINE void qi_sb4w_range(const uint32_t *ptr, size_t nseg, size_t j, size_t s0, size_t s1,
                             size_t nnzb, size_t *b, size_t *e) {
  size_t eb = ptr[j * nseg + s1], bb = ptr[j * nseg + s0];
  eb = eb < nnzb ? eb : nnzb;
  bb = bb < eb ? bb : eb;
  *b = bb, *e = eb;
}

/* ---- the conv / GEMM driver (common code, kernels/scalar/qsparse-driver.c) ---- */

/* A conv in NHWC: the int8 driver's problem (input, geometry, rows m, zp_x, groups, n, k, k_pad,
 * cin, direct, the epilogue; its bias and w unused; n_pad = the sparse one) plus the sparse
 * weights. */
typedef struct qi_spconv_problem {
  qi_qconv_problem c;
  const int32_t *bias;    /* [groups * n_pad] */
  const uint32_t *ptr;    /* [groups * n_pad * nseg + 1] */
  size_t nseg, seg, nnzb;
  const qi_sb4w_rec *rec; /* [nnzb] */
} qi_spconv_problem;

/* Bytes of scratch one thread needs for qi_spconv_run over at most `rows` rows. */
size_t qi_spconv_scratch_bytes(const qi_spconv_problem *p, size_t rows);

/* Rows [m_begin, m_end) x global channel units [u_begin, u_end) (unit q = 16 channels: group
 * q / (n_pad/16), local channels 16 (q % (n_pad/16)) ...). */
void qi_spconv_run(const qi_spconv_problem *p, qi_spmm_qu8_sb4w_fn *fn, size_t m_begin,
                   size_t m_end, size_t u_begin, size_t u_end, void *scratch);

/* The int8 driver's patch rows, shared: rows [r0, r0 + m) of group g into buf (row stride
 * qi_qconv_patch_stride(p->k_pad)), padding taps zp_x, zeros past k. (kernels/scalar/qint8-driver.c) */
size_t qi_qconv_patch_stride(size_t k_pad);
size_t qi_qconv_patch_slack(void);
void qi_qconv_patches(const qi_qconv_problem *p, size_t g, size_t r0, size_t m, uint8_t *buf);

#endif /* QINFER_QSPARSE_H */
