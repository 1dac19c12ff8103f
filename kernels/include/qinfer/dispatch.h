/* qinfer kernels: the dispatch table, one function pointer per slot of ukernels.inc.
 *
 * Design: qi_dispatch_init(cap) fills the table once at import with, per slot, the kernel of the
 * highest tier that is compiled in, runnable on this CPU and <= cap (QINFER_ISA, applied from
 * Python). Drivers read the table at each call through the typed getters below, so re-capping
 * (tests) takes effect on the next call. Re-capping while kernels run in other threads is not
 * supported.
 */
#ifndef QINFER_DISPATCH_H
#define QINFER_DISPATCH_H

#include "qinfer/ukernels.h"

typedef void (*qi_any_fn)(void);

enum qi_slot {
#define QI_SLOT(op, dtypes) QI_SLOT_##op##_##dtypes,
#include "../../ukernels.inc"
  QI_SLOT_COUNT
};

/* One compiled kernel (a line of ukernels.inc that this build contains). */
typedef struct qi_kernel_info {
  int tier;           /* enum qi_tier */
  int slot;           /* enum qi_slot */
  const char *isa;    /* "scalar", "avx2", "avx512vnni" */
  const char *name;   /* "qi_dwconv2d_f32__avx2" */
  const char *slot_name; /* "dwconv2d_f32" */
  qi_any_fn fn;
} qi_kernel_info;

extern qi_any_fn qi_dispatch_table[QI_SLOT_COUNT];

/* (Re)fill the table for tiers <= cap (clamped to the best runnable tier); returns the tier in
 * effect (the highest tier any chosen kernel could have, i.e. min(cap, best)). */
int qi_dispatch_init(int cap);
int qi_dispatch_tier(void);

size_t qi_kernel_count(void);
const qi_kernel_info *qi_kernel_at(size_t i);
const char *qi_slot_name(int slot);
/* Name of the kernel chosen for `slot` ("" before init). */
const char *qi_dispatch_chosen(int slot);

#define QI_SLOT(op, dtypes)                                                            \
  static inline qi_##op##_##dtypes##_fn *qi_kernel_##op##_##dtypes(void) {            \
    return (qi_##op##_##dtypes##_fn *)qi_dispatch_table[QI_SLOT_##op##_##dtypes];       \
  }
#include "../../ukernels.inc"

#endif /* QINFER_DISPATCH_H */
