// The plan of a read (read.c carries it out): a request (offset, size) of one file → the EOF clip,
// inline bytes, or zero runs and device ranges, the same plan as src/extents/plan.ts. Pure: tables
// and extents in, pieces out; no libfuse call, no N-API, no I/O, so the addon's planRead (tests) and
// the fuzzers (fuzz/c/) call exactly what serves.
#include "engine.h"

// Index (in ext[0..count)) of the first extent ending after `off`: extents are sorted and disjoint,
// so their ends increase too (see firstExtentEndingAfter in src/extents/plan.ts).
static uint32_t first_ending_after(const struct xt_extent *ext, uint32_t count, uint64_t off) {
  uint32_t lo = 0, hi = count;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (ext[mid].file_offset + ext[mid].length <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

void xt_plan_range(struct xt_plan *p, const struct xt_extent *ext, uint32_t count, uint64_t start, uint64_t end) {
  *p = (struct xt_plan){.start = start, .end = end, .pos = start, .ext = ext, .count = count};
  p->i = first_ending_after(ext, count, start);
}

// Bytes [start, end) of regular file n through map m (NULL: the tables' extents, copies and checksums).
void xt_plan_through(struct xt_plan *p, const struct xt_tables *t, const struct xt_inode *n, const struct xt_map *m, uint64_t start, uint64_t end) {
  xt_plan_range(p, m != NULL ? m->ext : t->extents + n->first, m != NULL ? m->count : n->count, start, end);
  p->copies = m != NULL ? m->copies : t->copies;
  p->csums = m != NULL ? m->csums : t->data;
}

void xt_plan_read(struct xt_plan *p, const struct xt_tables *t, uint32_t index, const struct xt_map *m, uint64_t off, uint64_t size) {
  const struct xt_inode *n = &t->inodes[index];
  // Clip at EOF: the tail of the last block, which the last extent may cover, is never returned.
  uint64_t start = off < n->size ? off : n->size;
  uint64_t end = n->size - start < size ? n->size : start + size;
  if (n->flags & XT_INLINE) { // xt_check saw that the inline bytes are exactly the file's size
    *p = (struct xt_plan){.start = start, .end = end, .pos = end, .inline_bytes = t->data + n->first + start};
    return;
  }
  xt_plan_through(p, t, n, m, start, end);
}

int xt_plan_next(struct xt_plan *p, struct xt_piece *piece) {
  if (p->pos >= p->end) return 0;
  const struct xt_extent *x = p->i < p->count && p->ext[p->i].file_offset < p->end ? &p->ext[p->i] : NULL;
  if (x == NULL || x->file_offset > p->pos) { // a hole, or an unwritten range, or past the last extent
    uint64_t stop = x == NULL ? p->end : x->file_offset;
    *piece = (struct xt_piece){.zero = 1, .file_offset = p->pos, .length = stop - p->pos};
    p->pos = stop;
    return 1;
  }
  uint64_t stop = x->file_offset + x->length < p->end ? x->file_offset + x->length : p->end;
  *piece = (struct xt_piece){.file_offset = p->pos, .device = x->device,
                             .device_offset = x->device_offset + (p->pos - x->file_offset), .length = stop - p->pos, .x = x};
  if (x->flags & XT_EXT_COMPRESSED) { // the encoded stream starts at the extent's device offset, whole
    piece->device_offset = x->device_offset;
    piece->decoded_offset = xt_compressed_of(x, p->csums).decoded_offset + (p->pos - x->file_offset);
  }
  p->pos = stop;
  p->i++;
  return 1;
}
