/* int8 conv / GEMM driver: common code (baseline flags; it lives in kernels/scalar/ because that
 * folder is what the build compiles with baseline flags), run by every ISA tier.
 *
 * Design: a thread owns a rectangle of the output, rows [m_begin, m_end) x panels [p_begin, p_end)
 * (the Cython driver cuts them statically). It walks its rows in blocks of at most
 * QI_QGEMM_MC_MAX (balanced, multiples of 8) and, per weight group its panels touch, hands the
 * dispatched GEMM kernel an A block: read in place when the conv is 1x1 / stride 1 / unpadded (and
 * for every GEMM), otherwise an im2col copy of the block's patches into this thread's scratch (row
 * stride k_pad, padding taps filled with zp_x so they contribute (zp_x - zp_x) * w = 0 after the
 * folded bias, zeros past k to meet the zero weights of the packing). The im2col block is
 * MC x k_pad bytes, built once per (row block, group) and reused for every panel of that group.
 * Integer sums are exact, so neither the block sizes nor the thread rectangle change any output.
 */
#include <pthread.h>
#include <stdlib.h>
#include "qinfer/ukernels.h"

#define QI_ALIGN64(n) (((n) + 63) & ~(size_t)63)

static size_t qi_qconv_mc(size_t rows) {
  size_t nblk = (rows + QI_QGEMM_MC_MAX - 1) / QI_QGEMM_MC_MAX;
  size_t mc = (rows + nblk - 1) / nblk;
  mc = (mc + 7) & ~(size_t)7;
  return mc > QI_QGEMM_MC_MAX ? QI_QGEMM_MC_MAX : mc;
}

static size_t qi_qconv_acc_bytes(const qi_qconv_problem *p, size_t mc) {
  size_t k = p->direct ? p->k : p->k_pad;
  return k > QI_QGEMM_KC_MAX ? QI_ALIGN64(mc * QI_QGEMM_NC_MAX * sizeof(int32_t)) : 0;
}

/* Row stride of an A block copied into scratch: k_pad, plus one cache line when k_pad is a
 * multiple of 1 KiB (then rows r and r + 4 of a tile would share L1 sets: 4 KiB aliasing). */
static size_t qi_qconv_a_stride(size_t k_pad) {
  return k_pad % 1024 == 0 ? k_pad + 64 : k_pad;
}

/* A read in place, but through a copy: rows of a multiple-of-1 KiB stride (a GEMM with K = 1024,
 * 4096, ...) all fall in the same few L1 sets, which costs the 8-row tile about a tenth of its
 * speed; copying a row block (once per block, K bytes per row) is far cheaper than that. */
static int qi_qconv_copies_a(const qi_qconv_problem *p, size_t mc) {
  return p->direct && mc > 8 && p->lda % 1024 == 0 && p->k >= 256;
}

/* The im2col of a conv with few input channels (a network's first layer: 3 channels, 9 or 21
 * bytes per kernel row) copies a few bytes at a time, millions of times: through libc's memcpy
 * and memset those calls cost far more than the GEMM that follows. Copies and fills of up to
 * QI_SHORT bytes go through 16-byte moves instead, which may write up to 15 bytes past their end
 * (rows are built in order, so the excess lands where the next piece or row is written next,
 * or in QI_SHORT_SLACK bytes kept past the block) and read past their end only while the source
 * has 16 bytes left. */
#define QI_SHORT 48
#define QI_SHORT_SLACK 64

static inline void qi_copy_short(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t *src_end) {
  if ((size_t)(src_end - src) < ((n + 15) & ~(size_t)15)) {
    memcpy(dst, src, n);
    return;
  }
  for (size_t i = 0; i < n; i += 16) __builtin_memcpy(dst + i, src + i, 16);
}

static inline void qi_fill_short(uint8_t *dst, uint8_t v, size_t n) {
  uint8_t b[16];
  __builtin_memset(b, v, 16);
  for (size_t i = 0; i < n; i += 16) __builtin_memcpy(dst + i, b, 16);
}

size_t qi_qconv_scratch_bytes(const qi_qconv_problem *p, size_t rows) {
  if (rows == 0) return 0;
  size_t mc = qi_qconv_mc(rows);
  int copy = !p->direct || qi_qconv_copies_a(p, mc);
  return qi_qconv_acc_bytes(p, mc) +
         (copy ? QI_ALIGN64(mc * qi_qconv_a_stride(p->k_pad) + QI_SHORT_SLACK) : 0);
}

/* patches of rows [r0, r0 + m) of group g into buf[m, k_pad] (row stride qi_qconv_a_stride) */
static void qi_qconv_im2col(const qi_qconv_problem *p, size_t g, size_t r0, size_t m, uint8_t *buf) {
  const qi_conv2d_geom *ge = &p->geom;
  const size_t ohw = ge->out_h * ge->out_w, cin = p->cin, ct = p->cin_total;
  const uint8_t *x_end = p->x + p->batch * ge->in_h * ge->in_w * ct;
  /* few channels (a first layer): short moves for every piece, see qi_copy_short */
  const int small = ge->k_w * cin <= QI_SHORT && p->k_pad - p->k <= QI_SHORT;
#define QI_COPY(D, S, N) (small ? qi_copy_short(D, S, N, x_end) : (void)memcpy(D, S, N))
#define QI_FILL(D, V, N) (small ? qi_fill_short(D, V, N) : (void)memset(D, V, N))
  /* the output pixel steps along without a division per row (two divisions per row cost about
   * as much as a small row's copies) */
  size_t img = r0 / ohw, oy = (r0 - img * ohw) / ge->out_w, ox = r0 - img * ohw - oy * ge->out_w;
  const size_t a_stride = qi_qconv_a_stride(p->k_pad);
  /* the interior fast path: a kernel row's taps are run = kw*cin consecutive bytes of x (<= 32:
   * one or two moves), kernel rows step * ky apart */
  const size_t run = ge->k_w * cin, step = ge->dil_h * ge->in_w * ct, moves = (run + 15) / 16;
  const size_t span_h = (ge->k_h - 1) * ge->dil_h;
  /* a kernel row's taps are consecutive bytes of x (one group, no column dilation) */
  const int row_contig = ct == cin && (ge->dil_w == 1 || ge->k_w == 1);
  const int contig = small && run <= 32 && row_contig;
  for (size_t i = 0; i < m; i++) {
    if (i && ++ox == ge->out_w) {
      ox = 0;
      if (++oy == ge->out_h) oy = 0, img++;
    }
    const uint8_t *xi = p->x + img * ge->in_h * ge->in_w * ct + g * cin;
    uint8_t *dst = buf + i * a_stride;
    const ptrdiff_t ix0 = (ptrdiff_t)(ox * ge->stride_w) - (ptrdiff_t)ge->pad_left;
    const int row_inside = ix0 >= 0 && ix0 + (ptrdiff_t)((ge->k_w - 1) * ge->dil_w) < (ptrdiff_t)ge->in_w;
    const ptrdiff_t iy0 = (ptrdiff_t)(oy * ge->stride_h) - (ptrdiff_t)ge->pad_top;
    const int interior = contig && row_inside && iy0 >= 0 && iy0 + (ptrdiff_t)span_h < (ptrdiff_t)ge->in_h;
    const uint8_t *src = interior ? xi + ((size_t)iy0 * ge->in_w + (size_t)ix0) * ct : NULL;
    if (interior && src + step * (ge->k_h - 1) + moves * 16 <= x_end) {
      /* an interior pixel of a first layer: kh runs of kw*cin bytes, each one or two 16-byte
       * moves with no per-tap test (most of such a layer's rows; its im2col cost as much as its
       * GEMM) */
      for (size_t ky = 0; ky < ge->k_h; ky++, src += step, dst += run)
        for (size_t t = 0; t < moves; t++) __builtin_memcpy(dst + 16 * t, src + 16 * t, 16);
    } else {
      for (size_t ky = 0; ky < ge->k_h; ky++) {
        ptrdiff_t iy = (ptrdiff_t)(oy * ge->stride_h + ky * ge->dil_h) - (ptrdiff_t)ge->pad_top;
        int row_ok = iy >= 0 && iy < (ptrdiff_t)ge->in_h;
        if (row_ok && row_inside && row_contig) { /* the row's run of bytes, as in the patch */
          QI_COPY(dst, xi + ((size_t)iy * ge->in_w + (size_t)ix0) * ct, run);
          dst += run;
          continue;
        }
        for (size_t kx = 0; kx < ge->k_w; kx++, dst += cin) {
          ptrdiff_t ix = (ptrdiff_t)(ox * ge->stride_w + kx * ge->dil_w) - (ptrdiff_t)ge->pad_left;
          if (row_ok && ix >= 0 && ix < (ptrdiff_t)ge->in_w)
            QI_COPY(dst, xi + ((size_t)iy * ge->in_w + (size_t)ix) * ct, cin);
          else
            QI_FILL(dst, p->zp_x, cin);
        }
      }
    }
    if (p->k_pad > p->k) QI_FILL(dst, 0, p->k_pad - p->k);
  }
#undef QI_COPY
#undef QI_FILL
}

/* The patch rows for other drivers (the sparse one, qinfer/qsparse.h): the same im2col, the same
 * row stride. */
size_t qi_qconv_patch_stride(size_t k_pad) { return qi_qconv_a_stride(k_pad); }
size_t qi_qconv_patch_slack(void) { return QI_SHORT_SLACK; }
void qi_qconv_patches(const qi_qconv_problem *p, size_t g, size_t r0, size_t m, uint8_t *buf) {
  qi_qconv_im2col(p, g, r0, m, buf);
}

void qi_qconv_run(const qi_qconv_problem *p, qi_gemm_qu8_qc8w_fn *fn, size_t m_begin, size_t m_end,
                  size_t p_begin, size_t p_end, void *scratch) {
  if (m_begin >= m_end || p_begin >= p_end) return;
  const size_t ppg = p->n_pad / QI_QC8W_NR; /* panels per group */
  const size_t mc = qi_qconv_mc(m_end - m_begin);
  int32_t *acc = (int32_t *)scratch;
  uint8_t *cols = (uint8_t *)scratch + qi_qconv_acc_bytes(p, mc);
  const size_t es = p->ep.out_u8 ? 1 : sizeof(float);
  const int copy = qi_qconv_copies_a(p, mc);
  for (size_t r0 = m_begin; r0 < m_end; r0 += mc) {
    size_t m = m_end - r0 < mc ? m_end - r0 : mc;
    for (size_t g = p_begin / ppg; g * ppg < p_end; g++) {
      size_t n0, n1;
      if (!qi_group_cols(g, ppg, p_begin, p_end, QI_QC8W_NR, p->n, &n0, &n1)) continue;
      const uint8_t *a;
      size_t lda, k;
      if (p->direct && !copy) {
        a = p->x + r0 * p->lda + g * p->cin;
        lda = p->lda;
        k = p->k;
      } else if (p->direct) {
        const size_t st = qi_qconv_a_stride(p->k_pad);
        for (size_t i = 0; i < m; i++) memcpy(cols + i * st, p->x + (r0 + i) * p->lda + g * p->cin, p->k);
        a = cols;
        lda = st;
        k = p->k;
      } else {
        qi_qconv_im2col(p, g, r0, m, cols);
        a = cols;
        lda = qi_qconv_a_stride(p->k_pad);
        k = p->k_pad;
      }
      qi_qepi ep = p->ep;
      ep.scale = p->ep.scale + g * p->n;
      ep.out = (char *)p->ep.out + (r0 * p->ep.ldo + g * p->n) * es;
      fn(m, n0, n1, k, a, lda, p->bias + g * p->n_pad, p->w + g * p->n_pad * p->k_pad, p->k_pad,
         &ep, acc);
      qi_qconv_residual(p, r0, m, g * p->n + n0, g * p->n + n1);
    }
  }
}

void qi_qconv_residual(const qi_qconv_problem *p, size_t r0, size_t m, size_t c0, size_t c1) {
  if (!p->res || !p->ep.out_u8 || m == 0 || c0 >= c1) return;
  const size_t ldo = p->ep.ldo;
  qi_stream_args a;
  memset(&a, 0, sizeof a);
  a.op = QI_STREAM_QADD;
  a.qadd = p->res_q;
  uint8_t *out = (uint8_t *)p->ep.out + r0 * ldo;
  const uint8_t *res = p->res + r0 * ldo;
  if (c0 == 0 && c1 == ldo) { /* whole rows: one run */
    a.x = out, a.x2 = res, a.y = out;
    p->res_fn(&a, 0, m * ldo);
    return;
  }
  for (size_t i = 0; i < m; i++) {
    a.x = out + i * ldo, a.x2 = res + i * ldo, a.y = out + i * ldo;
    p->res_fn(&a, c0, c1);
  }
}

/* Per-thread scratch for the Cython drivers: one buffer per OS thread, kept between calls and
 * grown on demand (freed when the thread exits). Allocating per call cost a batch-1 layer a few
 * microseconds (above 128 KiB glibc maps fresh pages each time), which is what it computes in.
 * 16 KiB of slack past the end keeps the next thread's buffer out of this core's prefetcher. */
typedef struct qi_qbuf {
  void *mem;
  size_t cap;
} qi_qbuf;
static pthread_key_t g_qbuf_key;
static pthread_once_t g_qbuf_once = PTHREAD_ONCE_INIT;
static int g_qbuf_ok;

static void qi_qbuf_free(void *p) {
  qi_qbuf *b = (qi_qbuf *)p;
  free(b->mem);
  free(b);
}

static void qi_qbuf_init(void) { g_qbuf_ok = pthread_key_create(&g_qbuf_key, qi_qbuf_free) == 0; }

void *qi_qint8_scratch(size_t bytes) {
  pthread_once(&g_qbuf_once, qi_qbuf_init);
  if (!g_qbuf_ok) return NULL;
  qi_qbuf *b = (qi_qbuf *)pthread_getspecific(g_qbuf_key);
  if (!b) {
    b = (qi_qbuf *)calloc(1, sizeof *b);
    if (!b) return NULL;
    if (pthread_setspecific(g_qbuf_key, b)) {
      free(b);
      return NULL;
    }
  }
  if (b->cap < bytes || !b->mem) {
    void *m = NULL;
    free(b->mem);
    b->mem = NULL;
    b->cap = 0;
    if (posix_memalign(&m, 64, bytes + 16384)) return NULL;
    b->mem = m;
    b->cap = bytes;
  }
  return b->mem;
}

#if QI_BUILD_AVX512VNNI
long long qi_qint8_vnni_peak__avx512vnni(long long iters);
long long qi_qint8_vnni_stream__avx512vnni(const int8_t *buf, size_t bytes, long long passes);
#endif

/* Each of nt threads streams its share of buf (whole 64-byte lines) passes times */
long long qi_qint8_vnni_stream(const int8_t *buf, size_t bytes, long long passes, int nt) {
#if QI_BUILD_AVX512VNNI
  const size_t lines = bytes / 64;
  long long s = 0;
  if (nt < 1) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : s)
  for (int t = 0; t < nt; t++) {
    const size_t l0 = lines * (size_t)t / (size_t)nt, l1 = lines * (size_t)(t + 1) / (size_t)nt;
    s += qi_qint8_vnni_stream__avx512vnni(buf + l0 * 64, (l1 - l0) * 64, passes);
  }
  return s;
#else
  (void)buf, (void)bytes, (void)passes, (void)nt;
  return -1;
#endif
}

long long qi_qint8_vnni_peak(long long iters) {
#if QI_BUILD_AVX512VNNI
  return qi_qint8_vnni_peak__avx512vnni(iters);
#else
  (void)iters;
  return -1;
#endif
}
