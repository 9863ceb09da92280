// CRC32C for btrfs data checksums. On x86-64 the SSE4.2 crc32 instruction computes exactly CRC32C
// (it was added for iSCSI/btrfs-style checksums), 8 bytes per instruction: no library is needed and
// none is installed on the target hosts (libisal is not in the base system). Other CPUs, or x86-64
// without SSE4.2, take the bitwise loop: slow but the same numbers, and only the view's verified
// reads use it.
#include "csum.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len) {
  uint64_t c = crc;
  for (; len >= 8; p += 8, len -= 8) {
    uint64_t v;
    memcpy(&v, p, 8); // unaligned-safe
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = (uint32_t)c;
  for (; len > 0; p++, len--) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}
#endif

static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t len) {
  while (len--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u))); // reflected Castagnoli polynomial
  }
  return crc;
}

uint32_t extfs_crc32c(const void *data, size_t len) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return ~crc32c_sse42(~0u, data, len);
#endif
  return ~crc32c_bitwise(~0u, data, len);
}

int extfs_csum_ok(uint32_t alg, const uint8_t *data, size_t len, const uint8_t *want) {
  if (alg != XT_CSUM_CRC32C) return 0;
  uint32_t c = extfs_crc32c(data, len);
  const uint8_t le[4] = {(uint8_t)c, (uint8_t)(c >> 8), (uint8_t)(c >> 16), (uint8_t)(c >> 24)};
  return memcmp(le, want, 4) == 0;
}
