// libFuzzer target: a delta as applyDelta receives it (native/view/tables.h "A delta"), checked by
// xt_check_delta (check.c) against tables xt_check accepted; a delta it accepts is then installed the
// way delta.c installs it (one map per file, its copies and checksums in the delta) and every read
// of those files planned through the new maps and checked as fuzz/c/tables.c checks the tables'.
//
// Input: u32 tables length | u32 device fds given | u64 offset | u64 size (little-endian) | tables
// | delta. Seeds: fuzz/corpus/c-delta/.
#include "plan-check.h"

static void *copy_of(const uint8_t *p, size_t n) {
  void *c = malloc(n > 0 ? n : 1);
  if (c != NULL && n > 0) memcpy(c, p, n);
  return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 24) return 0;
  uint32_t tlen, n_fds;
  uint64_t off, len;
  memcpy(&tlen, data, 4);
  memcpy(&n_fds, data + 4, 4);
  memcpy(&off, data + 8, 8);
  memcpy(&len, data + 16, 8);
  if (tlen > size - 24) return 0;
  size_t dlen = size - 24 - tlen;
  void *image = copy_of(data + 24, tlen), *delta = copy_of(data + 24 + tlen, dlen);
  struct xt_tables t;
  char msg[512];
  if (image != NULL && delta != NULL && xt_check(image, tlen, &t) == NULL &&
      xt_check_delta(&t, delta, dlen, t.h->n_devices, n_fds, msg, sizeof msg) == 0) {
    const struct xt_delta_header *h = delta;
    const struct xt_delta_file *files = (const void *)((const char *)delta + h->files_off);
    const struct xt_extent *ext = (const void *)((const char *)delta + h->extents_off);
    const struct xt_copy *copies = (const void *)((const char *)delta + h->copies_off);
    const char *csums = (const char *)delta + h->data_off;
    for (uint32_t k = 0; k < h->n_files && k < 64; k++) {
      const struct xt_delta_file *f = &files[k];
      REQUIRE(f->index < t.h->n_inodes && S_ISREG(t.inodes[f->index].mode) && !(t.inodes[f->index].flags & XT_INLINE),
              "delta names no regular file with extents", f->index, t.h->n_inodes);
      REQUIRE((uint64_t)f->first + f->count <= h->n_extents, "file's extents outside the section", f->first, f->count);
      // As applyDelta builds it: the extents copied, copies and checksums left in the delta.
      struct xt_map *m = calloc(1, sizeof *m + (size_t)f->count * sizeof(struct xt_extent));
      if (m == NULL) break;
      m->count = f->count;
      m->copies = copies;
      m->csums = csums;
      memcpy(m->ext, ext + f->first, (size_t)f->count * sizeof(struct xt_extent));
      struct plan_bounds b = {.h = t.h, .ext = m->ext, .count = m->count, .copies = copies, .n_copies = h->n_copies, .csums = csums,
                              .csums_size = h->data_size, .n_devices = (uint64_t)t.h->n_devices + h->n_devices};
      check_reads(&t, f->index, m, &b, off, len);
      free(m);
    }
  }
  free(image);
  free(delta);
  return 0;
}
