/* qinfer kernels: CPU feature detection (cpuid + xgetbv), done once.
 *
 * Design: a feature counts only when both the CPU reports it and the OS saves the register state
 * it needs (XCR0 bits for ymm / zmm), as NumPy's and XNNPACK's detectors do. Tiers are ordered:
 * a tier is usable when every feature its kernels are compiled with is present.
 */
#ifndef QINFER_CPU_H
#define QINFER_CPU_H

/* ISA tiers, ordered (a cap of N allows every tier <= N). Names: see qi_tier_name(). */
enum qi_tier {
  QI_TIER_SCALAR = 0,
  QI_TIER_AVX2 = 1,       /* avx2 + fma + f16c, OS ymm state */
  QI_TIER_AVX512VNNI = 2, /* avx512 f/bw/vl/dq + vnni + fma, OS zmm state */
  QI_TIER_COUNT = 3
};

typedef struct qi_cpu_features {
  int sse41, avx, avx2, fma, f16c;
  int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
  int avxvnni;
  int os_ymm, os_zmm; /* XCR0 says the OS saves ymm (bits 1,2) / opmask+zmm (bits 5,6,7) */
} qi_cpu_features;

/* Detected once (first call), then cached; thread-safe after the first call. */
const qi_cpu_features *qi_cpu_get_features(void);

/* Highest tier this CPU + OS can run (compiled-in tiers only, see QI_BUILD_*). */
int qi_cpu_best_tier(void);

/* 1 if the CPU can run tier `tier` and the build contains it, else 0. */
int qi_cpu_tier_supported(int tier);

const char *qi_tier_name(int tier);

/* OpenMP as compiled into the kernels: 1 / 0, and omp_get_max_threads() (1 without OpenMP). */
int qi_openmp_enabled(void);
int qi_max_threads(void);

#endif /* QINFER_CPU_H */
