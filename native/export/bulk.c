// See bulk.h.
#include "bulk.h"

#include <stdlib.h>
#include <string.h>

void bulk_sample(struct bulk_sampler *s, uint32_t disk, uint64_t offset, uint64_t length, const uint8_t *csum, uint32_t csum_len) {
  if (s->stride == 0) s->stride = 1;
  if (s->seen++ % s->stride != 0) return;
  if (s->n == BULK_SAMPLES_PER_DISK) {
    for (uint32_t i = 0; i < s->n / 2; i++) s->kept[i] = s->kept[2 * i];
    s->n /= 2;
    s->stride *= 2;
    if ((s->seen - 1) % s->stride != 0) return;
  }
  struct bulk_sample *k = &s->kept[s->n++];
  k->disk = disk, k->offset = offset, k->length = length;
  k->csum_len = csum_len <= BULK_SAMPLE_CSUM_MAX ? csum_len : 0;
  if (k->csum_len) memcpy(k->csum, csum, k->csum_len);
}

bool bulk_grow(void **p, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return true;
  size_t cap2 = *cap ? *cap : 64;
  while (cap2 < need) cap2 *= 2;
  void *q = realloc(*p, cap2 * size);
  if (q == NULL) return false;
  *p = q;
  *cap = cap2;
  return true;
}

static bool add_run(struct bulk_runs *r, uint64_t file_offset, uint64_t length, uint32_t disk, uint64_t disk_offset) {
  struct bulk_run *last = r->n ? &r->run[r->n - 1] : NULL;
  if (last && last->disk == disk && last->file_offset + last->length == file_offset && last->disk_offset + last->length == disk_offset) {
    last->length += length;
    return true;
  }
  if (!bulk_grow((void **)&r->run, &r->cap, r->n + 1, sizeof *r->run)) return false;
  r->run[r->n++] = (struct bulk_run){file_offset, length, disk_offset, disk};
  return true;
}

enum bulk_place bulk_place(struct bulk_runs *runs, const struct bulk_segment *seg, size_t nseg, uint64_t file_offset, uint64_t at, uint64_t left) {
  size_t lo = 0, hi = nseg;
  while (lo < hi) { // the last segment starting at or before `at`
    size_t mid = (lo + hi) / 2;
    if (seg[mid].fs_offset <= at) lo = mid + 1;
    else hi = mid;
  }
  for (size_t k = lo ? lo - 1 : 0; left > 0; k++) {
    if (k >= nseg || at < seg[k].fs_offset || at >= seg[k].fs_offset + seg[k].length) return BULK_OUTSIDE_MAP;
    uint64_t take = seg[k].fs_offset + seg[k].length - at;
    if (take > left) take = left;
    if (!seg[k].hole && !add_run(runs, file_offset, take, seg[k].disk, seg[k].disk_offset + (at - seg[k].fs_offset))) return BULK_NO_MEMORY;
    file_offset += take, at += take, left -= take;
  }
  return BULK_PLACED;
}

const char *bulk_check_segments(const struct bulk_segment *seg, size_t n, uint32_t *ndisks, bool *refused) {
  *refused = true;
  if (n == 0 || n > BULK_MAX_SEGMENTS) return "no segments, or too many, in the device map";
  for (size_t k = 0; k < n; k++) {
    if (k && seg[k].fs_offset < seg[k - 1].fs_offset + seg[k - 1].length) return *refused = false, "device map segments overlap or are unsorted";
    if (seg[k].hole) continue;
    if (seg[k].disk >= BULK_MAX_DISKS) return "the device map names more disks than a manifest takes";
    if (seg[k].disk >= *ndisks) *ndisks = seg[k].disk + 1;
  }
  return NULL;
}
