// Shared by the C fuzz targets: what the engine touches in tables (and deltas) that its checkers
// accepted, asserted to lie inside them, and the plan of a read (plan.c) against a linear model.
// Tables that xt_check accepts (and deltas that xt_check_delta accepts) must never make the read
// path or the FUSE operations index past a section, overflow 64 bits or plan a piece the model
// would not: a violation aborts, which libFuzzer reports as a crash with the input saved.
#ifndef EXTFS_FUZZ_PLAN_CHECK_H
#define EXTFS_FUZZ_PLAN_CHECK_H

#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_fail(const char *what, uint64_t a, uint64_t b) {
  fprintf(stderr, "fuzz: %s (%llu, %llu)\n", what, (unsigned long long)a, (unsigned long long)b);
  abort();
}
#define REQUIRE(cond, what, a, b) \
  do {                            \
    if (!(cond)) fuzz_fail(what, (uint64_t)(a), (uint64_t)(b)); \
  } while (0)

// [p, p + len) inside [base, base + size)?
static int inside(const void *p, uint64_t len, const void *base, uint64_t size) {
  const char *c = p, *b = base;
  return c >= b && (uint64_t)(c - b) <= size && len <= size - (uint64_t)(c - b);
}

// Where a plan's extents, copies and checksums must lie, and how many devices there are: the tables'
// own, or (through a delta's map) the delta's sections and the devices after it.
struct plan_bounds {
  const struct xt_header *h; // sector_size, csum_size
  const struct xt_extent *ext;
  uint32_t count;
  const struct xt_copy *copies;
  uint64_t n_copies;
  const char *csums;
  uint64_t csums_size;
  uint64_t n_devices;
};

// What read.c's read_verified and sector_from_copies touch for a data piece of an extent with checksums.
static void check_csum_piece(const struct xt_plan *p, const struct plan_bounds *b, const struct xt_piece *pc) {
  const struct xt_extent *x = pc->x;
  const uint64_t ss = b->h->sector_size, cs = b->h->csum_size;
  REQUIRE(ss > 0 && cs > 0, "checksummed extent without a sector or checksum size", ss, cs);
  uint64_t from, to;
  if (x->flags & XT_EXT_COMPRESSED) { // read.c reads and verifies the whole encoded stream
    from = 0;
    to = xt_compressed_of(x, b->csums).disk_length;
  } else {
    uint64_t rel = pc->device_offset - x->device_offset;
    from = rel / ss * ss, to = (rel + pc->length + ss - 1) / ss * ss;
    REQUIRE(to <= x->length, "whole sectors around a piece pass its extent", to, x->length);
  }
  REQUIRE(p->csums == b->csums && p->copies == b->copies, "plan reads checksums or copies from elsewhere", 0, 0);
  for (uint64_t o = from; o < to; o += ss) {
    const char *want = p->csums + x->csum_off + o / ss * cs;
    REQUIRE(inside(want, cs, b->csums, b->csums_size), "sector checksum outside the data blob", x->csum_off, o);
  }
  REQUIRE(inside(p->copies + x->copy_first, (uint64_t)x->copy_count * sizeof(struct xt_copy), b->copies, b->n_copies * sizeof(struct xt_copy)),
          "copies outside the copies section", x->copy_first, x->copy_count);
  for (uint32_t k = 0; k < x->copy_count; k++) {
    const struct xt_copy *c = &p->copies[x->copy_first + k];
    REQUIRE(c->device < b->n_devices, "copy on no device", c->device, b->n_devices);
    REQUIRE(c->device_offset + to >= c->device_offset, "copy sector offset overflows", c->device_offset, to);
  }
}

// The piece the plan must produce at `pos`: the extent holding pos (linear scan), or zeros up to the
// next extent or the end of the request.
static struct xt_piece model_piece(const struct plan_bounds *b, uint64_t pos, uint64_t end) {
  uint64_t stop = end;
  for (uint32_t i = 0; i < b->count; i++) {
    const struct xt_extent *x = &b->ext[i];
    if (x->file_offset <= pos && pos - x->file_offset < x->length) {
      uint64_t xend = x->file_offset + x->length;
      struct xt_piece w = {.device = x->device, .file_offset = pos, .device_offset = x->device_offset + (pos - x->file_offset),
                           .length = (xend < end ? xend : end) - pos, .x = x};
      if (x->flags & XT_EXT_COMPRESSED) { // the encoded stream whole; the bytes at an offset into what it decodes to
        w.device_offset = x->device_offset;
        w.decoded_offset = xt_compressed_of(x, b->csums).decoded_offset + (pos - x->file_offset);
      }
      return w;
    }
    if (x->file_offset > pos && x->file_offset < stop) stop = x->file_offset;
  }
  return (struct xt_piece){.zero = 1, .file_offset = pos, .length = stop - pos};
}

// A read of `size` bytes at `off` of regular file `index` through map `m` (NULL: the tables' extents),
// planned by plan.c, checked piece by piece.
static void check_read(const struct xt_tables *t, uint32_t index, const struct xt_map *m, const struct plan_bounds *b, uint64_t off, uint64_t size) {
  const struct xt_inode *n = &t->inodes[index];
  struct xt_plan p;
  xt_plan_read(&p, t, index, m, off, size);
  uint64_t start = off < n->size ? off : n->size;
  uint64_t want = size < n->size - start ? size : n->size - start; // clipped at EOF
  REQUIRE(p.start == start && p.end - p.start == want, "request not clipped at EOF", p.start, p.end);
  if (n->flags & XT_INLINE) {
    REQUIRE(p.inline_bytes != NULL, "inline file planned as extents", index, 0);
    REQUIRE(inside(p.inline_bytes, p.end - p.start, t->data, t->h->data_size), "inline bytes outside the data blob", p.start, p.end);
    volatile char sink = 0;
    for (uint64_t i = 0; i < p.end - p.start; i++) sink ^= p.inline_bytes[i]; // ASan sees every byte the reply takes
    (void)sink;
    return;
  }
  REQUIRE(p.inline_bytes == NULL, "extent file planned as inline", index, 0);
  struct xt_piece pc;
  uint64_t pos = p.start, pieces = 0;
  while (xt_plan_next(&p, &pc)) {
    REQUIRE(++pieces <= (uint64_t)b->count * 2 + 1, "more pieces than extents and holes", pieces, b->count);
    REQUIRE(pc.file_offset == pos && pc.length > 0 && pc.length <= p.end - pos, "pieces do not tile the request", pc.file_offset, pc.length);
    if (b->count <= 4096) {
      struct xt_piece w = model_piece(b, pos, p.end);
      REQUIRE(w.zero == pc.zero && w.length == pc.length &&
                  (pc.zero || (w.x == pc.x && w.device == pc.device && w.device_offset == pc.device_offset && w.decoded_offset == pc.decoded_offset)),
              "plan differs from the model", pos, pc.length);
    }
    if (!pc.zero) {
      const struct xt_extent *x = pc.x;
      REQUIRE(x >= b->ext && x < b->ext + b->count, "piece of an extent outside the file's list", x - b->ext, b->count);
      REQUIRE(pc.device == x->device && x->device < b->n_devices, "piece on no device", pc.device, b->n_devices);
      REQUIRE(x->file_offset <= pc.file_offset && pc.file_offset - x->file_offset + pc.length <= x->length, "piece outside its extent", pc.file_offset, pc.length);
      if (x->flags & XT_EXT_COMPRESSED) {
        struct xt_compressed z = xt_compressed_of(x, b->csums);
        REQUIRE(pc.device_offset == x->device_offset && pc.device_offset + z.disk_length >= pc.device_offset, "compressed piece's stream wrong or overflowing", pc.device_offset, z.disk_length);
        REQUIRE(pc.decoded_offset + pc.length <= z.decoded_length, "compressed piece past the decoded bytes", pc.decoded_offset, pc.length);
      } else {
        REQUIRE(pc.device_offset == x->device_offset + (pc.file_offset - x->file_offset) && pc.device_offset + pc.length >= pc.device_offset,
                "piece's device range wrong or overflowing", pc.device_offset, pc.length);
      }
      if (x->flags & XT_EXT_CSUM) check_csum_piece(&p, b, &pc);
    }
    pos += pc.length;
  }
  REQUIRE(pos == p.end, "pieces end before the request", pos, p.end);
}

// Reads of every kind for regular file `index`: the whole file, the caller's (off, size), around EOF
// and around the edges of its first and last extents, and far past everything.
static void check_reads(const struct xt_tables *t, uint32_t index, const struct xt_map *m, const struct plan_bounds *b, uint64_t off, uint64_t size) {
  const uint64_t fsize = t->inodes[index].size;
  check_read(t, index, m, b, off, size);
  check_read(t, index, m, b, 0, UINT64_MAX);
  check_read(t, index, m, b, 0, 4096);
  check_read(t, index, m, b, fsize - 1, 2);
  check_read(t, index, m, b, fsize, 1);
  check_read(t, index, m, b, UINT64_MAX, UINT64_MAX);
  if (t->inodes[index].flags & XT_INLINE) return;
  for (uint32_t k = 0; k < b->count && k < 6; k++) {
    const struct xt_extent *x = &b->ext[k < 3 ? k : b->count - 1 - (k - 3)];
    check_read(t, index, m, b, x->file_offset - 1, 2);
    check_read(t, index, m, b, x->file_offset, x->length);
    check_read(t, index, m, b, x->file_offset + x->length - 1, 2);
    check_read(t, index, m, b, x->file_offset + 1, (size & 0xfffff) + 1);
  }
}

#endif
