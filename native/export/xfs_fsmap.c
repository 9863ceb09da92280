// The extents of the tree's regular files, from XFS's reverse map (FS_IOC_GETFSMAP): one sweep of
// the whole filesystem's space, in device order, naming for each extent its owner inode, its file
// offset and whether it is unwritten, an attribute fork's or a block-map btree block. A window of
// inode numbers is collected at a time, at most m->cap extents (XM_FSMAP_RECORDS): when the buffer fills, the
// window's upper half of inode numbers is dropped and the sweep goes on for the lower half; the
// dropped inodes are the next window's. A tree of small files fits one window: one sweep.
#include "xfs_map.h"

#include <errno.h>
#include <linux/fsmap.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define FSMAP_BATCH 4096u // records per ioctl

static int by_owner_offset(const void *a, const void *b) {
  const struct xm_extent *x = a, *y = b;
  if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

// The buffer is full: keep the inodes below the owner in its middle, so that the window shrinks to
// about half and no inode's extents are split between windows. One inode filling it is refused.
static bool halve(struct xfs_mapper *m) {
  qsort(m->extents, m->nextents, sizeof *m->extents, by_owner_offset);
  size_t cut = m->nextents / 2;
  while (cut > 0 && m->extents[cut].ino == m->extents[cut - 1].ino) cut--;
  if (cut == 0) {
    cut = m->nextents / 2;
    while (cut < m->nextents && m->extents[cut].ino == m->extents[0].ino) cut++;
    if (cut == m->nextents) return xm_refuse(m, "inode %llu has over %u extents", (unsigned long long)m->extents[0].ino, (unsigned)(m->cap / 2));
  }
  m->hi = m->extents[cut].ino;
  m->nextents = cut;
  return true;
}

static bool take(struct xfs_mapper *m, const struct fsmap *r) {
  // Unwritten extents read as zeros: left out like holes, as the walker leaves out FIEMAP's
  // unwritten ones. Attribute forks and block-map btree blocks are no file's data.
  if (r->fmr_flags & (FMR_OF_SPECIAL_OWNER | FMR_OF_PREALLOC | FMR_OF_ATTR_FORK | FMR_OF_EXTENT_MAP)) return true;
  if (r->fmr_owner < m->lo || r->fmr_owner >= m->hi || r->fmr_owner >= m->table_len || m->names[r->fmr_owner] == 0) return true;
  if (r->fmr_length == 0) return xm_fail(m, "GETFSMAP: an empty extent of inode %llu", (unsigned long long)r->fmr_owner);
  if (m->nextents == m->cap && !halve(m)) return false;
  if (r->fmr_owner >= m->hi) return true; // halve() just dropped it
  m->extents[m->nextents++] = (struct xm_extent){r->fmr_owner, r->fmr_offset, r->fmr_physical, r->fmr_length};
  return true;
}

bool xm_collect_extents(struct xfs_mapper *m) {
  struct fsmap_head *h = calloc(1, sizeof *h + FSMAP_BATCH * sizeof(struct fsmap));
  if (h == NULL) return xm_fail(m, "out of memory");
  m->hi = m->table_len;
  m->nextents = m->next = 0;
  // Keys: from the start of every device to the end; each later call starts after the last record.
  // (Reserved fields stay zero: the kernel refuses keys with any set.)
  struct fsmap *high = &h->fmh_keys[1];
  high->fmr_device = UINT32_MAX, high->fmr_flags = UINT32_MAX;
  high->fmr_physical = high->fmr_owner = high->fmr_offset = UINT64_MAX;
  bool ok = true, last = false;
  while (ok && !last) {
    h->fmh_count = FSMAP_BATCH;
    if (ioctl(m->job->root_fd, FS_IOC_GETFSMAP, h) != 0) {
      ok = xm_fail(m, "FS_IOC_GETFSMAP: %s", strerror(errno));
      break;
    }
    if (h->fmh_entries == 0) break;
    for (uint32_t k = 0; ok && k < h->fmh_entries; k++) ok = take(m, &h->fmh_recs[k]);
    last = h->fmh_recs[h->fmh_entries - 1].fmr_flags & FMR_OF_LAST;
    h->fmh_keys[0] = h->fmh_recs[h->fmh_entries - 1];
    memset(h->fmh_keys[0].fmr_reserved, 0, sizeof h->fmh_keys[0].fmr_reserved);
  }
  free(h);
  if (!ok) return false;
  m->out->windows++;
  qsort(m->extents, m->nextents, sizeof *m->extents, by_owner_offset);
  return true;
}
