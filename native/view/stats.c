// What a view served since mount, for `extfs status` and `extfs backup`'s progress (src/mover/control.ts).
// Counted with relaxed atomics on the request path: a counter is a statistic, not a guard, and must
// cost a request no more than one uncontended add. Files are counted once each (opened[], one byte
// per inode, like served[] in delta.c but kept apart: an open is not a served read, and a delta must
// not taint a file that was only opened).
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

int xt_stats_init(struct engine *e) {
  struct xt_stats *s = &e->stats;
  uint32_t n = e->t.h->n_inodes;
  s->opened = calloc(n > 0 ? n : 1, 1);
  if (s->opened == NULL) return ENOMEM;
  // The image's totals, once: what a reader that reads every file reads (hard links are one inode),
  // and what statfs counts; of a shard view, the shard's.
  // Mapped tables drop their pages as the check did (engine.c), so the pass leaves them not resident.
  for (uint32_t i = 0; i < n; i++) {
    if (e->mapped != NULL && (i & 0xffff) == 0xffff) xt_mapped_drop_pages(e->mapped);
    if (!xt_visible(e, i)) continue;
    s->shown_inodes++;
    s->shown_blocks512 += e->t.inodes[i].blocks;
    if (!S_ISREG(e->t.inodes[i].mode)) continue;
    s->files_total++;
    s->bytes_total += e->t.inodes[i].size;
  }
  if (e->mapped != NULL) xt_mapped_drop_pages(e->mapped);
  return 0;
}

void xt_stats_destroy(struct engine *e) {
  free((void *)e->stats.opened);
  e->stats.opened = NULL;
}

void xt_stats_open(struct engine *e, uint32_t index) {
  struct xt_stats *s = &e->stats;
  atomic_fetch_add_explicit(&s->opens, 1, memory_order_relaxed);
  if (s->opened == NULL || atomic_load_explicit(&s->opened[index], memory_order_relaxed)) return;
  if (atomic_exchange_explicit(&s->opened[index], 1, memory_order_relaxed) == 0) atomic_fetch_add_explicit(&s->files_opened, 1, memory_order_relaxed);
}

void xt_stats_read(struct engine *e, uint64_t len) {
  atomic_fetch_add_explicit(&e->stats.reads, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&e->stats.read_bytes, len, memory_order_relaxed);
}

void xt_stats_pushed(struct engine *e, uint64_t len) {
  atomic_fetch_add_explicit(&e->stats.pushed_bytes, len, memory_order_relaxed);
}
