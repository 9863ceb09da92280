// The view's loader of manifest format version 2 (docs/manifest-v2.md): the body decoded, validated
// and written as the view's tables (tables.h, version 4) into a file, without holding the tree in
// memory. Pure: no libfuse, no N-API, so the fuzzer (fuzz/c/load2.c) links it alone.
#ifndef EXTFS_VIEW_LOAD2_H
#define EXTFS_VIEW_LOAD2_H

#include <stddef.h>
#include <stdint.h>

// m2_load_in.features: the header's feature flags that change what the body may hold.
#define M2L_INLINE 1u     // "inline-data"
#define M2L_CHECKSUMS 2u  // "data-checksums"
#define M2L_COMPRESSED 4u // "compressed-extents"
#define M2L_BYTE_NAMES 8u // "byte-names": names, targets and xattr names need not be UTF-8

struct m2_load_in {
  int manifest_fd;
  uint64_t body_start, body_end; // file offsets: the first record, the trailer
  // The trailer's counts: the body must agree with them.
  uint32_t n_inodes, n_dirs;
  uint64_t n_entries;
  // From the header, validated by the caller (src/manifest/validate.ts validateHeader).
  uint32_t n_devices;
  const uint64_t *device_sizes; // bytes, n_devices of them
  uint32_t features;            // M2L_*
  uint64_t root;                // the root directory's inode number
  uint32_t block_size;
  uint32_t csum_alg, csum_size, sector_size; // XT_CSUM_* (native/csum.h); all 0 without data-checksums
  int tables_fd; // where the tables are written: emptied first, sized to the image at the end
  // Progress (NULL: none), called on the loader's thread at each window read (1 MiB) and at the end:
  // `done` of `total` bytes of reading (the body is read twice: pass 1, then passes 2 and 3 together),
  // `inodes` written (pass 3) of n_inodes.
  void (*progress)(void *ctx, uint64_t done, uint64_t total, uint32_t inodes);
  void *progress_ctx;
};

struct m2_load_out {
  uint64_t tables_bytes;
  uint32_t n_inodes, n_dirents, n_extents, n_xattrs, n_copies;
  uint64_t names_size, data_size;
  uint64_t *device_ends; // caller's array of n_devices: per device, the end of its furthest extent
  uint64_t heap_bytes;   // what the loader allocated at its peak (its tables are in the file)
};

// Decode and check the body, write the tables. 0, or -1 with `msg` holding one line naming the
// problem (and the inode), e.g. `inode 12: entry "a/b" contains "/"`.
int m2_load(const struct m2_load_in *in, struct m2_load_out *out, char *msg, size_t msg_len);

// Tables written by m2_load number inodes by the rank of their inode number, the root swapped to
// index 0: inode numbers ascend from index 1 on, except that the smallest sits where the root's
// rank is. m2_in_rank_order says whether checked tables' `inodes` (n >= 1) are in that order (O(n),
// once, before m2_index_of is trusted); m2_index_of finds ino's index by binary search, or -1.
struct xt_inode;
int m2_in_rank_order(const struct xt_inode *inodes, uint32_t n);
int64_t m2_index_of(const struct xt_inode *inodes, uint32_t n, uint64_t ino);

#endif
