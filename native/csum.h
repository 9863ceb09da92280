// btrfs data checksums, shared by the export addon (native/btrfs.c: fingerprints must not sample a
// copy that fails its checksum) and the view engine (native/view/read.c: every read of an extent
// that carries checksums is verified sector by sector, falling back to the other copies).
#ifndef EXTFS_CSUM_H
#define EXTFS_CSUM_H

#include <stddef.h>
#include <stdint.h>

// Checksum algorithms as the view tables name them (xt_header.csum_alg). 0: the image carries none.
#define XT_CSUM_NONE 0u
#define XT_CSUM_CRC32C 1u

// CRC32C (Castagnoli) of `len` bytes as btrfs stores it for its default csum type: initial value
// ~0, final inversion; btrfs keeps the 4 bytes little-endian.
uint32_t extfs_crc32c(const void *data, size_t len);

// 1 when the `len` bytes at `data` have checksum `want` (csum_size bytes, as stored on disk) under
// algorithm `alg`; 0 otherwise (an unknown algorithm never verifies).
int extfs_csum_ok(uint32_t alg, const uint8_t *data, size_t len, const uint8_t *want);

#endif
