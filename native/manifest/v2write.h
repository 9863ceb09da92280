// A buffered writer of manifest format version 2 body records (docs/manifest-v2.md): the encoding
// only (varints in shortest form, zigzag, the per-record deltas and the body-wide device cursor).
// What to write comes from a bulk mapper; the preamble, header and trailer are assembled in
// TypeScript (src/manifest/v2/) around the body file this writes.
#ifndef EXTFS_MANIFEST_V2WRITE_H
#define EXTFS_MANIFEST_V2WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "v2.h"

#define M2W_BUFFER (256u * 1024u) // bytes buffered before one write(2)

struct m2w {
  int fd;
  int error;              // errno of the first failed write; every later call is a no-op
  uint64_t written;       // body bytes handed to write(2) or still buffered
  uint64_t prev_ino;      // INODE records: ino delta base
  int64_t prev_sec[3];    // atime, mtime, ctime: seconds delta bases
  uint64_t cursor;        // extents: deviceOffset delta base, across the whole body
  uint64_t prev_child;    // DIR entries: child delta base, within one record
  size_t len;
  uint8_t buf[M2W_BUFFER];
};

void m2w_init(struct m2w *w, int fd);
// Write out what is buffered; returns 0 or the errno of the first failure.
int m2w_flush(struct m2w *w);

// Primitives, for what the record helpers below do not cover.
void m2w_raw(struct m2w *w, const void *data, size_t n);
void m2w_varint(struct m2w *w, uint64_t v);
void m2w_zigzag(struct m2w *w, int64_t v);
void m2w_bytes(struct m2w *w, const void *data, size_t n);

// Encodes a varint into out (at least M2_VARINT_MAX_BYTES); returns its length.
size_t m2_varint_encode(uint8_t *out, uint64_t v);
size_t m2_zigzag_encode(uint8_t *out, int64_t v);

// DIR record: the header, then `n` entries. Entries may also be pre-encoded by the caller with
// m2_dir_entry_encode (when it must count them before it can write the header).
void m2w_dir_begin(struct m2w *w, uint64_t dir, uint64_t n);
void m2w_dir_entry(struct m2w *w, const void *name, size_t len, uint64_t child);
// Encodes one entry into out (at least 255 + 2 * M2_VARINT_MAX_BYTES bytes) against *prev_child.
size_t m2_dir_entry_encode(uint8_t *out, const void *name, size_t len, uint64_t child, uint64_t *prev_child);

struct m2_time {
  int64_t sec;
  uint32_t nsec;
};

struct m2_inode {
  uint64_t ino;
  uint32_t mode, uid, gid, nlink;
  uint64_t size, blocks;
  struct m2_time atime, mtime, ctime;
  uint32_t has; // M2_HAS_*
  uint64_t rdev;
  uint32_t attrs;
};

// INODE record up to and including `attrs`; then the caller writes the xattrs (m2w_xattrs_begin and
// m2w_xattr) and the part for its type (m2w_bytes for inline content and symlink targets, or
// m2w_extents_begin and m2w_extent).
void m2w_inode_begin(struct m2w *w, const struct m2_inode *inode);
void m2w_xattrs_begin(struct m2w *w, uint64_t n);
void m2w_xattr(struct m2w *w, const void *name, size_t name_len, const void *value, size_t value_len);
void m2w_extents_begin(struct m2w *w, uint64_t n);
// One plain extent (no extras); `gap` is fileOffset minus the previous extent's end in this file.
void m2w_extent(struct m2w *w, uint64_t gap, uint64_t length, uint32_t device, uint64_t device_offset);

// The extras of one extent (docs/manifest-v2.md, `extras`): its other copies and data checksums
// (feature data-checksums), and how it is compressed (feature compressed-extents, with checksums).
struct m2_copy {
  uint32_t device;
  uint64_t device_offset;
};

struct m2_extent_extras {
  bool csums;                          // extras bit 0: the copies and csums below are written
  uint32_t ncopies;                    // other copies, 0..M2_MAX_COPIES
  struct m2_copy copies[M2_MAX_COPIES];
  const uint8_t *csum;                 // one checksum per sector of the extent's bytes on the device
  size_t csum_len;
  uint8_t algorithm;                   // extras bit 1 when nonzero: 1 zlib, 2 lzo, 3 zstd
  uint64_t disk_length, decoded_length, decoded_offset;
};

// One extent with extras; the device cursor advances by `length` (the file bytes), as for plain ones.
void m2w_extent_extras(struct m2w *w, uint64_t gap, uint64_t length, uint32_t device, uint64_t device_offset,
                       const struct m2_extent_extras *x);

#endif
