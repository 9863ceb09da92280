// Manifest format version 2: the constants both its C writer (the bulk mappers) and its C reader (the
// view's loader) use. docs/manifest-v2.md is the byte-for-byte definition; src/manifest/v2/format.ts
// holds the same constants for TypeScript.
#ifndef EXTFS_MANIFEST_V2_H
#define EXTFS_MANIFEST_V2_H

#include <stdint.h>

#define M2_PREAMBLE "EXTFSv2\n"
#define M2_PREAMBLE_LEN 8u
#define M2_HEADER_MAX (16u * 1024u * 1024u) // bytes of header JSON
#define M2_TRAILER_MAGIC "EXTFSEND"
#define M2_TRAILER_LEN 64u
#define M2_MAC_LEN 32u
#define M2_SIGNED 1u // trailer flags

#define M2_TAG_DIR 0x44u   // 'D'
#define M2_TAG_INODE 0x49u // 'I'

// INODE record `has` bits
#define M2_HAS_RDEV 1u
#define M2_HAS_ATTRS 2u
#define M2_HAS_XATTRS 4u
#define M2_HAS_INLINE 8u
#define M2_HAS_ALL 15u

// extent `extras` bits
#define M2_EXT_CSUMS 1u
#define M2_EXT_COMPRESSED 2u

#define M2_VALUE_MAX ((UINT64_C(1) << 53) - 1) // every varint and zigzag magnitude
#define M2_VARINT_MAX_BYTES 10u

// Limits, as version 1's (src/manifest/validate.ts LIMITS)
#define M2_MAX_INODES 16777216u // 2^24: see LIMITS.inodes
#define M2_MAX_ENTRIES_PER_DIR 10000000u
#define M2_MAX_NAME 255u
#define M2_MAX_SYMLINK 4095u
#define M2_MAX_XATTR_VALUE 65536u
#define M2_MAX_XATTR_LIST 65536u
#define M2_MAX_INLINE 65536u
#define M2_MAX_COPIES 3u

struct m2_trailer {
  char magic[8];
  uint32_t inodes, dirs;
  uint64_t entries;
  uint32_t flags, reserved;
  uint8_t mac[M2_MAC_LEN];
};
_Static_assert(sizeof(struct m2_trailer) == M2_TRAILER_LEN, "trailer is 64 bytes");

#endif
