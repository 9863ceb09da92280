// The extents of one regular file on an XFS without the reverse map: FIEMAP on the file opened by
// handle, exactly the walker's call (src/mapping/mapper.ts map()), read as the walker reads it:
// unwritten extents and those starting at or past EOF left out, the rest placed on raw disks and
// joined. This opens every regular file (an inode and a disconnected dentry each in the owner's
// caches, as the walker's open), but no path is looked up and nothing goes through JavaScript.
#include "xfs_map.h"

#include <errno.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define FIEMAP_BATCH 256u

// What the walker refuses to read raw (mapper.ts UNREADABLE_RAW), and what it would carry instead
// (inline) or decode (encoded), neither of which XFS reports: refused here, and the walker decides.
#define NOT_PLAIN (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | \
                   FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_ENCODED)

static bool place(struct xfs_mapper *m, uint64_t ino, uint64_t size, const struct fiemap_extent *e) {
  if ((e->fe_flags & FIEMAP_EXTENT_UNWRITTEN) || e->fe_logical >= size) return true;
  if (e->fe_flags & NOT_PLAIN) return xm_refuse(m, "inode %llu: an extent at %llu with FIEMAP flags 0x%x", (unsigned long long)ino, (unsigned long long)e->fe_logical, e->fe_flags);
  switch (bulk_place(&m->runs, m->job->segments, m->job->nsegments, e->fe_logical, e->fe_physical, e->fe_length)) {
  case BULK_PLACED: return true;
  case BULK_OUTSIDE_MAP: return xm_refuse(m, "inode %llu: filesystem bytes at %llu are outside the device map", (unsigned long long)ino, (unsigned long long)e->fe_physical);
  case BULK_NO_MEMORY: return xm_fail(m, "out of memory");
  }
  return false;
}

static bool map_open_file(struct xfs_mapper *m, int fd, uint64_t ino, uint64_t size, struct fiemap *fm) {
  for (uint64_t start = 0;;) {
    memset(fm, 0, sizeof *fm);
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET - start;
    fm->fm_extent_count = FIEMAP_BATCH; // no FIEMAP_FLAG_SYNC: the filesystem is frozen, nothing is dirty
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) return xm_fail(m, "inode %llu: FS_IOC_FIEMAP: %s", (unsigned long long)ino, strerror(errno));
    if (fm->fm_mapped_extents == 0) return true;
    for (uint32_t k = 0; k < fm->fm_mapped_extents; k++)
      if (!place(m, ino, size, &fm->fm_extents[k])) return false;
    const struct fiemap_extent *last = &fm->fm_extents[fm->fm_mapped_extents - 1];
    uint64_t next = last->fe_logical + last->fe_length;
    if ((last->fe_flags & FIEMAP_EXTENT_LAST) || next <= start) return true;
    start = next;
  }
}

bool xm_fiemap_file(struct xfs_mapper *m, const struct xfs_bulkstat *bs) {
  struct fiemap *fm = malloc(sizeof *fm + FIEMAP_BATCH * sizeof(struct fiemap_extent));
  if (fm == NULL) return xm_fail(m, "out of memory");
  int fd = xm_open(m, bs->bs_ino, bs->bs_gen, O_RDONLY | O_NOATIME);
  bool ok = fd >= 0 && map_open_file(m, fd, bs->bs_ino, bs->bs_size, fm);
  if (fd >= 0 && close(fd) != 0 && ok) ok = xm_fail(m, "inode %llu: close: %s", (unsigned long long)bs->bs_ino, strerror(errno));
  free(fm);
  return ok;
}
