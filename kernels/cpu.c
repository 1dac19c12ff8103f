/* qinfer kernels: CPU feature detection.
 *
 * Design: cpuid leaves 1 and 7 (subleaves 0 and 1) give the instruction sets, xgetbv(0) tells
 * whether the OS saves the ymm / zmm state; a feature counts only with both. Detection runs once
 * (first call; the extension calls it at import, under the GIL) and is cached. Non-x86 builds
 * report nothing and run the scalar tier.
 */
#include "qinfer/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define QI_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef QI_BUILD_AVX2
#define QI_BUILD_AVX2 0
#endif
#ifndef QI_BUILD_AVX512VNNI
#define QI_BUILD_AVX512VNNI 0
#endif

static qi_cpu_features g_features;
static int g_detected = 0;

#ifdef QI_X86
static unsigned long long qi_xgetbv0(void) {
  unsigned int lo, hi;
  __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((unsigned long long)hi << 32) | lo;
}
#endif

static void qi_detect(qi_cpu_features *f) {
#ifdef QI_X86
  unsigned int a, b, c, d, max_leaf;
  unsigned int c1 = 0, b7 = 0, c7 = 0, a7_1 = 0;
  int osxsave = 0;
  if (!__get_cpuid(0, &max_leaf, &b, &c, &d)) return;
  if (max_leaf >= 1 && __get_cpuid(1, &a, &b, &c, &d)) c1 = c;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    b7 = b;
    c7 = c;
    if (a >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      a7_1 = a;
    }
  }
  osxsave = (c1 >> 27) & 1;
  if (osxsave) {
    unsigned long long xcr0 = qi_xgetbv0();
    f->os_ymm = (xcr0 & 0x6) == 0x6;    /* SSE + AVX state */
    f->os_zmm = f->os_ymm && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
  }
  f->sse41 = (c1 >> 19) & 1;
  f->avx = f->os_ymm && ((c1 >> 28) & 1);
  f->fma = f->avx && ((c1 >> 12) & 1);
  f->f16c = f->avx && ((c1 >> 29) & 1);
  f->avx2 = f->avx && ((b7 >> 5) & 1);
  f->avx512f = f->os_zmm && ((b7 >> 16) & 1);
  f->avx512dq = f->avx512f && ((b7 >> 17) & 1);
  f->avx512bw = f->avx512f && ((b7 >> 30) & 1);
  f->avx512vl = f->avx512f && ((b7 >> 31) & 1);
  f->avx512vnni = f->avx512f && ((c7 >> 11) & 1);
  f->avx512bf16 = f->avx512f && ((a7_1 >> 5) & 1);
  f->avxvnni = f->avx && ((a7_1 >> 4) & 1);
#else
  (void)f;
#endif
}

const qi_cpu_features *qi_cpu_get_features(void) {
  if (!g_detected) {
    qi_detect(&g_features);
    g_detected = 1;
  }
  return &g_features;
}

static int qi_cpu_runs_tier(int tier) {
  const qi_cpu_features *f = qi_cpu_get_features();
  switch (tier) {
    case QI_TIER_SCALAR: return 1;
    case QI_TIER_AVX2: return f->avx2 && f->fma && f->f16c;
    case QI_TIER_AVX512VNNI:
      return f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq && f->avx512vnni && f->fma;
    default: return 0;
  }
}

static int qi_tier_built(int tier) {
  switch (tier) {
    case QI_TIER_SCALAR: return 1;
    case QI_TIER_AVX2: return QI_BUILD_AVX2;
    case QI_TIER_AVX512VNNI: return QI_BUILD_AVX512VNNI;
    default: return 0;
  }
}

int qi_cpu_tier_supported(int tier) { return qi_tier_built(tier) && qi_cpu_runs_tier(tier); }

int qi_cpu_best_tier(void) {
  int t = QI_TIER_COUNT - 1;
  while (t > 0 && !qi_cpu_tier_supported(t)) t--;
  return t;
}

const char *qi_tier_name(int tier) {
  switch (tier) {
    case QI_TIER_SCALAR: return "scalar";
    case QI_TIER_AVX2: return "avx2";
    case QI_TIER_AVX512VNNI: return "avx512vnni";
    default: return "?";
  }
}

int qi_openmp_enabled(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

int qi_max_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
