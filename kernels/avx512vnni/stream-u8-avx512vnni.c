/* The streaming uint8 kernels, avx512vnni build of kernels/stream-u8-body.inc. */
#define QE_KERNEL qi_stream_u8__avx512vnni
#include "stream-u8-body.inc"
