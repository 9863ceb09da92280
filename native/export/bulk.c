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
