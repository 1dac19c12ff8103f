/* qinfer kernels: the per-slot dispatch table.
 *
 * Design: ukernels.inc expands into a static array of every kernel this build contains (lines of
 * tiers not compiled in -- no compiler support, non-x86 -- drop out through QI_IF_BUILT_<isa>).
 * qi_dispatch_init walks it and keeps, per slot, the highest runnable tier <= cap. Cheap enough to
 * redo whenever Python changes the cap.
 */
#include "qinfer/cpu.h"
#include "qinfer/dispatch.h"

#ifndef QI_BUILD_AVX2
#define QI_BUILD_AVX2 0
#endif
#ifndef QI_BUILD_AVX512VNNI
#define QI_BUILD_AVX512VNNI 0
#endif

#define QI_IF_BUILT_scalar(...) __VA_ARGS__
#if QI_BUILD_AVX2
#define QI_IF_BUILT_avx2(...) __VA_ARGS__
#else
#define QI_IF_BUILT_avx2(...)
#endif
#if QI_BUILD_AVX512VNNI
#define QI_IF_BUILT_avx512vnni(...) __VA_ARGS__
#else
#define QI_IF_BUILT_avx512vnni(...)
#endif

#define QI_TIER_OF_scalar QI_TIER_SCALAR
#define QI_TIER_OF_avx2 QI_TIER_AVX2
#define QI_TIER_OF_avx512vnni QI_TIER_AVX512VNNI

static const qi_kernel_info g_kernels[] = {
#define QI_UKERNEL(isa, name, op, dtypes)                                                   \
  QI_IF_BUILT_##isa({QI_TIER_OF_##isa, QI_SLOT_##op##_##dtypes, #isa, #name, #op "_" #dtypes, \
                     (qi_any_fn)name},)
#include "ukernels.inc"
};

static const char *const g_slot_names[QI_SLOT_COUNT] = {
#define QI_SLOT(op, dtypes) #op "_" #dtypes,
#include "ukernels.inc"
};

qi_any_fn qi_dispatch_table[QI_SLOT_COUNT];
static const char *g_chosen[QI_SLOT_COUNT];
static int g_tier = -1;

int qi_dispatch_init(int cap) {
  int best = qi_cpu_best_tier();
  int chosen_tier[QI_SLOT_COUNT];
  if (cap > best) cap = best;
  if (cap < 0) cap = 0;
  for (int s = 0; s < QI_SLOT_COUNT; s++) {
    chosen_tier[s] = -1;
    qi_dispatch_table[s] = 0;
    g_chosen[s] = "";
  }
  for (size_t i = 0; i < sizeof(g_kernels) / sizeof(g_kernels[0]); i++) {
    const qi_kernel_info *k = &g_kernels[i];
    if (k->tier > cap || !qi_cpu_tier_supported(k->tier)) continue;
    if (k->tier > chosen_tier[k->slot]) {
      chosen_tier[k->slot] = k->tier;
      qi_dispatch_table[k->slot] = k->fn;
      g_chosen[k->slot] = k->name;
    }
  }
  g_tier = cap;
  return cap;
}

int qi_dispatch_tier(void) { return g_tier; }

size_t qi_kernel_count(void) { return sizeof(g_kernels) / sizeof(g_kernels[0]); }

const qi_kernel_info *qi_kernel_at(size_t i) {
  return i < qi_kernel_count() ? &g_kernels[i] : 0;
}

const char *qi_slot_name(int slot) {
  return (slot >= 0 && slot < QI_SLOT_COUNT) ? g_slot_names[slot] : "";
}

const char *qi_dispatch_chosen(int slot) {
  return (slot >= 0 && slot < QI_SLOT_COUNT && g_chosen[slot]) ? g_chosen[slot] : "";
}
