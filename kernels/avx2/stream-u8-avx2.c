/* The streaming uint8 kernels, avx2 build of kernels/stream-u8-body.inc. */
#define QE_KERNEL qi_stream_u8__avx2
#include "stream-u8-body.inc"
