// What the files of the version 2 loader share (load2.h is its interface): the loader's state,
// the window the body is read through and its field readers (inline: every record goes through them),
// and the functions one file calls in another. Split by job:
//   load2.c         the passes in order, sizing and mapping the tables file, m2_load
//   load2_decode.c  failing with one line, reading the window, checking names
//   load2_index.c   inode numbers, ranks and table indexes (m2_index_of)
//   load2_data.c    appending sections and the data blob (shared values)
//   load2_dirs.c    DIR records: dirents, names, parents, the tree (pass 2)
//   load2_inodes.c  INODE records: inodes, extents, copies, xattrs, inline data (pass 3)
// Pass 1 (scan) runs the record readers of load2_dirs.c and load2_inodes.c without writing.
#ifndef EXTFS_VIEW_LOAD2_INTERNAL_H
#define EXTFS_VIEW_LOAD2_INTERNAL_H

#include "load2.h"
#include "tables.h"
#include "../csum.h"
#include "../manifest/v2.h"
#include "../manifest/utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_WINDOW (1u << 20)   // bytes of body read at once; every field but checksums fits in half
#define DEDUP_SLOTS (1u << 18)   // data blob dedup cache: 4 MiB, direct-mapped (see data_add)
#define XATTRS_MAX (M2_MAX_XATTR_LIST / 7 + 1) // names of at least "user.x" and a NUL
#define MAX_EXTENTS_IN_ALL 100000000u          // validate.ts LIMITS.extents
#define NO_PARENT UINT32_MAX
#define DROP_EVERY 65536u // dirents between drop_pages
#define APPEND_BYTES (1u << 20)
#define SCRATCH_BYTES (M2_MAX_XATTR_LIST + 16)

// loader.flags per inode: its kind (S_IFMT >> 12 fits in 4 bits), whether a DIR record named it, and
// the state of the walk that proves every directory reaches the root.
#define F_KIND 0x0fu
#define F_DIR_RECORD 0x10u
#define F_WALKING 0x20u
#define F_ROOTED 0x40u
#define KIND_OF(mode) (((mode) & S_IFMT) >> 12)

// A section written in order through a buffer of APPEND_BYTES: pwrite when full or when the next
// write is elsewhere.
struct appender {
  uint64_t at;  // file offset of buf[0]
  uint32_t len; // bytes in buf
  uint8_t *buf;
};

struct dir_range {
  uint32_t index, first, count;
};

struct dedup_slot {
  uint64_t hash;
  uint32_t off, len;
};

struct window {
  int fd;
  uint64_t pos, end; // file offsets: the next byte, the end of the body
  uint64_t at;       // file offset of buf[0]
  uint32_t len;      // bytes valid in buf
  uint8_t *buf;
};

// Where a record's problem is: a message starts with it.
enum where { AT_BODY, AT_RECORD, AT_INODE };

struct loader {
  const struct m2_load_in *in;
  struct window w;
  jmp_buf fail;
  char *msg;
  size_t msg_len;
  enum where where;
  uint64_t where_n; // the inode number, or the INODE record's position
  int writing;      // passes 2 and 3

  // Per inode: numbers by rank; flags and parents by table index (rank with the root swapped to 0).
  uint64_t *inos;
  uint8_t *flags;
  uint32_t *parent;
  uint32_t n, root_rank;
  uint32_t next_rank; // pass 3: the INODE record's rank
  uint64_t read_before; // progress: bytes of reading done by the passes before this one
  uint32_t last_rank; // rank_of's hint

  // Pass 1's totals, which size the sections; passes 2 and 3 check they write exactly these.
  uint64_t dirs, entries, names_size, extents, raw_extents, xattrs, copies, data_max;
  unsigned __int128 blocks512;
  uint64_t inodes_at; // file offset of the first INODE record (body_end: none)

  // Decoding state that deltas refer to: the previous INODE record's ino and times, the device cursor.
  uint64_t prev_ino;
  int64_t prev_time[3];
  int64_t cursor;

  // The tables file: mapped for the header, dirents and names (pass 2 sorts each directory's entries
  // in place); the other sections written by pass 3 through appenders (pwrite: a page overwritten
  // whole is never zero-filled first, as a page of a mapping is). Counts written so far per section.
  uint8_t *map;
  uint64_t map_len;
  struct xt_header *h;
  struct xt_dirent *dirents;
  char *names;
  uint64_t n_dirents, n_extents, n_xattrs, n_copies, n_names, n_data;
  uint64_t dropped_at; // n_dirents when pass 2 last dropped the mapping's pages
  struct appender inodes, extentv, xattrv, copyv, data;
  uint8_t *scratch; // SCRATCH_BYTES: data read back (dedup) or copied through (checksums)
  // Each directory's dirents (pass 2), sorted by index for pass 3, which meets the inodes in that order.
  struct dir_range *dir_ranges;
  uint64_t n_dir_ranges;
  struct dedup_slot *dedup;
  uint64_t *device_ends; // the caller's, filled in pass 1

  // One inode's xattrs while its record is read: names back to back (each NUL-terminated, as
  // listxattr returns them), where each starts, its value.
  char *xnames;
  uint32_t *xname_off, *xvalue_off, *xvalue_len;
  uint16_t *xname_len;

  uint64_t heap;
};


// ------------------------------------------------------------------------------------- across files

// load2_decode.c
__attribute__((format(printf, 2, 3), noreturn)) void m2l_fail(struct loader *L, const char *fmt, ...);
__attribute__((noreturn)) void m2l_changed(struct loader *L);
const char *m2l_quoted(const uint8_t *p, uint64_t len, char *out, size_t out_len);
void m2l_fill(struct loader *L, uint64_t want);
// Tells in->progress how far the passes have read (see load2.h).
void m2l_progress(struct loader *L);
int m2l_byte_names(struct loader *L);
extern const char *const m2l_NOT_UTF8;
const char *m2l_entry_name_problem(struct loader *L, const uint8_t *p, uint64_t len);
const char *m2l_xattr_name_problem(struct loader *L, const uint8_t *p, uint64_t len);
uint64_t m2l_bytes_len(struct loader *L, uint64_t min, uint64_t max, const char *what);
int m2l_name_cmp(const void *a, uint32_t alen, const void *b, uint32_t blen);

// load2_index.c
uint32_t m2l_rank_to_index(const struct loader *L, uint32_t rank);
uint64_t m2l_ino_of_index(const struct loader *L, uint32_t index);
int64_t m2l_index_of(struct loader *L, uint64_t ino);
unsigned m2l_kind_of(const struct loader *L, uint32_t index);
const char *m2l_kind_name(unsigned kind);

// load2_data.c
void m2l_flush(struct loader *L, struct appender *a);
void m2l_put(struct loader *L, struct appender *a, uint64_t at, const void *p, uint64_t len);
uint32_t m2l_data_put(struct loader *L, const uint8_t *p, uint64_t len, int nul);
uint32_t m2l_data_add(struct loader *L, const uint8_t *p, uint64_t len, int nul);
uint32_t m2l_data_copy(struct loader *L, uint64_t at, uint64_t len);

// load2_dirs.c
// The names blob qsort's comparators read (dirents, one inode's xattrs): C11's qsort takes no context.
extern __thread const char *m2l_sort_names;
void m2l_dir_record(struct loader *L);
void m2l_check_tree(struct loader *L);
void m2l_write_dirs(struct loader *L);
void m2l_dir_range_of(struct loader *L, uint32_t index, uint32_t *first, uint32_t *count);

// load2_inodes.c
void m2l_inode_record(struct loader *L);
void m2l_write_inodes(struct loader *L);

// ------------------------------------------------------------------------------------- reading fields

// `n` (at most READ_WINDOW / 2) bytes at the read position, which moves past them.
static inline const uint8_t *take(struct loader *L, uint64_t n) {
  struct window *w = &L->w;
  if (w->pos < w->at || w->pos + n > w->at + w->len) m2l_fill(L, n);
  const uint8_t *p = w->buf + (w->pos - w->at);
  w->pos += n;
  return p;
}

static inline void skip(struct loader *L, uint64_t n) {
  if (n > L->w.end - L->w.pos) m2l_fail(L, "a record runs past the end of the body (truncated)");
  L->w.pos += n;
}

static inline uint8_t byte(struct loader *L) {
  return *take(L, 1);
}

// Unsigned LEB128 at p (avail bytes there): the bytes it takes, 0 when it runs past avail, -1 when it
// is not in its shortest form, -2 when it passes 56 bits (over any limit).
static inline int decode_varint(const uint8_t *p, uint64_t avail, uint64_t *out) {
  uint64_t v = 0;
  for (unsigned i = 0; i < avail; i++) {
    uint8_t b = p[i];
    if (i > 0 && b == 0) return -1;
    if (i == 8) return -2; // 8 bytes already hold 56 bits
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) return *out = v, (int)i + 1;
  }
  return 0;
}

// Unsigned LEB128 in its shortest form, at most `max`.
static inline uint64_t varint_max(struct loader *L, uint64_t max, const char *what) {
  struct window *w = &L->w;
  uint64_t left = w->end - w->pos, want = left < M2_VARINT_MAX_BYTES ? left : M2_VARINT_MAX_BYTES;
  if (w->pos < w->at || w->pos + want > w->at + w->len) m2l_fill(L, want);
  uint64_t v = 0;
  int n = decode_varint(w->buf + (w->pos - w->at), want, &v);
  if (n == 0) m2l_fail(L, "a record runs past the end of the body (truncated)");
  if (n == -1) m2l_fail(L, "%s: varint not in its shortest form", what);
  if (n == -2) m2l_fail(L, "%s: value over 2^53 - 1", what);
  w->pos += (uint64_t)n;
  if (v > max) m2l_fail(L, "%s: %llu is over the limit of %llu", what, (unsigned long long)v, (unsigned long long)max);
  return v;
}

static inline uint64_t varint(struct loader *L, const char *what) {
  return varint_max(L, M2_VALUE_MAX, what);
}

// (v << 1) ^ (v >> 63) decoded; the encoded form is a varint like any (at most 2^53 - 1), so the
// magnitude of v is below 2^52.
static inline int64_t zigzag(struct loader *L, const char *what) {
  uint64_t raw = varint(L, what);
  return raw & 1 ? -(int64_t)(raw >> 1) - 1 : (int64_t)(raw >> 1);
}

static inline uint32_t u32le(struct loader *L) {
  const uint8_t *p = take(L, 4);
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define QUOTE_LEN 340

#endif
