/* The streaming uint8 kernels, scalar build of kernels/stream-u8-body.inc. */
#define QE_KERNEL qi_stream_u8__scalar
#include "stream-u8-body.inc"
